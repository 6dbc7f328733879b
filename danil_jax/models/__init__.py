"""Model registry: `create(name, num_classes, **kw)` and per-model metadata.

Every model is a Flax linen module whose `__call__(x, *, train)` takes NHWC
float images (already normalised with the model's `mean`/`std`) and returns
logits `[B, num_classes]`.

The subpackage holds the backbones (small_resnet for the demo; resnet,
vgg, inception_v4, efficientnet; their shared layers) and weights
(PyTorch ImageNet checkpoints converted to Flax variables, read back).

May import: danil_jax.method (the models' conv and max-pool rules, ops)
only. Not runtime, evaluation, trainer or experiments.
"""

import dataclasses
from typing import Callable

import flax.linen as nn

from danil_jax.method import ops
from danil_jax.models import efficientnet
from danil_jax.models import inception_v4
from danil_jax.models import resnet
from danil_jax.models import small_resnet
from danil_jax.models import vgg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's Inception models (tf_in1k weights) normalise to [-1, 1].
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What the trainer and the converter need to know about a backbone."""
  name: str
  build: Callable[..., nn.Module]  # build(num_classes=..., **kw) -> module
  input_size: int  # default square input size
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  torch_reference: str  # the torch model it mirrors, '' if none
  # Top-level parameter collection names of the classifier head; re-initialised
  # when pretrained weights are loaded for another number of classes.
  head: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
  if info.name in _REGISTRY:
    raise ValueError(f'model {info.name!r} is registered twice')
  _REGISTRY[info.name] = info


def names() -> list[str]:
  return sorted(_REGISTRY)


def info(name: str) -> ModelInfo:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f'unknown model {name!r}; expected one of {names()}') from None


def create(name: str, num_classes: int, *, conv_rules: str = 'auto',
           **kw) -> nn.Module:
  """Builds model `name` with a `num_classes`-way classifier head.

  `conv_rules` ('auto', 'custom' or 'stock', `danil_jax.method.ops`) picks the
  conv/max-pool differentiation rules the model traces with; 'stock' is the
  one that supports forward-mode differentiation (`jax.jvp`, `jacfwd`).
  """
  ops.resolve_rules(conv_rules)  # a bad value fails here, naming the key
  return info(name).build(num_classes=num_classes, **kw).clone(
      conv_rules=conv_rules)


register(ModelInfo(
    name='small_resnet', build=small_resnet.SmallResNet, input_size=64,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, torch_reference='',
    head=('head',)))

# ImageNet backbones mirroring torchvision/timm models. A `head` entry may
# be a '/'-joined path into `params` (VGG's last Linear is nested).
register(ModelInfo(
    name='resnet50', build=resnet.resnet50, input_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    torch_reference='torchvision.models.resnet50', head=('fc',)))
register(ModelInfo(
    name='vgg11', build=vgg.vgg11, input_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    torch_reference='torchvision.models.vgg11', head=('classifier/6',)))
register(ModelInfo(
    name='vgg11_bn', build=vgg.vgg11_bn, input_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    torch_reference='torchvision.models.vgg11_bn', head=('classifier/6',)))
register(ModelInfo(
    name='inception_v4', build=inception_v4.inception_v4, input_size=299,
    mean=INCEPTION_MEAN, std=INCEPTION_STD,
    torch_reference="timm.create_model('inception_v4')",
    head=('last_linear',)))
register(ModelInfo(
    name='efficientnet_b0', build=efficientnet.efficientnet_b0, input_size=224,
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
    torch_reference="timm.create_model('efficientnet_b0')",
    head=('classifier',)))
