"""Procedural 'lesion' images with the traits DANIL targets, no download.

Four classes share one template, a soft blob on a textured background, and
differ in one subtle cue each (small inter-class distance):
  0 round:     a round blob of uniform tone
  1 ringed:    a round blob with a faint darker ring
  2 oval:      a slightly elongated blob
  3 speckled:  a round blob with a few dark dots
Nuisances shared by all classes act as distractors: blob colour, size and
position, background tint and texture, hair-like lines. A fraction of the
images is corrupted by heavy noise or blur, like poor acquisitions.
"""

import numpy as np
from PIL import Image, ImageFilter

CLASS_NAMES = ('round', 'ringed', 'oval', 'speckled')
CORRUPTIONS = ('clean', 'noisy', 'blurred')


def make_image(rng: np.random.Generator, label: int, size: int):
  """Returns (uint8 [size, size, 3] image, corruption index)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  background = rng.uniform(0.55, 0.85, size=3).astype(np.float32)
  texture = rng.normal(0.0, 0.04, size=(size, size, 1)).astype(np.float32)
  image = background + texture

  cy, cx = rng.uniform(0.35, 0.65, size=2)
  radius = rng.uniform(0.16, 0.26)
  angle = rng.uniform(0, np.pi)
  aspect = rng.uniform(1.45, 1.75) if label == 2 else rng.uniform(1.0, 1.15)
  dy, dx = yy - cy, xx - cx
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  r = np.sqrt((u / aspect) ** 2 + (v * aspect) ** 2) / radius
  blob = 1.0 / (1.0 + np.exp((r - 1.0) * 12.0))
  tone = rng.uniform(0.15, 0.45, size=3).astype(np.float32)
  image = image * (1 - blob[..., None]) + tone * blob[..., None]

  if label == 1:
    ring = np.exp(-((r - 0.65) ** 2) / 0.006)
    image -= 0.22 * ring[..., None]
  elif label == 3:
    for _ in range(rng.integers(4, 8)):
      py, px = rng.normal(0, 0.45, size=2) * radius
      dot = np.exp(-(((yy - cy - py) ** 2 + (xx - cx - px) ** 2)
                     / (2 * (0.025 ** 2))))
      image -= 0.3 * dot[..., None]

  # Hair-like lines: strong, class-independent distractors.
  for _ in range(rng.integers(0, 3)):
    p0, direction = rng.uniform(0, 1, size=2), rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    dist = np.abs((yy - p0[0]) * direction[1] - (xx - p0[1]) * direction[0])
    image -= 0.35 * np.exp(-(dist ** 2) / (2 * 0.012 ** 2))[..., None]

  corruption = int(rng.choice(3, p=(0.6, 0.2, 0.2)))
  if corruption == 1:
    image += rng.normal(0, 0.12, size=image.shape)
  image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
  if corruption == 2:
    pil = Image.fromarray(image).filter(
        ImageFilter.GaussianBlur(radius=rng.uniform(0.8, 1.5)))
    image = np.asarray(pil)
  return image, corruption
