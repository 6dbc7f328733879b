"""Scores a run's checkpoint on a split, without touching its training state.

python -m danil_jax.evaluate --workdir=DIR [--split=test]
    [--checkpoint=best|last|STEP] [--weights=ema|raw]
    [--tta=none|flips|flips_rot90] [--map_distance]
    [--config.distributed=True [--config.distributed_init.*]]

writes DIR/eval/<split>_<checkpoint>[_<tta>]/: metrics.json (every metric
of metrics.py, the data set's own included, and calibration.py's),
predictions.csv (id, label, prediction, metadata, one probability column
per class, then the temperature-scaled ones when the run has a validation
split) and confusion_matrix.png, roc_curves.png, reliability_diagram.png.
With --weights other than those the run reports, `_<weights>` is added to
the directory's name. --map_distance adds DANIL's mechanism: each image's
||A+ - A-||^2 (Eqs. 3-5, y- the top wrong class), its median and quartiles
over all, misclassified and near-miss images in metrics.json
(`map_distance`) and per image in predictions.csv
(danil_jax/evaluation/map_distance.py).

On a pod or cluster every host runs it with --config.distributed=True, as
for danil_jax.main (danil_jax/runtime/cli.py): each scores its slice,
process 0 writes.
"""

from absl import app
from absl import flags

from danil_jax.runtime import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to score.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'last', "'best' (by the validation metric), 'last' or a "
    'step number.')
_WEIGHTS = flags.DEFINE_enum(
    'weights', None, ['ema', 'raw'], "The checkpoint's weight EMA or its raw "
    'weights; default: those the run reports (ema with '
    'config.optim.ema_decay > 0 and config.eval.use_ema, else raw).')
_TTA = flags.DEFINE_enum(
    'tta', None, ['none', 'flips', 'flips_rot90'],
    'Test-time augmentation: the softmax probabilities averaged over flipped '
    '(and rotated) copies. Default: the run\'s config.eval.tta.')
_MAP_DISTANCE = flags.DEFINE_bool(
    'map_distance', False, 'Also score ||A+ - A-||^2 per image (the '
    "distance DANIL's loss enlarges): median and quartiles over all, "
    'misclassified and near-miss images.')
_JOIN = cli.define_join_flags()
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # pylint: disable-next=g-import-not-at-top
  from danil_jax.evaluation import trained_run
  with cli.command_errors_exit(_JOIN.value):
    trained_run.evaluate_run(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value,
                             _WEIGHTS.value, tta=_TTA.value,
                             map_distance=_MAP_DISTANCE.value)


if __name__ == '__main__':
  cli.run(main)
