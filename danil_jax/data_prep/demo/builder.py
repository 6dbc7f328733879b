"""TFDS builder of the embedded demo data set (see generate.py); no download."""

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from danil_jax.data_prep.demo import generate

IMAGE_SIZE = 32
SPLIT_SIZES = {'train': 2400, 'test': 800}
# Each split has its own seed so train and test never share an image.
SPLIT_SEEDS = {'train': 1, 'test': 2}


class DanilDemo(tfds.core.GeneratorBasedBuilder):
  """Look-alike synthetic lesions with noisy and blurred samples."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=generate.__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            'label': tfds.features.ClassLabel(names=generate.CLASS_NAMES),
            'corruption': tfds.features.ClassLabel(
                names=generate.CORRUPTIONS),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    num_classes = len(generate.CLASS_NAMES)
    for index in range(SPLIT_SIZES[split]):
      label = index % num_classes  # balanced classes
      image, corruption = generate.make_image(rng, label, IMAGE_SIZE)
      # TFDS Image features take PIL images or encoded bytes without TF.
      yield f'{split}_{index:05d}', {
          'image': Image.fromarray(image),
          'label': label,
          'corruption': corruption,
      }
