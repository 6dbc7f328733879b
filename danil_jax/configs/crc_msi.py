"""CRC-MSI: MSIMUT vs MSS from H&E tiles (Kather 2019), as in the paper's §3.

Needs the four zenodo zips in `dataset.manual_dir` (run without them for the
list); the dataset is built on first use, or beforehand with
  python -m danil_jax.data_prep.build crc_msi --manual_dir=~/danil_data/crc_msi

python -m danil_jax.main --config=configs/crc_msi.py --workdir=/tmp/crc_msi

The paper's protocol by default: train on train + validation, report the last
epoch on test. --config.dataset.train_split=train instead selects the best
epoch on validation and reports test with the best and the last model.
"""

from danil_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'crc_msi'
  config.dataset.builder_config = 'default'
  config.dataset.manual_dir = '~/danil_data/crc_msi'
  config.dataset.num_classes = 2
  # The official split: train + validation are the 93,408 training tiles.
  # 'validation' holds out 10% of the training patients for tuning; the
  # test split (98,904 tiles) is for the final numbers only.
  # The tiles are 224x224, ResNet-50's input size: no resampling.
  # Kather et al. 2019: patient-level AUROC of MSIMUT, patients with >= 10
  # tiles, 95% bootstrap CI; tile-level numbers beside it.
  config.eval.patient_key = 'patient_id'
  config.eval.patient_positive_class = 'MSIMUT'
  config.eval.headline = ('patient_auroc', 'macro_auroc', 'macro_f1')
  return config
