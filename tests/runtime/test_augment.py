"""danil_jax.runtime.augment: shapes, determinism, exactness of each
component."""

import numpy as np
import pytest

from danil_jax.runtime import augment

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.mark.parametrize('shape', [(450, 600), (30, 20), (224, 224)])
def test_output_shape_dtype_and_range(shape):
  image = _image(*shape)
  train = augment.train_transform(image, np.random.default_rng(0), size=32,
                                  mean=MEAN, std=STD)
  evaluated = augment.eval_transform(image, size=32, mean=MEAN, std=STD)
  for out in (train, evaluated):
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    lo = (0 - np.array(MEAN)) / np.array(STD)
    hi = (1 - np.array(MEAN)) / np.array(STD)
    assert np.all(out >= lo - 1e-4) and np.all(out <= hi + 1e-4)


def test_train_transform_is_a_function_of_the_rng():
  image = _image(60, 80)
  run = lambda seed: augment.train_transform(
      image, np.random.default_rng(seed), size=24, mean=MEAN, std=STD)
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))


def test_eval_transform_normalises_exactly():
  image = _image(16, 16)
  out = augment.eval_transform(image, size=16, mean=MEAN, std=STD)
  expected = (image / 255.0 - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_without_crop_or_jitter_train_is_a_dihedral_image_of_eval():
  image = _image(20, 20)
  evaluated = augment.eval_transform(image, size=20, mean=MEAN, std=STD)
  seen = set()
  for seed in range(40):
    out = augment.train_transform(image, np.random.default_rng(seed), size=20,
                                  mean=MEAN, std=STD, scale=(1, 1),
                                  ratio=(1, 1), jitter=0)
    matches = [(flip, k) for flip in (False, True) for k in range(4)
               if np.allclose(out, np.rot90(evaluated[:, ::-1] if flip
                                            else evaluated, k), atol=1e-5)]
    assert matches
    seen.add(matches[0])
  assert len(seen) == 8  # all flips and rotations occur


def test_random_crop_box_respects_scale_ratio_and_bounds():
  rng = np.random.default_rng(0)
  for _ in range(500):
    left, top, right, bottom = augment.random_crop_box(450, 600, rng)
    assert 0 <= left < right <= 600 and 0 <= top < bottom <= 450
    w, h = right - left, bottom - top
    assert augment.SCALE[0] - 1e-9 <= w * h / (450 * 600) <= 1 + 1e-9
    assert augment.RATIO[0] - 1e-9 <= w / h <= augment.RATIO[1] + 1e-9


def test_central_box_keeps_the_aspect_ratio_in_range():
  assert augment.central_box(450, 600) == (0, 0, 600, 450)  # 4:3 as is
  left, top, right, bottom = augment.central_box(512, 768)  # 3:2 is cropped
  assert (top, bottom) == (0, 512)
  assert (right - left) / 512 == pytest.approx(4 / 3)
  assert left == pytest.approx(768 - right)


def test_colour_jitter_matches_the_three_step_definition():
  image = _image(24, 32)
  # train_transform's jitter: brightness, contrast, saturation in [1-s, 1+s].
  matrix, offset = augment._jitter_affine(image, np.random.default_rng(3), 0.3)
  out = augment._colour_affine(image, matrix, offset, (0, 0, 0),
                               (1 / 255,) * 3)
  b, c, s = np.random.default_rng(3).uniform(0.7, 1.3, size=3)
  luma = np.array([0.299, 0.587, 0.114])
  x = image * b
  mean = (x[::4, ::4] @ luma).mean()  # the subsample the code uses
  x = (x - mean) * c + mean
  gray = (x @ luma)[..., None]
  x = np.clip((x - gray) * s + gray, 0, 255)
  np.testing.assert_allclose(out, x, atol=1e-3)


def test_grayscale_is_accepted_and_bad_input_rejected():
  gray = np.zeros((10, 12), np.uint8)
  assert augment.eval_transform(gray, size=8, mean=MEAN,
                                std=STD).shape == (8, 8, 3)
  with pytest.raises(ValueError, match='uint8'):
    augment.eval_transform(np.zeros((10, 12, 3), np.float32), size=8,
                           mean=MEAN, std=STD)
