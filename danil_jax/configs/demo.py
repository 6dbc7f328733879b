"""The embedded demo: the procedural look-alike lesion set, no download.

python -m danil_jax.main --config=configs/demo.py --workdir=/tmp/demo
builds the data (seconds), trains a small ResNet with DANIL and evaluates it,
in a few minutes on a laptop CPU.
"""

from danil_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'danil_demo'
  config.dataset.num_classes = 4
  config.dataset.image_size = 32
  config.dataset.train_split = 'train'  # the demo has no validation split
  config.model.name = 'small_resnet'
  config.input.global_batch_size = 32
  config.input.eval_batch_size = 100
  # 32x32 images decode faster in the main process than workers start.
  config.input.num_workers = 0
  config.optim.learning_rate = 0.05
  config.optim.schedule = 'cosine'
  config.num_epochs = 5
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  config.eval.headline = ('macro_f1', 'accuracy', 'balanced_accuracy')
  return config
