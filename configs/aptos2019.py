"""APTOS 2019 diabetic retinopathy grading (5 grades), as in the paper's §3.

Needs the Kaggle competition zip in `dataset.manual_dir` (run without it for
instructions); the dataset is built on first use, or beforehand with
  python -m data_prep.build aptos2019 --manual_dir=~/danil_data/aptos2019

python -m danil_jax.main --config=configs/aptos2019.py --workdir=/tmp/aptos2019
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'aptos2019'
  # 'short512': images stored with a 512 px shorter side (the originals are
  # up to 4288x2848 and too slow to decode per step); 'original': as shipped.
  config.dataset.builder_config = 'short512'
  config.dataset.manual_dir = '~/danil_data/aptos2019'
  config.dataset.num_classes = 5
  # The paper's random 70/30 split: train + validation is its 70%. Tune on
  # 'train' vs 'validation'; the test split is for the final numbers only.
  config.dataset.train_split = 'train+validation'
  config.dataset.eval_split = 'test'
  config.dataset.image_size = 0  # the backbone's default (224 for ResNet-50)
  config.model.name = 'resnet50'
  # Paper: SGD, learning rate 0.01, 30 epochs, lambda 1e-5, epsilon 1e-4.
  config.input.num_workers = 4
  return config
