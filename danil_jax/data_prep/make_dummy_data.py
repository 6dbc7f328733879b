"""Writes the tiny fixtures in danil_jax/data_prep/<name>/dummy_data/.

Each fixture mimics the real download's layout (archive names, folders
inside the zips, CSV columns, file naming) with a few small images, so the
builders' tests exercise the same code paths as a real build.

  python -m danil_jax.data_prep.make_dummy_data            # rewrites all three
  python -m danil_jax.data_prep.make_dummy_data crc_msi    # just one

The tests derive the unzipped layouts from these zips.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import zipfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
# Fixed member timestamps keep regenerated zips byte-identical.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def _image(rng: np.random.Generator, label: int, size: tuple[int, int],
           fmt: str) -> bytes:
  """A small noisy image whose mean colour depends on the label."""
  w, h = size
  colour = np.array([40 + 30 * label, 200 - 25 * label, 90 + 15 * label])
  pixels = colour + rng.normal(0, 20, (h, w, 3))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      out, format=fmt, **({'quality': 70} if fmt == 'JPEG' else {}))
  return out.getvalue()


def _write_zip(path: str, members: dict[str, bytes]) -> None:
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
    for name in sorted(members):
      archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), members[name])


def _fresh_dir(path: str) -> str:
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def make_ham10000(out: str) -> None:
  """Dataverse layout: two image zips and a tab-separated metadata table."""
  from danil_jax.data_prep.ham10000.builder import CLASSES
  rng = np.random.default_rng(10015)
  _fresh_dir(out)
  rows, parts, image_no, lesion_no = [], ({}, {}), 24306, 0
  for label, dx in enumerate(CLASSES):
    # Four lesions per class with one to three images each, as in the real
    # data where many lesions were photographed more than once.
    for n_images in (1, 2, 3, 1):
      lesion_no += 1
      for _ in range(n_images):
        image_id = f'ISIC_{image_no:07d}'
        parts[image_no % 2][image_id + '.jpg'] = _image(rng, label, (24, 18),
                                                        'JPEG')
        age = 'NA' if image_no % 9 == 0 else f'{rng.integers(2, 17) * 5}.0'
        rows.append([f'HAM_{lesion_no:07d}', image_id, dx, 'histo', age,
                     'female' if image_no % 2 else 'male', 'back',
                     'vidir_modern'])
        image_no += 1
  header = 'lesion_id image_id dx dx_type age sex localization dataset'
  with open(os.path.join(out, 'HAM10000_metadata.tab'), 'w') as f:
    f.write('\t'.join(f'"{c}"' for c in header.split()) + '\n')
    for row in rows:
      # Dataverse quotes strings and leaves numbers bare.
      f.write('\t'.join(v if i == 4 else f'"{v}"'
                        for i, v in enumerate(row)) + '\n')
  _write_zip(os.path.join(out, 'HAM10000_images_part1.zip'), parts[0])
  _write_zip(os.path.join(out, 'HAM10000_images_part2.zip'), parts[1])


def make_aptos2019(out: str) -> None:
  """Kaggle competition layout: aptos2019-blindness-detection.zip."""
  rng = np.random.default_rng(3662)
  _fresh_dir(out)
  members, lines = {}, ['id_code,diagnosis']
  for i in range(30):
    diagnosis = i % 5
    id_code = f'{rng.integers(16**12):012x}'
    # Fundus photos come in many sizes; a few are not RGB (palette PNGs).
    size = (40, 30) if i % 3 else (32, 32)
    data = _image(rng, diagnosis, size, 'PNG')
    if i == 7:
      buf = io.BytesIO()
      Image.open(io.BytesIO(data)).convert('P').save(buf, format='PNG')
      data = buf.getvalue()
    members[f'train_images/{id_code}.png'] = data
    lines.append(f'{id_code},{diagnosis}')
  members['train.csv'] = ('\n'.join(lines) + '\n').encode()
  members['test_images/0005cfc8afb6.png'] = _image(rng, 0, (32, 32), 'PNG')
  members['test.csv'] = b'id_code\n0005cfc8afb6\n'
  members['sample_submission.csv'] = b'id_code,diagnosis\n0005cfc8afb6,0\n'
  _write_zip(os.path.join(out, 'aptos2019-blindness-detection.zip'), members)


def make_crc_msi(out: str) -> None:
  """Zenodo 2530835 layout: CRC_DX_{TRAIN,TEST}_{MSIMUT,MSS}.zip."""
  rng = np.random.default_rng(93408)
  _fresh_dir(out)
  letters = np.array(list('ABCDEFGHIJKLMNOPQRSTUVWXYZ'))
  patient_no = 2600
  for split, n_patients in (('TRAIN', 4), ('TEST', 2)):
    for label, cls in enumerate(('MSIMUT', 'MSS')):
      members = {}
      for _ in range(n_patients):
        patient_no += 1
        patient = f'TCGA-A{label + 1}-{patient_no}'
        for _ in range(3):
          block = ''.join(rng.choice(letters, 12))
          name = f'{cls}/blk-{block}-{patient}-01Z-00-DX1.png'
          members[name] = _image(rng, label, (16, 16), 'PNG')
      _write_zip(os.path.join(out, f'CRC_DX_{split}_{cls}.zip'), members)


MAKERS = {'ham10000': make_ham10000, 'aptos2019': make_aptos2019,
          'crc_msi': make_crc_msi}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m danil_jax.data_prep.make_dummy_data',
      description='Rewrites the committed test fixtures in '
      'danil_jax/data_prep/<name>/dummy_data/ (all three without a name).')
  # Checked here, not with choices=: argparse rejects an empty list there.
  parser.add_argument('names', nargs='*', metavar='name',
                      help=', '.join(sorted(MAKERS)))
  names = parser.parse_args(argv).names
  unknown = sorted(set(names) - set(MAKERS))
  if unknown:
    parser.error(f'unknown data set(s) {unknown}; expected names among '
                 f'{sorted(MAKERS)}')
  for name in names or sorted(MAKERS):
    out = os.path.join(HERE, name, 'dummy_data')
    MAKERS[name](out)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f'{out}: {size / 1024:.1f} KiB')


if __name__ == '__main__':
  main(sys.argv[1:])
