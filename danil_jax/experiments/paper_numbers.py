"""The paper's Tables 1-4 (Gong, Ma & Zheng, MICCAI 2020, §3), as printed.

One run per cell, ImageNet-initialised backbones, test split. Tables 1 and 2
(the ablation) repeat the Base and Base+DANIL rows of Tables 3 and 4 (the
comparison with the state of the art), so each number is stored once, per
metric, data set and method, in backbone order `BACKBONES`. The paper prints
the APTOS 2019 rows as "ATPOS2019". Multi-task [3], DIL [9] and CANet [6] are
the paper's reported numbers for other methods; danil-jax does not run them.
"""

import dataclasses

BACKBONES = ('resnet50', 'vgg11', 'inception_v4', 'efficientnet_b0')
BACKBONE_LABELS = {'resnet50': 'ResNet50', 'vgg11': 'VGGNet11',
                   'inception_v4': 'Inception V4',
                   'efficientnet_b0': 'EfficientNet-b0'}
DATASETS = ('ham10000', 'aptos2019', 'crc_msi')
DATASET_LABELS = {'ham10000': 'HAM10000', 'aptos2019': 'APTOS2019',
                  'crc_msi': 'CRC-MSI'}
# Methods danil-jax trains (config.method) and those only quoted.
RUN_METHODS = ('base', 'ohem', 'danil')
# Not in the paper: DANIL with lam = 0 (experiments.comparison.CONTROL), the
# noise floor of the protocol; only when asked for (--methods).
CONTROL = 'control'
METHOD_LABELS = {'base': 'Base', 'ohem': 'Base+OHEM', 'danil': 'Base+DANIL',
                 'multitask': 'Multi-task [3]', 'dil': 'DIL [9]',
                 'canet': 'CANet [6]', CONTROL: 'DANIL, lam = 0 (control)'}
# metric -> data set -> method -> (ResNet50, VGGNet11, Inception V4,
# EfficientNet-b0), from Tables 3 (macro_f1) and 4 (accuracy).
NUMBERS = {
    'macro_f1': {
        'ham10000': {
            'base': (0.658, 0.686, 0.671, 0.700),
            'multitask': (0.667, 0.690, 0.679, 0.702),
            'ohem': (0.660, 0.692, 0.677, 0.695),
            'danil': (0.674, 0.700, 0.690, 0.710),
        },
        'aptos2019': {
            'base': (0.617, 0.634, 0.659, 0.642),
            'dil': (0.620, 0.637, 0.660, 0.649),
            'canet': (0.631, 0.641, 0.664, 0.656),
            'ohem': (0.632, 0.644, 0.647, 0.662),
            'danil': (0.660, 0.666, 0.672, 0.671),
        },
        'crc_msi': {
            'base': (0.643, 0.654, 0.650, 0.641),
            'ohem': (0.649, 0.667, 0.649, 0.644),
            'danil': (0.654, 0.683, 0.661, 0.652),
        },
    },
    'accuracy': {
        'ham10000': {
            'base': (0.779, 0.827, 0.830, 0.829),
            'multitask': (0.811, 0.830, 0.834, 0.828),
            'ohem': (0.818, 0.832, 0.830, 0.832),
            'danil': (0.825, 0.843, 0.845, 0.839),
        },
        'aptos2019': {
            'base': (0.804, 0.806, 0.825, 0.801),
            'dil': (0.810, 0.806, 0.825, 0.802),
            'canet': (0.813, 0.810, 0.826, 0.802),
            'ohem': (0.813, 0.812, 0.828, 0.814),
            'danil': (0.825, 0.827, 0.838, 0.831),
        },
        'crc_msi': {
            'base': (0.719, 0.744, 0.728, 0.717),
            'ohem': (0.725, 0.749, 0.732, 0.717),
            'danil': (0.735, 0.759, 0.743, 0.732),
        },
    },
}


@dataclasses.dataclass(frozen=True)
class Table:
  number: int
  title: str
  metric: str  # a key of NUMBERS and of final_metrics.json
  methods: tuple[str, ...]  # row order within each data set, as printed


def table_methods(table: Table, dataset: str) -> tuple[str, ...]:
  """The rows the paper prints for `dataset` in `table`, in its order."""
  return tuple(m for m in table.methods if m in NUMBERS[table.metric][dataset])


TABLES = (
    Table(1, 'Ablation study, averaged (macro) F1', 'macro_f1',
          ('base', 'danil')),
    Table(2, 'Ablation study, accuracy', 'accuracy', ('base', 'danil')),
    Table(3, 'Comparison with the state of the art, averaged (macro) F1',
          'macro_f1', ('base', 'multitask', 'dil', 'canet', 'ohem', 'danil')),
    Table(4, 'Comparison with the state of the art, accuracy', 'accuracy',
          ('base', 'multitask', 'dil', 'canet', 'ohem', 'danil')),
)


def number(metric: str, dataset: str, method: str,
           backbone: str) -> float | None:
  """The paper's value, or None where it reports none (e.g. other models)."""
  row = NUMBERS.get(metric, {}).get(dataset, {}).get(method)
  if row is None or backbone not in BACKBONES:
    return None
  return row[BACKBONES.index(backbone)]
