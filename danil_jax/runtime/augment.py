"""Per-image preprocessing for training and evaluation (numpy + PIL, in grain).

`train_transform` and `eval_transform` take one uint8 HWC RGB image and return
a float32 `size x size x 3` image normalised with the backbone's mean/std.

Training: random-resized crop (one antialiased PIL resample), a random element
of the dihedral group (flips and right-angle rotations, exact and cheap),
light brightness/contrast/saturation jitter, normalisation. Evaluation: the
central crop whose aspect ratio is the nearest one training can produce,
resized; for square inputs (CRC-MSI tiles) just a resize.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# Share of the image area a training crop keeps. Lesions in dermoscopy and
# fundus photos can be small and off-centre, so crops are milder than
# ImageNet's (0.08, 1).
SCALE = (0.35, 1.0)
# Range of crop aspect ratios (width / height), as in Inception training.
RATIO = (3 / 4, 4 / 3)
# Maximum relative change of brightness, contrast and saturation. Colour
# carries diagnostic information (pigment, haemorrhages, stain), so it is
# perturbed only lightly; hue is left alone.
JITTER = 0.1

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _as_rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError('expected a uint8 HxWx3 RGB image, got '
                     f'{image.dtype} {image.shape}')
  return image


def _crop_resize(image: np.ndarray, box: tuple[float, float, float, float],
                 size: int) -> np.ndarray:
  """Resamples `box` (left, top, right, bottom) of `image` to size x size."""
  h, w = image.shape[:2]
  if box == (0, 0, w, h) and (h, w) == (size, size):
    return image
  # Resizing with a box crops and scales in one antialiased pass;
  # reducing_gap first shrinks big images by an integer factor (fast).
  return np.asarray(Image.fromarray(image).resize(
      (size, size), Image.BILINEAR, box=box, reducing_gap=3.0))


def _colour_affine(image: np.ndarray, matrix: np.ndarray | None,
                   offset: float, mean, std) -> np.ndarray:
  """normalise(clip(image @ matrix.T + offset, 0, 255)) as float32 HxWx3.

  Per-channel constants are applied on an (H, W*3) view with rows tiled to
  W*3 values: numpy broadcasting over a last axis of 3 is several times
  slower. Clipping happens after normalisation, with bounds mapped through
  it (the same result, one pass fewer).
  """
  h, w = image.shape[:2]
  mean = np.asarray(mean, np.float32) * 255.0
  inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
  if matrix is None:
    rows = image.reshape(h, w * 3).astype(np.float32)
    rows -= np.tile(mean, w)
    rows *= np.tile(inv_std, w)
    return rows.reshape(h, w, 3)
  pixels = image.reshape(-1, 3).astype(np.float32)
  rows = (pixels @ (matrix.T * inv_std).astype(np.float32)).reshape(h, w * 3)
  rows += np.tile((offset - mean) * inv_std, w)
  np.clip(rows, np.tile(-mean * inv_std, w),
          np.tile((255.0 - mean) * inv_std, w), out=rows)
  return rows.reshape(h, w, 3)


def _jitter_affine(image: np.ndarray, rng: np.random.Generator,
                   strength: float) -> tuple[np.ndarray, float]:
  """(matrix, offset) of random brightness, contrast and saturation changes.

  Brightness scales, contrast blends with the image's mean luma, saturation
  blends with each pixel's luma; the three compose into one affine map.
  Saturation maps grey to itself, so the contrast offset passes unchanged.
  """
  b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
  # The mean luma of a 1/16 subsample is plenty accurate and 16x cheaper.
  sample = image[::4, ::4].reshape(-1, 3).astype(np.float32)
  mean_luma = b * float((sample @ _LUMA).mean())
  saturation = s * np.eye(3) + (1 - s) * np.outer(np.ones(3), _LUMA)
  return c * b * saturation, (1 - c) * mean_luma


def random_crop_box(height: int, width: int, rng: np.random.Generator, *,
                    scale=SCALE, ratio=RATIO) -> tuple[float, float, float,
                                                       float]:
  """A random (left, top, right, bottom) box, as RandomResizedCrop draws it."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = math.sqrt(target * aspect)
    h = math.sqrt(target / aspect)
    if w <= width and h <= height:
      left = rng.uniform(0, width - w)
      top = rng.uniform(0, height - h)
      return (left, top, left + w, top + h)
  return central_box(height, width, ratio=ratio)


def central_box(height: int, width: int, *, ratio=RATIO
                ) -> tuple[float, float, float, float]:
  """The largest central box whose aspect ratio lies in `ratio`."""
  aspect = min(max(width / height, ratio[0]), ratio[1])
  w, h = min(width, height * aspect), min(height, width / aspect)
  left, top = (width - w) / 2, (height - h) / 2
  return (left, top, left + w, top + h)


def eval_transform(image: np.ndarray, *, size: int, mean, std) -> np.ndarray:
  """Central crop (aspect within `RATIO`), resize, normalise."""
  image = _as_rgb(image)
  h, w = image.shape[:2]
  return _colour_affine(_crop_resize(image, central_box(h, w), size), None,
                        0.0, mean, std)


def train_transform(image: np.ndarray, rng: np.random.Generator, *, size: int,
                    mean, std, scale=SCALE, ratio=RATIO,
                    jitter: float = JITTER) -> np.ndarray:
  """Random-resized crop, flips/rotations, colour jitter, normalise.

  All randomness comes from `rng`, so a seeded generator per example makes
  the augmentation reproducible (and a resumed run identical).
  """
  image = _as_rgb(image)
  h, w = image.shape[:2]
  image = _crop_resize(image, random_crop_box(h, w, rng, scale=scale,
                                              ratio=ratio), size)
  # Dermoscopy, fundus and histology images have no canonical orientation:
  # all 8 flips/right-angle rotations are label-preserving, and exact.
  if rng.random() < 0.5:
    image = image[:, ::-1]
  image = np.rot90(image, k=int(rng.integers(4)))
  matrix, offset = (_jitter_affine(image, rng, jitter) if jitter > 0 else
                    (np.eye(3), 0.0))
  return _colour_affine(image, matrix, offset, mean, std)
