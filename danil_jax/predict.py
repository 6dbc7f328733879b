"""Class probabilities of a trained run for plain image files.

python -m danil_jax.predict --workdir=DIR --images=PATH_OR_GLOB
    --out=preds.csv [--checkpoint=last] [--skip_bad]
    [--tta=none|flips|flips_rot90]
    [--config.distributed=True [--config.distributed_init.*]]

Each JPEG/PNG (any size, greyscale and RGBA converted to RGB) gets the
run's evaluation preprocessing (central crop, resize, normalise) and one
row: file, prediction, one probability column per class. A file that
cannot be read is an error naming it; with --skip_bad such files are listed
on stderr and left out, never given a row.

On a pod or cluster every host runs it with --config.distributed=True, as
for danil_jax.main (danil_jax/runtime/cli.py): each scores its slice,
process 0 writes.
"""

import sys

from absl import app
from absl import flags

from danil_jax.runtime import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.')
_IMAGES = flags.DEFINE_string(
    'images', None, 'An image file, a directory (its files) or a glob '
    "('scans/*.jpg'; quote it).")
_OUT = flags.DEFINE_string('out', None, 'CSV file to write.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'last', "'best', 'last' or a step number.")
_SKIP_BAD = flags.DEFINE_bool(
    'skip_bad', False, 'List unreadable files and go on without them.')
_TTA = flags.DEFINE_enum(
    'tta', None, ['none', 'flips', 'flips_rot90'],
    'Test-time augmentation: the softmax probabilities averaged over flipped '
    '(and rotated) copies. Default: the run\'s config.eval.tta.')
_JOIN = cli.define_join_flags()
flags.mark_flags_as_required(['workdir', 'images', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # pylint: disable=g-import-not-at-top
  from danil_jax.evaluation import trained_run
  from danil_jax.runtime import multihost
  with cli.command_errors_exit(_JOIN.value):
    paths = trained_run.image_paths(_IMAGES.value)
    run = trained_run.load(_WORKDIR.value, _CHECKPOINT.value,
                           need_data=False, tta=_TTA.value)
    rows, bad = trained_run.predict_files(run, paths,
                                          skip_bad=_SKIP_BAD.value)
    for reason in bad:  # each host names the files it read
      print(f'skipped {reason}', file=sys.stderr)
    if multihost.is_chief():
      skipped = len(paths) - len(rows)
      trained_run.write_predictions_csv(_OUT.value, rows, run.class_names)
      print(f'wrote {len(rows)} rows to {_OUT.value}'
            + (f' ({skipped} unreadable file(s) skipped)' if skipped else ''))


if __name__ == '__main__':
  cli.run(main)
