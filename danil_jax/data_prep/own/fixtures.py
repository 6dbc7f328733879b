"""Generated folders, tables and image files for the tests of danil_jax/data_prep/own.

Every image of `make_folder` differs (a seeded pattern), so a test can tell
which file an example came from by its pixels, and the class shows in the
mean colour, so that a tiny model can learn it in a few steps.
"""

from __future__ import annotations

import csv
import os
import zlib
from typing import Sequence

import numpy as np
from PIL import Image


def pattern(seed: int, label: int, shape=(16, 20)) -> np.ndarray:
  """uint8 RGB: noise around a colour that depends on the class."""
  rng = np.random.default_rng(seed)
  colour = np.array([[40, 200, 90], [200, 60, 60], [60, 60, 200],
                     [200, 200, 40]][label % 4])
  noise = rng.integers(-30, 31, (*shape, 3))
  return np.clip(colour + noise, 0, 255).astype(np.uint8)


def make_folder(root: str, classes: Sequence[str] = ('benign', 'malignant'),
                patients: int = 6, per_patient: int = 2,
                split: str = '', first: int = 0) -> list[str]:
  """root[/split]/<class>/P<c><k>_<i>.png, patient k = first, first + 1,
  ... of class c (so a patient has one class). Returns the paths made,
  relative to `root`."""
  made = []
  for c, name in enumerate(classes):
    folder = os.path.join(root, split, name)
    os.makedirs(folder, exist_ok=True)
    for p in range(first, first + patients):
      for i in range(per_patient):
        seed = zlib.crc32(f'{split}/{c}/{p}/{i}'.encode())
        rel = os.path.join(split, name, f'P{c}{p:02d}_{i}.png')
        Image.fromarray(pattern(seed, c)).save(os.path.join(root, rel))
        made.append(rel.replace(os.sep, '/'))
  return made


def write_table(path: str, header: Sequence[str], rows, delimiter=',') -> str:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def write_dicom(path: str, pixels: np.ndarray, *,
                photometric: str = 'MONOCHROME2', slope: float = 1.0,
                intercept: float = 0.0, window=None, frames: int = 1) -> str:
  """An uncompressed DICOM file (explicit VR little endian) of `pixels`:
  uint16/int16 HxW (or frames x H x W), or uint8 HxWx3 with 'RGB'."""
  # pylint: disable=g-import-not-at-top
  from pydicom import uid
  from pydicom.dataset import Dataset
  from pydicom.dataset import FileMetaDataset
  # pylint: enable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = 'TEST'
  rgb = photometric == 'RGB'
  ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
  ds.SamplesPerPixel = 3 if rgb else 1
  if rgb:
    ds.PlanarConfiguration = 0
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = int(pixels.dtype.kind == 'i')
  if frames > 1:
    ds.NumberOfFrames = frames
  if not rgb:
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  ds.PixelData = pixels.tobytes()
  ds.save_as(path, enforce_file_format=True)
  return path
