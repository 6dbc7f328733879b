r"""Converts a torchvision/timm ImageNet checkpoint to Flax variables.

  python -m danil_jax.convert --arch=resnet50 \
      --checkpoint=resnet50-0676ba61.pth --out=pretrained/resnet50

`.safetensors` files need no torch; `.pth`/`.bin` files are read with
`torch.load(weights_only=True)`. The output directory is what
`--config.model.pretrained=DIR` and `danil_jax.models.weights.load` read.
"""

import sys

from absl import app
from absl import flags

from danil_jax.models import weights
from danil_jax.runtime import cli

_ARCH = flags.DEFINE_string(
    'arch', None, 'Architecture: one of the registered torch-mirroring models '
    '(resnet50, vgg11, vgg11_bn, inception_v4, efficientnet_b0).')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'torch state_dict: .pth, .pt, .bin or .safetensors.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
flags.mark_flags_as_required(['arch', 'checkpoint', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    meta = weights.convert_file(_ARCH.value, _CHECKPOINT.value, _OUT.value)
  except weights.ConversionError as e:
    sys.exit(f'error: {e}')
  print(f'wrote {meta["arch"]} ({meta["num_classes"]} classes) to '
        f'{_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
