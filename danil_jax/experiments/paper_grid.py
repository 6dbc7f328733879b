"""The paper command's grid: one config per data set x backbone x method x seed.

Each data set's config is `configs/<dataset>.py` with the command line's
overrides (`apply_overrides`, `parse_dataset_overrides`); the grid then sets
the model, ImageNet weights, method and seed of each `Run`. paper_runs checks,
trains and reads the runs.
"""

import importlib
import os

from danil_jax.experiments import comparison
from danil_jax.experiments import grid_runs
from danil_jax.experiments import paper_numbers as pn

# Keys the grid sets, and keys that only make sense per data set.
GRID_KEYS = ('method', 'seed', 'model.name', 'model.pretrained',
             'dataset.name')
PER_DATASET_KEYS = ('dataset.num_classes', 'dataset.manual_dir',
                    'dataset.builder_config')


def dataset_config(name: str):
  try:
    return importlib.import_module(f'configs.{name}').get_config()
  except ModuleNotFoundError:
    raise ValueError(f'no configs/{name}.py for data set {name!r}') from None


def apply_overrides(config, overrides: dict, where: str) -> None:
  """Sets dotted `key: value` pairs; a key `config` lacks is an error."""
  for key, value in overrides.items():
    try:
      parent, name = grid_runs.parent_and_name(config, key)
    except KeyError:
      raise ValueError(f'{where}: no config key {key!r}') from None
    if isinstance(value, str) and not isinstance(parent[name], str):
      value = grid_runs.parse_value(value, parent[name], key)
    parent[name] = value


def parse_dataset_overrides(items, datasets) -> dict[str, dict]:
  """['ham10000:a.b=1', ...] -> {'ham10000': {'a.b': '1'}}."""
  out = {name: {} for name in datasets}
  for item in items:
    name, sep, assignment = item.partition(':')
    key, eq, value = assignment.partition('=')
    if not sep or not eq:
      raise ValueError(f'--dataset_config={item!r}: expected NAME:key=value')
    if name not in out:
      raise ValueError(f'--dataset_config={item!r}: {name!r} is not in '
                       f'--datasets={",".join(datasets)}')
    if key in GRID_KEYS:
      raise ValueError(f'--dataset_config={item!r}: {key} is set by the grid')
    out[name][key] = value
  return out


class Run:
  """One cell of the grid: where it lives and its full config."""

  def __init__(self, dataset, backbone, method, seed, workdir, config):
    self.dataset, self.backbone, self.method = dataset, backbone, method
    self.seed, self.config = seed, config
    self.workdir = grid_runs.run_dir(os.path.join(workdir, dataset, backbone),
                                     method, seed)

  @property
  def key(self):
    return (self.dataset, self.backbone, self.method)

  def finished(self) -> bool:
    return os.path.isfile(os.path.join(self.workdir, grid_runs.FINAL_METRICS))


def plan(workdir: str, *, datasets, backbones, methods, seeds,
         pretrained_root: str, config_overrides: dict,
         data_dir: str | None = None, manual_root: str | None = None,
         dataset_overrides: dict | None = None) -> list[Run]:
  """The grid's runs; every override is checked against every config."""
  for key in config_overrides:
    if key in GRID_KEYS or key in PER_DATASET_KEYS:
      raise ValueError(
          f'--config.{key} is set per run: use --datasets/--backbones/'
          '--methods/--seeds/--pretrained_root, --manual_root or '
          '--dataset_config=NAME:key=value')
  known = pn.RUN_METHODS + (pn.CONTROL,)
  unknown = [m for m in methods if m not in known]
  if unknown:
    raise ValueError(f'--methods: {unknown} not in {list(known)}')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  runs = []
  for dataset in datasets:
    base = dataset_config(dataset)
    apply_overrides(base, config_overrides, f'configs/{dataset}.py')
    if data_dir:
      base.dataset.data_dir = data_dir
    if manual_root:
      base.dataset.manual_dir = os.path.join(manual_root, dataset)
    apply_overrides(base, (dataset_overrides or {}).get(dataset, {}),
                    f'--dataset_config for {dataset}')
    for key in ('data_dir', 'manual_dir'):  # jobs run from another folder
      path = base.dataset[key]
      if path and not path.startswith('~'):
        base.dataset[key] = os.path.abspath(path)
    for backbone in backbones:
      for method in methods:
        for seed in seeds:
          config = base.copy_and_resolve_references()
          config.model.name = backbone
          config.model.pretrained = (os.path.join(pretrained_root, backbone)
                                     if pretrained_root else '')
          comparison.set_method(config, method)
          config.seed = seed
          config.lock()
          runs.append(Run(dataset, backbone, method, seed, workdir, config))
  return runs
