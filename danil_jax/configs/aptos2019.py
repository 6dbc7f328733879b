"""APTOS 2019 diabetic retinopathy grading (5 grades), as in the paper's §3.

Needs the Kaggle competition zip in `dataset.manual_dir` (run without it for
instructions); the dataset is built on first use, or beforehand with
  python -m danil_jax.data_prep.build aptos2019 --manual_dir=~/danil_data/aptos2019

python -m danil_jax.main --config=configs/aptos2019.py --workdir=/tmp/aptos2019

The paper's protocol by default: train on train + validation, report the last
epoch on test. --config.dataset.train_split=train instead selects the best
epoch on validation and reports test with the best and the last model.
"""

from danil_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'aptos2019'
  # 'short512': images stored with a 512 px shorter side (the originals are
  # up to 4288x2848 and too slow to decode per step); 'original': as shipped.
  config.dataset.builder_config = 'short512'
  config.dataset.manual_dir = '~/danil_data/aptos2019'
  config.dataset.num_classes = 5
  # The competition metric: quadratic weighted kappa over grades 0-4.
  config.eval.quadratic_kappa = True
  config.eval.headline = ('quadratic_kappa', 'macro_f1', 'accuracy')
  return config
