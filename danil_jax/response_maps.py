"""The paper's Fig. 3 for a trained run: neuron intrinsic response maps.

python -m danil_jax.response_maps --workdir=DIR [--split=test] [--num=8]
    --out=maps.png [--checkpoint=last]
    [--config.distributed=True [--config.distributed_init.*]]

For `num` images spread evenly over the split: the image, |A+| and |A-|
(per-pixel magnitude of dL+c/dx and dL-c/dx, intrinsic_maps.py), with the
label, the prediction, y- (the prediction when wrong, else the
highest-scoring wrong class) and ||A+ - A-||^2 in the caption. The maps are
also saved beside the PNG as <out>.npz (indices, a_plus, a_minus, ...).

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
  with trained_run.command_errors_exit(_JOIN.value):
    if _NUM.value < 1:
      raise ValueError(f'--num must be at least 1, got {_NUM.value}')
    run = trained_run.load(_WORKDIR.value, _CHECKPOINT.value)
    if _SPLIT.value not in run.builder.info.splits:
      raise ValueError(f'--split={_SPLIT.value!r}: the data set has splits '
                       f'{sorted(run.builder.info.splits)}')
    maps = trained_run.compute_maps(run, _SPLIT.value, _NUM.value)
    if not multihost.is_chief():
      return
    plots.response_maps(
        maps, run.class_names, run.pre, _OUT.value,
        title=f'{run.config.dataset.name} {_SPLIT.value}, {run.checkpoint} '
        f'model (step {run.step})')
    np.savez(os.path.splitext(_OUT.value)[0] + '.npz', **maps)
    print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
