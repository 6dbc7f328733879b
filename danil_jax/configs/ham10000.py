"""HAM10000 skin lesion classification (7 classes), as in the paper's §3.

Needs the archives from Harvard Dataverse in `dataset.manual_dir` (run without
them for the list); the dataset is built on first use, or beforehand with
  python -m danil_jax.data_prep.build ham10000 --manual_dir=~/danil_data/ham10000

python -m danil_jax.main --config=configs/ham10000.py --workdir=/tmp/ham10000

The paper's protocol by default: train on train + validation, report the last
epoch on test. --config.dataset.train_split=train instead selects the best
epoch on validation and reports test with the best and the last model.
"""

from danil_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'ham10000'
  # 'lesion': 70/30 split by lesion_id, so no lesion is in both train and
  # test (the honest default). 'random': the paper's plain random image split.
  config.dataset.builder_config = 'lesion'
  config.dataset.manual_dir = '~/danil_data/ham10000'
  config.dataset.num_classes = 7
  # ISIC 2018 Task 3 ranks by balanced multiclass accuracy.
  config.eval.headline = ('balanced_accuracy', 'macro_f1', 'macro_auroc')
  return config
