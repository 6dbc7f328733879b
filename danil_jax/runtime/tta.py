"""Test-time augmentation: each image's flipped and rotated copies, one batch.

`tta` names a set of copies (the conventions of ttach's `flip_transform` and
`d4_transform`, which timm users reach for):

- 'none': the image alone;
- 'flips': the image, flipped left-right, flipped up-down, and both
  (4 copies; the last equals a 180 degree rotation);
- 'flips_rot90': the dihedral group of the square, the image rotated by
  0, 90, 180, 270 degrees, each also flipped left-right (8 copies).

`expand` turns a batch [B, H, W, C] (NHWC, as every model here takes it)
into [B * n, H, W, C] with each image's copies adjacent, so the copies are a
batch axis of the one compiled forward pass and a batch sharded over devices
stays sharded the same way (each device transforms its own images).
`average` then averages the softmax probabilities, not the logits, over the
copies: the prediction is the mean of the n predictive distributions.
Histopathology tiles and dermoscopy images have no preferred orientation;
fundus photographs (APTOS) are left-right symmetric at most, so 'flips'
includes an up-down flip a fundus camera never produces: choose per data set.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

# Name -> number of copies.
MODES = {'none': 1, 'flips': 4, 'flips_rot90': 8}


def check(tta: str, what: str = 'tta') -> None:
  if tta not in MODES:
    raise ValueError(f'{what} must be one of {list(MODES)}, got {tta!r}')


def _copies(images, tta: str) -> list:
  """The transformed copies of NHWC `images`, the identity first."""
  check(tta)
  if tta == 'none':
    return [images]
  flip_lr = lambda x: jnp.flip(x, axis=2)
  flip_ud = lambda x: jnp.flip(x, axis=1)
  if tta == 'flips':
    return [images, flip_lr(images), flip_ud(images),
            flip_ud(flip_lr(images))]
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"tta='flips_rot90' needs square images, got "
                     f'{images.shape[1]}x{images.shape[2]}')
  rotated = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
  return rotated + [flip_lr(x) for x in rotated]


def expand(images, tta: str):
  """[B, H, W, C] -> [B * n, H, W, C], image b's copies at rows b*n..b*n+n-1."""
  copies = _copies(images, tta)
  if len(copies) == 1:
    return images
  return jnp.stack(copies, axis=1).reshape((-1,) + images.shape[1:])


def average(logits, tta: str):
  """(probabilities [B, K], their logarithm [B, K]) of `logits` [B * n, K]
  from `expand`: the mean over each image's copies of their softmax.

  The logarithm (log of the mean probability, through logsumexp) stays
  finite where a probability underflows in float32; the loss and
  temperature scaling read it.
  """
  n = MODES[tta]
  log_softmax = jax.nn.log_softmax(logits, axis=-1)
  if n == 1:
    return jax.nn.softmax(logits, axis=-1), log_softmax
  per_copy = log_softmax.reshape(-1, n, logits.shape[-1])
  probabilities = jnp.mean(jnp.exp(per_copy), axis=1)
  return probabilities, logsumexp(per_copy, axis=1) - math.log(n)
