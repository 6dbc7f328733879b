"""The parts of one training run that its stages share (danil_jax.train).

`Run` holds the config, workdir, devices and data set; `Evaluation` scores a
split with the compiled eval step; `Outputs` are the checkpoints and logs a
run writes; `Scored` is one model's predictions and report.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
from etils import epath

from danil_jax import ema
from danil_jax import evaluation
from danil_jax import input_pipeline
from danil_jax import run_log
from danil_jax import tb_writer


@dataclasses.dataclass(frozen=True)
class Data:
  """The data set as a run reads it, and the run's length in steps."""
  builder: Any  # a tfds DatasetBuilder
  class_names: list[str]
  train_source: Any
  pre: input_pipeline.Preprocessing
  model_info: Any  # models.info of config.model.name
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass(frozen=True)
class Run:
  """What the parts of one run share."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  is_chief: bool
  mesh: jax.sharding.Mesh
  dataset: Data


class Evaluation:
  """Scores a split with the compiled eval step: (predictions, report).

  With a validation split, every epoch scores it and keeps the best model
  by `select_by`; the final report scores eval_split with best and last.
  Without (the paper's protocol), every epoch scores eval_split. With a
  weight EMA the `weights` of ema.default_weights are scored unless told
  otherwise (the best model is kept by them). `final` is the final report's
  evaluation: with config.eval.tta, and calibrated by a temperature fitted
  on the validation split.
  """

  def __init__(self, run: Run, eval_step, final_eval_step=None):
    self._run, self._eval_step = run, eval_step
    self._final_eval_step = final_eval_step or eval_step
    self.val_split = evaluation.validation_split(
        run.config, run.dataset.builder.info.splits)
    self.epoch_split = self.val_split or run.config.dataset.eval_split
    self.select_by = evaluation.select_by(run.config)
    self.weights = ema.default_weights(run.config)
    self.tta = run.config.eval.tta
    self._split_metadata = {}

  def _predict(self, eval_step, state, split: str, tta: str,
               weights: str | None):
    config, dataset = self._run.config, self._run.dataset
    state = ema.select(state, weights or self.weights)
    if split not in self._split_metadata:
      self._split_metadata[split] = evaluation.read_metadata(dataset.builder,
                                                             split)
    return evaluation.predict_split(
        eval_step, state, dataset.builder.as_data_source(split),
        pre=dataset.pre, global_batch_size=config.input.eval_batch_size,
        mesh=self._run.mesh, metadata=self._split_metadata[split],
        num_workers=config.input.num_workers, tta=tta)

  def _report(self, predictions):
    return predictions, evaluation.report(
        predictions, self._run.dataset.class_names, self._run.config.eval)

  def __call__(self, state, split: str, weights: str | None = None):
    return self._report(self._predict(self._eval_step, state, split, 'none',
                                      weights))

  def final(self, state, split: str, reuse=None, weights: str | None = None):
    """The final report on `split` with `weights` (default self.weights);
    `reuse`: this state's predictions on `split` with self.weights and
    without TTA, if at hand (used when there is nothing to add)."""
    if (reuse is not None and self.tta == 'none' and not self.val_split
        and weights in (None, self.weights)):
      return self._report(evaluation.calibrate(reuse, None))
    return self._report(evaluation.predict_calibrated(
        lambda s: self._predict(self._final_eval_step, state, s, self.tta,
                                weights),
        split, self.val_split))


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What a run writes into its workdir besides the final report."""
  manager: Any  # orbax CheckpointManager of the latest checkpoints
  best_manager: Any  # of the best model by select_by; None without val split
  log: run_log.MetricsLog
  tensorboard: tb_writer.ScalarWriter

  def close(self) -> None:
    self.tensorboard.close()
    if self.best_manager is not None:
      self.best_manager.close()
    self.manager.close()


@dataclasses.dataclass(frozen=True)
class Scored:
  """A model's step and its predictions and report on a split."""
  step: int
  predictions: Any
  report: dict
  weights: str = 'raw'  # 'ema' or 'raw' (ema.py)
