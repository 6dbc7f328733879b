"""Any supported 2-D image file to the backbone's input: uint8 RGB.

The backbones take 8-bit RGB, so every file becomes that, the same way at
build time and in `danil_jax.predict`:
  * 8-bit RGB PNG/JPEG: kept byte for byte (decoded once to validate);
  * 16-bit RGB PNG: Pillow's 8 bits (the high byte of each value);
  * grayscale (8 or 16 bit), palette: the gray value repeated in R, G, B;
  * RGBA, LA: the alpha channel dropped;
  * 16-bit and float grayscale (PNG, TIFF): `rescale='minmax'` maps each
    image's own min..max to 0..255, `'dtype'` the type's full range
    (0..65535) to it. Reading such a file the 8-bit way clips it to white,
    the classic silent error this module exists to prevent;
  * DICOM (pydicom): stored values through the rescale slope and intercept
    (the modality LUT), then the configured VOI window (center, width), else
    the file's first window, else the image's min..max, to 0..255 by the
    linear window of DICOM PS3.3 C.11.2.1.2.1; MONOCHROME1 inverted so that
    bright means dense everywhere; RGB/YBR DICOM converted to RGB.
A multi-frame or 3-D file is a `NotTwoDimensional` error: this is 2-D
classification, and silently taking one slice would train on a guess.
"""

from __future__ import annotations

import collections.abc
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from danil_jax.data_prep import common

# Extensions read as images in a folder (lower case); other files are not
# images of the data set. Files without an extension are DICOM if they carry
# its 'DICM' marker.
PIL_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
DICOM_EXTENSIONS = ('.dcm', '.dicom')
EXTENSIONS = PIL_EXTENSIONS + DICOM_EXTENSIONS
RESCALES = ('minmax', 'dtype')


class UnreadableImage(common.DataError):
  """A file that does not decode as a supported image."""


class NotTwoDimensional(UnreadableImage):
  """A multi-frame or volumetric file where one 2-D image was expected."""


def is_dicom_file(path: str) -> bool:
  """A .dcm/.dicom file, or one whose bytes 128..131 are DICOM's 'DICM'."""
  if path.lower().endswith(DICOM_EXTENSIONS):
    return True
  try:
    with open(path, 'rb') as f:
      return f.read(132)[128:] == b'DICM'
  except OSError:
    return False


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
  """Linear low..high -> 0..255, clipped (a flat image becomes 0)."""
  values = values.astype(np.float64)
  if high <= low:
    return np.zeros(values.shape, np.uint8)
  scaled = (values - low) * (255.0 / (high - low))
  return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
  return np.repeat(gray[:, :, None], 3, axis=2)


def _high_depth_gray(image: Image.Image, rescale: str) -> np.ndarray:
  values = np.asarray(image)
  if rescale == 'dtype' and image.mode != 'F':
    # 'I;16*' are 16 bit; Pillow opens some 16-bit PNGs as 32-bit 'I'.
    return _to_uint8(values, 0, 65535)
  finite = values[np.isfinite(values)]
  if not finite.size:
    return np.zeros(values.shape, np.uint8)
  return _to_uint8(np.nan_to_num(values), float(finite.min()),
                   float(finite.max()))


def _frames_error(source: str, count: int, what: str) -> NotTwoDimensional:
  return NotTwoDimensional(
      f'{source}: {what} with {count} frames/slices; expected one 2-D image '
      '(this is 2-D classification: export the slice(s) you mean as separate '
      'files)')


def _pil_rgb(image: Image.Image, source: str, rescale: str) -> np.ndarray:
  frames = getattr(image, 'n_frames', 1)
  if frames > 1:
    raise _frames_error(source, frames, f'a multi-frame {image.format}')
  image.load()
  if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
    return _gray_to_rgb(_high_depth_gray(image, rescale))
  if image.mode in ('P', 'PA') and 'transparency' in image.info:
    image = image.convert('RGBA')
  return np.asarray(image.convert('RGB'))


def dicom_window(values: np.ndarray, center: float,
                 width: float) -> np.ndarray:
  """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) onto 0..255.

  The standard's outer pieces (0 at or below c - 0.5 - (w - 1) / 2, 255
  above c - 0.5 + (w - 1) / 2) are exactly the clipping of its middle one.
  """
  if width < 1:
    raise ValueError(f'a DICOM window width must be >= 1, got {width}')
  if width == 1:  # a threshold: the middle piece is empty
    return np.where(values > center - 0.5, 255, 0).astype(np.uint8)
  out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _first(value) -> float:
  """A DICOM value that may be multi-valued: its first number."""
  if isinstance(value, collections.abc.Sequence) and not isinstance(value,
                                                                    str):
    value = value[0]
  return float(value)


def _dicom_rgb(source: str, data: bytes | None,
               window: Sequence[float]) -> np.ndarray:
  try:
    import pydicom  # pylint: disable=g-import-not-at-top
    from pydicom import pixels  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UnreadableImage(
        f'{source}: a DICOM file, and pydicom is not installed; expected '
        "it for DICOM (pip install 'danil_jax[dicom]')") from None
  try:
    ds = pydicom.dcmread(io.BytesIO(data) if data is not None else source,
                         force=True)
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    if frames > 1:
      raise _frames_error(source, frames, 'a multi-frame DICOM')
    array = ds.pixel_array
  except NotTwoDimensional:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # pydicom raises many types (missing Pixel Data, no decoder for a
    # compressed transfer syntax, truncated data): all mean "unreadable".
    raise UnreadableImage(
        f'{source}: not a readable 2-D DICOM image ({type(e).__name__}: '
        f'{e}); expected a DICOM file with pixel data pydicom can decode '
        '(compressed ones may need pylibjpeg or gdcm)') from None
  samples = int(ds.get('SamplesPerPixel', 1) or 1)
  photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2'))
  if array.ndim != (3 if samples > 1 else 2):
    raise _frames_error(source, array.shape[0], 'a 3-D DICOM')
  if samples > 1:
    if photometric.startswith('YBR'):
      array = pixels.convert_color_space(array, photometric, 'RGB')
    bits = int(ds.get('BitsStored', 8) or 8)
    return _to_uint8(array, 0, 2 ** bits - 1)
  values = np.asarray(pixels.apply_modality_lut(array, ds), np.float64)
  if window:
    center, width = window
  elif 'WindowCenter' in ds and 'WindowWidth' in ds:
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
  else:
    center = width = None
  if center is not None and width >= 1:
    gray = dicom_window(values, center, width)
  else:
    gray = _to_uint8(values, float(values.min()), float(values.max()))
  if photometric == 'MONOCHROME1':
    gray = 255 - gray
  return _gray_to_rgb(gray)


def read_rgb(path: str, *, rescale: str = 'minmax',
             window: Sequence[float] = (), data: bytes | None = None
             ) -> np.ndarray:
  """uint8 HxWx3 RGB of image file `path` (or of its bytes `data`).

  Raises `UnreadableImage` (or `NotTwoDimensional`) naming the file.
  """
  if (path.lower().endswith(DICOM_EXTENSIONS) or
      (data[128:132] == b'DICM' if data is not None else is_dicom_file(path))):
    return _dicom_rgb(path, data, window)
  try:
    with Image.open(io.BytesIO(data) if data is not None else path) as image:
      return _pil_rgb(image, path, rescale)
  except NotTwoDimensional:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    reason = str(e).split(' <_io.')[0]
    raise UnreadableImage(
        f'{path}: not a readable image ({reason}); expected a PNG, JPEG, '
        'BMP, TIFF or DICOM file') from None


def encoded_rgb(path: str, *, rescale: str = 'minmax',
                window: Sequence[float] = (), max_short_side: int = 0
                ) -> bytes:
  """PNG (or the original 8-bit RGB PNG/JPEG) bytes of `path` as stored.

  8-bit RGB PNG and JPEG files are validated by a full decode and kept as
  they are, which saves a lossy or slow re-encoding; everything else is
  converted (read_rgb) and written as PNG.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if data[128:132] != b'DICM' and not path.lower().endswith(DICOM_EXTENSIONS):
    try:
      with Image.open(io.BytesIO(data)) as original:
        # 8 bits per channel only: readers that honour a 16-bit PNG's
        # depth (OpenCV, under tfds) would not return uint8.
        if (original.format in ('PNG', 'JPEG') and original.mode == 'RGB'
            and (original.format == 'JPEG' or data[24] == 8)
            and 'transparency' not in original.info
            and getattr(original, 'n_frames', 1) == 1
            and not (max_short_side and
                     min(original.size) > max_short_side)):
          original.load()
          return data
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
      pass  # read_rgb names the problem
  image = Image.fromarray(
      read_rgb(path, rescale=rescale, window=window, data=data))
  if max_short_side and min(image.size) > max_short_side:
    scale = max_short_side / min(image.size)
    image = image.resize(tuple(max(1, round(s * scale)) for s in image.size),
                         Image.BICUBIC)
  out = io.BytesIO()
  image.save(out, format='PNG', compress_level=3)
  return out.getvalue()


def encode_file(job: tuple[str, dict]) -> tuple[bytes | None, str | None]:
  """(stored bytes, None) or (None, the reason): for worker processes,
  which must hand errors back as values to let the build list them all."""
  path, options = job
  try:
    return encoded_rgb(path, **options), None
  except common.DataError as e:
    return None, str(e)
  except OSError as e:
    return None, f'{path}: cannot read ({e})'


def encode_files(jobs: list) -> list:
  """encode_file of each job: one round trip to a worker for several."""
  return [encode_file(job) for job in jobs]


def has_image_extension(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in EXTENSIONS
