"""The paper's Fig. 3 for a trained run: neuron intrinsic response maps.

python -m danil_jax.response_maps --workdir=DIR [--split=test] [--num=8]
    --out=maps.png [--checkpoint=last] [--near_misses] [--beside=DIR2]
    [--config.distributed=True [--config.distributed_init.*]]

For `num` images spread evenly over the split: the image, |A+| and |A-|
(per-pixel magnitude of dL+c/dx and dL-c/dx, intrinsic_maps.py), with the
label, the prediction, y- (the prediction when wrong, else the
highest-scoring wrong class) and ||A+ - A-||^2 in the caption. The maps are
also saved beside the PNG as <out>.npz (indices, a_plus, a_minus, ...).

--near_misses takes instead the `num` images with the smallest top-2
probability margin under the run's model (where DANIL's loss should matter
most). --beside=DIR2 adds a second run's |A+| and |A-| of the same images
(e.g. Base's near misses under DANIL), its maps saved as <out>_beside.npz.

On a pod or cluster every host runs it with --config.distributed=True, as
for danil_jax.main (danil_jax/runtime/cli.py): each scores its slice,
process 0 writes.
"""

import os

from absl import app
from absl import flags

from danil_jax.runtime import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to take images from.')
_NUM = flags.DEFINE_integer('num', 8, 'Number of images.')
_OUT = flags.DEFINE_string('out', None, 'PNG file to write.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'last', "'best', 'last' or a step number.")
_NEAR_MISSES = flags.DEFINE_bool(
    'near_misses', False, 'The images with the smallest top-2 probability '
    'margin under the run, instead of images spread over the split.')
_BESIDE = flags.DEFINE_string(
    'beside', None, "Another run's directory: its maps of the same images "
    'drawn to the right.')
_JOIN = cli.define_join_flags()
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # pylint: disable=g-import-not-at-top
  import numpy as np

  from danil_jax.evaluation import plots
  from danil_jax.evaluation import trained_run
  from danil_jax.runtime import multihost
  with cli.command_errors_exit(_JOIN.value):
    if _NUM.value < 1:
      raise ValueError(f'--num must be at least 1, got {_NUM.value}')
    run = trained_run.load(_WORKDIR.value, _CHECKPOINT.value)
    if _SPLIT.value not in run.builder.info.splits:
      raise ValueError(f'--split={_SPLIT.value!r}: the data set has splits '
                       f'{sorted(run.builder.info.splits)}')
    indices = (trained_run.near_miss_indices(run, _SPLIT.value, _NUM.value)
               if _NEAR_MISSES.value else None)
    maps = trained_run.compute_maps(run, _SPLIT.value, _NUM.value, indices)
    runs = ()
    if _BESIDE.value:
      other = trained_run.load(_BESIDE.value, _CHECKPOINT.value)
      beside = trained_run.compute_maps(other, _SPLIT.value, _NUM.value,
                                        maps['indices'])
      runs = [(_name(run), maps), (_name(other), beside)]
    if not multihost.is_chief():
      return
    plots.response_maps(
        maps, run.class_names, run.pre, _OUT.value,
        title=f'{run.config.dataset.name} {_SPLIT.value}, {run.checkpoint} '
        f'model (step {run.step})'
        + (', near misses' if _NEAR_MISSES.value else ''), runs=runs)
    stem = os.path.splitext(_OUT.value)[0]
    np.savez(stem + '.npz', **maps)
    if runs:
      np.savez(stem + '_beside.npz', **beside)
    print(f'wrote {_OUT.value}')


def _name(run) -> str:
  """A run's method and, for DANIL, its lam and reduction."""
  config = run.config
  if config.method != 'danil':
    return config.method
  return (f'danil lam={config.danil.lam:g} {config.danil.reduction}'
          if config.danil.lam else 'control (lam=0)')


if __name__ == '__main__':
  cli.run(main)
