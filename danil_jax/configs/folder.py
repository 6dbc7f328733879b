"""Your own images: a folder, or a CSV, of 2-D images and their classes.

python -m danil_jax.main --config=configs/folder.py \
    --config.dataset.manual_dir=DIR --workdir=W
trains on DIR/<class>/<images> (or DIR/{train,validation,test}/<class>/...);
with --config.dataset.csv=FILE instead, on a CSV/TSV of path, label and
optional group (patient, lesion, slide) and split columns. The classes come
from the data; the splits, where not given, are made grouped and stratified
(config.dataset.own in configs/default.py has every option). README "Your
own data" says what is checked.

Model selection on validation, the final report on test, with the best and
the last model. Set --config.model.pretrained to a converted ImageNet
checkpoint (python -m danil_jax.convert) to fine-tune as the paper does.
"""

from danil_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'folder'
  config.dataset.train_split = 'train'
  return config
