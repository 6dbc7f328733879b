"""HAM10000 skin lesion classification (7 classes), as in the paper's §3.

Needs the archives from Harvard Dataverse in `dataset.manual_dir` (run without
them for the list); the dataset is built on first use, or beforehand with
  python -m data_prep.build ham10000 --manual_dir=~/danil_data/ham10000

python -m danil_jax.main --config=configs/ham10000.py --workdir=/tmp/ham10000
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'ham10000'
  # 'lesion': 70/30 split by lesion_id, so no lesion is in both train and
  # test (the honest default). 'random': the paper's plain random image split.
  config.dataset.builder_config = 'lesion'
  config.dataset.manual_dir = '~/danil_data/ham10000'
  config.dataset.num_classes = 7
  # train + validation is the paper's 70% training set. To tune
  # hyperparameters, train on 'train' and evaluate on 'validation'; the test
  # split is for the final numbers only.
  config.dataset.train_split = 'train+validation'
  config.dataset.eval_split = 'test'
  # 0: the backbone's input size (224 for ResNet-50).
  config.dataset.image_size = 0
  config.model.name = 'resnet50'
  # Paper: SGD, learning rate 0.01, 30 epochs, lambda 1e-5, epsilon 1e-4
  # (the defaults); ImageNet-pretrained backbone with a new classifier.
  config.input.num_workers = 4
  return config
