"""danil_jax/data_prep/own/images.py: every supported file to uint8 RGB, checked
against values computed here by hand (16-bit scaling, the DICOM window
formula, MONOCHROME1), on generated files and pydicom's own CT and MR files.
"""

import io
import struct
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

from danil_jax.data_prep.own import fixtures
from danil_jax.data_prep.own import images

GRAY16 = np.array([[1000, 5000, 3000], [2000, 1000, 4000]], np.uint16)


def _save(tmp_path, name, array, **kwargs):
  path = str(tmp_path / name)
  Image.fromarray(array).save(path, **kwargs)
  return path


def _gray3(gray):
  return np.stack([gray] * 3, axis=-1)


@pytest.mark.parametrize('name', ['a.png', 'a.bmp', 'a.tif'])
def test_8_bit_rgb_is_read_exactly(tmp_path, name):
  rgb = fixtures.pattern(1, 0)
  np.testing.assert_array_equal(images.read_rgb(_save(tmp_path, name, rgb)),
                                rgb)


@pytest.mark.parametrize('name', ['a.png', 'a.jpg'])
def test_8_bit_rgb_png_and_jpeg_are_stored_as_they_are(tmp_path, name):
  path = _save(tmp_path, name, fixtures.pattern(1, 0))
  with open(path, 'rb') as f:
    assert images.encoded_rgb(path) == f.read()


def test_grayscale_is_repeated_in_three_channels(tmp_path):
  gray = fixtures.pattern(2, 1)[:, :, 0]
  path = _save(tmp_path, 'g.png', gray)
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(gray))
  stored = np.asarray(Image.open(io.BytesIO(images.encoded_rgb(path))))
  np.testing.assert_array_equal(stored, _gray3(gray))


def test_rgba_drops_alpha(tmp_path):
  rgba = np.dstack([fixtures.pattern(3, 2), np.full((16, 20), 7, np.uint8)])
  np.testing.assert_array_equal(
      images.read_rgb(_save(tmp_path, 'a.png', rgba)), rgba[:, :, :3])


@pytest.mark.parametrize('name', ['g16.png', 'g16.tif'])
def test_16_bit_grayscale_min_max_and_full_range(tmp_path, name):
  path = _save(tmp_path, name, GRAY16)
  # minmax: 1000 -> 0, 5000 -> 255, 3000 -> 127.5 -> 128 (round half even:
  # 128), 2000 -> 63.75 -> 64, 4000 -> 191.25 -> 191.
  by_hand = np.array([[0, 255, 128], [64, 0, 191]], np.uint8)
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(by_hand))
  # dtype: v * 255 / 65535, e.g. 5000 -> 19.45 -> 19.
  by_hand = np.array([[4, 19, 12], [8, 4, 16]], np.uint8)
  np.testing.assert_array_equal(images.read_rgb(path, rescale='dtype'),
                                _gray3(by_hand))


def test_float_tiff_is_min_max_scaled(tmp_path):
  values = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)
  path = _save(tmp_path, 'f.tif', values)
  np.testing.assert_array_equal(images.read_rgb(path),
                                _gray3(np.array([[0, 64], [128, 255]])))


def test_multi_frame_tiff_is_a_named_error(tmp_path):
  path = str(tmp_path / 'stack.tif')
  frames = [Image.fromarray(fixtures.pattern(i, 0)) for i in range(3)]
  frames[0].save(path, save_all=True, append_images=frames[1:])
  with pytest.raises(images.NotTwoDimensional, match='stack.tif.*3 frames'):
    images.read_rgb(path)


def test_garbage_and_truncated_files_are_named_errors(tmp_path):
  junk = tmp_path / 'junk.png'
  junk.write_bytes(b'not an image')
  with pytest.raises(images.UnreadableImage, match='junk.png'):
    images.encoded_rgb(str(junk))
  path = _save(tmp_path, 'cut.png', fixtures.pattern(4, 0))
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  assert images.encode_file((path, {}))[0] is None
  assert 'cut.png' in images.encode_file((path, {}))[1]


# --- DICOM. -----------------------------------------------------------------

# Stored values and, through slope 2 and intercept -1024, the values
# -1024, -160, -60, 40 / 238, 240, 976, 976.
RAW = np.array([[0, 432, 482, 532], [631, 632, 1000, 1000]], np.uint16)
# Window (40, 400), PS3.3 C.11.2.1.2.1 by hand: below 40 - 0.5 - 199.5 =
# -160 -> 0; above 40 - 0.5 + 199.5 = 239 -> 255; otherwise
# ((v - 39.5) / 399 + 0.5) * 255: -60 -> 63.91, 40 -> 127.82, 238 -> 254.36.
WINDOWED = np.array([[0, 0, 64, 128], [254, 255, 255, 255]], np.uint8)


@pytest.fixture
def pydicom():
  return pytest.importorskip('pydicom')


def _dicom(tmp_path, name='a.dcm', **kwargs):
  return fixtures.write_dicom(str(tmp_path / name), RAW, slope=2.0,
                              intercept=-1024.0, **kwargs)


def test_dicom_rescale_then_the_files_window(tmp_path, pydicom):
  path = _dicom(tmp_path, window=(40, 400))
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(WINDOWED))


def test_dicom_configured_window_wins_over_the_files(tmp_path, pydicom):
  path = _dicom(tmp_path, window=(1000, 3))
  np.testing.assert_array_equal(images.read_rgb(path, window=(40, 400)),
                                _gray3(WINDOWED))


def test_dicom_monochrome1_is_inverted(tmp_path, pydicom):
  path = _dicom(tmp_path, window=(40, 400), photometric='MONOCHROME1')
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(255 - WINDOWED))


def test_dicom_without_window_is_min_max_of_the_rescaled_values(
    tmp_path, pydicom):
  # -1024..976 -> 0..255: -160 -> 110.16, 40 -> 135.66.
  got = images.read_rgb(_dicom(tmp_path))[:, :, 0]
  assert got[0, 0] == 0 and got[1, 3] == 255
  assert got[0, 1] == 110 and got[0, 3] == 136


def test_dicom_without_extension_is_found_by_its_marker(tmp_path, pydicom):
  path = _dicom(tmp_path, name='IM0001', window=(40, 400))
  assert images.is_dicom_file(path)
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(WINDOWED))


def test_rgb_dicom(tmp_path, pydicom):
  rgb = fixtures.pattern(5, 1)
  path = fixtures.write_dicom(str(tmp_path / 'c.dcm'), rgb, photometric='RGB')
  np.testing.assert_array_equal(images.read_rgb(path), rgb)


def test_multi_frame_dicom_is_a_named_error(tmp_path, pydicom):
  path = fixtures.write_dicom(str(tmp_path / 'mf.dcm'),
                              np.stack([RAW, RAW]), frames=2)
  with pytest.raises(images.NotTwoDimensional, match='mf.dcm.*2 frames'):
    images.read_rgb(path)


def test_pydicoms_ct_file_min_max_after_rescale(pydicom):
  path = pydicom.data.get_testdata_file('CT_small.dcm')
  ds = pydicom.dcmread(path)
  hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
      ds.RescaleIntercept)
  by_formula = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255)
  np.testing.assert_array_equal(images.read_rgb(path), _gray3(by_formula))


def test_pydicoms_mr_file_with_its_window(pydicom):
  path = pydicom.data.get_testdata_file('MR_small.dcm')
  ds = pydicom.dcmread(path)
  c, w = float(ds.WindowCenter), float(ds.WindowWidth)
  v = ds.pixel_array.astype(np.float64)
  by_formula = np.clip(np.round(((v - (c - 0.5)) / (w - 1) + 0.5) * 255),
                       0, 255)
  got = images.read_rgb(path)
  np.testing.assert_array_equal(got, _gray3(by_formula))
  assert 0 < got.mean() < 255


def test_dicom_without_pydicom_is_a_named_error(tmp_path, monkeypatch):
  path = tmp_path / 'a.dcm'
  path.write_bytes(b'\0' * 128 + b'DICM')
  monkeypatch.setitem(sys.modules, 'pydicom', None)
  with pytest.raises(images.UnreadableImage, match=r'pydicom.*\[dicom\]'):
    images.read_rgb(str(path))


def test_max_short_side_shrinks_larger_images_only(tmp_path):
  path = _save(tmp_path, 'a.png', fixtures.pattern(6, 0))  # 16 x 20
  shrunk = Image.open(io.BytesIO(images.encoded_rgb(path, max_short_side=8)))
  assert shrunk.size == (10, 8) and shrunk.mode == 'RGB'
  with open(path, 'rb') as f:
    assert images.encoded_rgb(path, max_short_side=16) == f.read()


def _png_rgb16(path, values):
  """A 16-bit RGB PNG written by hand (Pillow writes none)."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  height, width, _ = values.shape
  rows = b''.join(b'\0' + values[y].astype('>u2').tobytes()
                  for y in range(height))
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' +
            chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16, 2, 0,
                                       0, 0)) +
            chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
  return path


def test_16_bit_rgb_png_is_stored_as_8_bit(tmp_path):
  values = (fixtures.pattern(7, 1).astype(np.uint16) * 257 + 100)
  path = _png_rgb16(str(tmp_path / 'rgb16.png'), values)
  by_hand = (values >> 8).astype(np.uint8)  # the high byte
  np.testing.assert_array_equal(images.read_rgb(path), by_hand)
  stored = images.encoded_rgb(path)
  with open(path, 'rb') as f:
    assert stored != f.read()
  with Image.open(io.BytesIO(stored)) as image:
    assert image.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(image), by_hand)
