"""Shared defaults for every danil-jax run; per-dataset configs override these.

The paper's setup (Gong, Ma & Zheng, MICCAI 2020, §3): SGD with learning rate
0.01, 30 epochs, lambda = 1e-5 (Eq. 6) and epsilon = 1e-4 (Eq. 5).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'base' (plain cross-entropy), 'ohem' or 'danil'.
  config.method = 'danil'
  # skip_correct: a batch with nothing misclassified (Ld = 0) costs a plain
  # step, every other batch one forward more (trainer/train_step.py).
  # reduction: how Algorithm 1 (one image) reads on a batch, 'per_image' or
  # 'batch' (the batched PyTorch port; danil_jax/method/losses.py). 'batch',
  # because
  # it is the only reading in which the paper's lam = 1e-5 acts: on the demo
  # (README, "Does DANIL help?", 5 seeds) the term's share of the parameter
  # gradient is ~7e-3 with 'batch' and ~1e-4 with 'per_image', i.e. plain
  # cross-entropy. The demo's F1 cannot decide between them: every
  # difference is inside the noise of a lam = 0 control.
  # misclassified_only: opt-in, another loss: each image's maps with the
  # running BatchNorm statistics, double backprop over the misclassified
  # images only (danil_jax/method/misclassified_only.py); cheap when few are
  # misclassified, i.e. late in training, while early the running statistics
  # lag the batch's. Already costs a plain step where none is, so
  # skip_correct changes nothing in it.
  # map_dtype: 'compute' (the model's dtype) or 'float32' (that mode's maps
  # through a float32 copy of the model; misclassified_only only).
  config.danil = ml_collections.ConfigDict(
      dict(lam=1e-5, eps=1e-4, skip_correct=False, reduction='batch',
           misclassified_only=False, map_dtype='compute'))
  config.ohem = ml_collections.ConfigDict(dict(keep_ratio=0.7))

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet50'
  # Directory written by `python -m danil_jax.convert`; '' trains from scratch.
  # The paper fine-tunes ImageNet weights with a new classifier head.
  config.model.pretrained = ''
  # Compute dtype of the backbone; parameters stay float32.
  config.model.dtype = 'float32'
  # Conv/max-pool differentiation rules (danil_jax.method.ops): 'auto' (the ones
  # measured faster on this backend: custom on CPU and GPU, stock elsewhere),
  # 'custom' or 'stock' (needed for forward-mode jax.jvp/jacfwd).
  config.model.conv_rules = 'auto'

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = ''
  config.dataset.builder_config = ''
  config.dataset.data_dir = '~/tensorflow_datasets'
  config.dataset.manual_dir = ''
  # 0: the data set's number of classes (a folder or CSV gives it); a
  # number is checked against the data.
  config.dataset.num_classes = 0
  # name='folder' (configs/folder.py): a user's images, manual_dir as
  # DIR/<class>/... or DIR/{train,validation,test}/<class>/..., or `csv`, a
  # CSV/TSV of path, label[, group][, split]. class_names: their order
  # (label ids); () = sorted (numerically where all are numbers).
  config.dataset.csv = ''
  config.dataset.class_names = ()
  # How a folder or CSV is read, split and stored (danil_jax/data_prep/own):
  # *_column: the table's column names (group: patient/lesion/slide; a
  # group or split column absent under its default name is no error).
  # group_regex: the group from each path (first capture group) where there
  # is no group column, e.g. r'(P\d+)_'. Without a group every image is its
  # own group.
  # test_fraction, validation_fraction, seed: the splits made where none
  # are given, stratified by class and grouped; where the train split is
  # given alone, test and validation are carved from it.
  # allow_shared_groups: accept a group found in two given splits.
  # skip_bad: leave unreadable files out (listed in skipped.csv) rather
  # than stop. rescale: 16-bit/float grayscale to 8 bits, 'minmax' (each
  # image's range) or 'dtype' (0..65535). dicom_window: (center, width)
  # overriding each DICOM file's VOI window. max_short_side: shrink larger
  # images when storing them (0: never). workers: decoding processes (0:
  # up to 8). on_change: 'rebuild' or 'refuse' a source that changed since
  # its build.
  config.dataset.own = ml_collections.ConfigDict(dict(
      path_column='path', label_column='label', group_column='group',
      split_column='split', group_regex='', test_fraction=0.2,
      validation_fraction=0.1, seed=0, allow_shared_groups=False,
      skip_bad=False, rescale='minmax', dicom_window=(), max_short_side=0,
      workers=0, on_change='rebuild'))
  # The paper trains on its whole 70% (or official) training set, which our
  # builders write as train + validation. To tune hyperparameters, train on
  # 'train' and evaluate on 'validation'; 'test' is for final numbers only.
  config.dataset.train_split = 'train+validation'
  config.dataset.eval_split = 'test'
  # Input size fed to the model; 0 takes the backbone's default.
  config.dataset.image_size = 0

  config.input = ml_collections.ConfigDict()
  config.input.global_batch_size = 32
  config.input.eval_batch_size = 64
  # grain worker processes decoding and augmenting images.
  config.input.num_workers = 4
  config.input.augment = True

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.01
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 0.0
  # 'constant' or 'cosine'.
  config.optim.schedule = 'constant'
  config.optim.warmup_epochs = 0.0
  # Weight EMA (danil_jax/runtime/ema.py): an average of the parameters and
  # BatchNorm
  # statistics, decay min(ema_decay, (1 + step) / (10 + step)), kept in the
  # state and checkpoints. 0 = off: the paper's setting, and no cost. The
  # warm-up caps the decay below ema_decay until step (10 d - 1) / (1 - d)
  # (0.99: 890): on a short run pick d by its horizon 1 / (1 - d) steps.
  config.optim.ema_decay = 0.0

  config.num_epochs = 30
  # Stop after this many steps; -1 trains all epochs. For smoke tests.
  config.max_steps = -1
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2

  # Evaluation (danil_jax/evaluation/metrics.py, scoring.py). `headline`: the
  # metrics the console leads with; per-data-set configs name their benchmark's.
  # `validation_split`: evaluated after every epoch to keep the best
  # checkpoint by `select_by` ('' = headline[0]; 'loss' is minimised), the
  # final report then scoring `dataset.eval_split` with the best and the last
  # model. 'auto' = 'validation' when training on 'train' and the data set
  # has one; '' = the paper's protocol: every epoch on `eval_split`, the last
  # one reported.
  config.eval = ml_collections.ConfigDict()
  config.eval.headline = ('macro_f1', 'accuracy')
  config.eval.select_by = ''
  config.eval.validation_split = 'auto'
  # With optim.ema_decay > 0: score the EMA weights every epoch, keep the
  # best checkpoint by them and report them first (timm's train.py does),
  # the raw ones beside them; False: the raw weights first.
  config.eval.use_ema = True
  # APTOS: quadratic weighted kappa over the ordinal grades.
  config.eval.quadratic_kappa = False
  # CRC-MSI: patient-level AUROC (Kather et al. 2019) over this feature, for
  # this class, over patients with at least `patient_min_tiles` tiles, with
  # a bootstrap 95% CI; '' = none.
  config.eval.patient_key = ''
  config.eval.patient_positive_class = ''
  config.eval.patient_min_tiles = 10
  config.eval.bootstrap_samples = 1000
  config.eval.bootstrap_seed = 0
  # Test-time augmentation of the final report (danil_jax/runtime/tta.py):
  # 'none',
  # 'flips' (4 copies) or 'flips_rot90' (8, the square's symmetries); the
  # softmax probabilities averaged over the copies, which run as one batch
  # (n times the evaluation memory). Per-epoch evaluations (model selection)
  # stay without: one forward each. `evaluate --tta` overrides it.
  config.eval.tta = 'none'

  # Multi-host: call jax.distributed.initialize() before anything else.
  config.distributed = False
  # Where JAX cannot detect the cluster (SLURM, Open MPI, TPU pods and
  # Kubernetes it can): process 0's 'host:port', the number of processes and
  # this process's id. Empty / 0 / -1 leave them to auto-detection.
  # data_build_timeout_s bounds how long the other hosts wait for process 0
  # to build a missing data set.
  config.distributed_init = ml_collections.ConfigDict(dict(
      coordinator_address='', num_processes=0, process_id=-1,
      data_build_timeout_s=6 * 3600))

  # What a run does when something goes wrong (README "When things go wrong").
  config.faults = ml_collections.ConfigDict()
  # A step with a NaN/Inf loss, gradient norm or update is never applied;
  # the run stops at the N-th such step in a row (1: at the first one).
  config.faults.max_nonfinite_in_a_row = 1
  # A rerun in a workdir whose config.json differs in a key that changes the
  # result (method, data, batch size, optimiser, seed, ...) is refused
  # unless this is True (danil_jax/runtime/run_config.py).
  config.faults.allow_config_change = False
  return config


# Keys that no longer exist, each with what replaced it: a config or command
# line that sets one is told so in one line.
REMOVED_KEYS = {
    'faults.preemption_sync_every_steps': (
        'every step asks JAX\'s preemption sync point whether to stop, at no '
        'cost; there is nothing to set'),
}
