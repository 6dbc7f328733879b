"""PyTorch checkpoints -> Flax variables, and loading them into a model.

The Flax backbones name their modules after the torch module paths, so the
conversion is one rule per leaf: torch key `a.b.c.<leaf>` becomes the Flax path
`a/b/c/<leaf'>` with

  conv `weight` (O, I/groups, kh, kw) -> `params/.../kernel` (kh, kw, I/groups, O)
  linear `weight` (O, I)              -> `params/.../kernel` (I, O)
  BN `weight` / `bias`                -> `params/.../scale` / `bias`
  BN `running_mean` / `running_var`   -> `batch_stats/.../mean` / `var`
  `num_batches_tracked`               -> dropped (Flax does not track it)

plus one model-specific fix: VGG's `classifier.0.weight` has its input axis in
torch's (C, H, W) flatten order and is permuted to our (H, W, C) order.

Converted variables are stored without torch in DIR/variables.npz (keys are
'/'-joined Flax paths such as 'params/fc/kernel') next to DIR/metadata.json.
"""

import json
import os
from typing import Any, Mapping
import zipfile

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from danil_jax import models

VARIABLES_FILE = 'variables.npz'
METADATA_FILE = 'metadata.json'
FORMAT_VERSION = 1
# VGG's first classifier Linear and the (C, H, W) map it reads.
_VGG_FC0 = ('classifier', '0')
_VGG_FC0_CHW = (512, 7, 7)


class ConversionError(ValueError):
  """A checkpoint that does not fit the requested architecture."""


def convertible_archs() -> list[str]:
  return [n for n in models.names() if models.info(n).torch_reference]


def _check_arch(arch: str) -> None:
  if arch not in convertible_archs():
    raise ConversionError(
        f'unknown arch {arch!r}; expected one of {convertible_archs()}')


# ---------------------------------------------------------------- flat trees


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}, depth first: the keys of variables.npz."""
  return traverse_util.flatten_dict(tree, sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict (`flatten`'s inverse)."""
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def expected_shapes(arch: str, num_classes: int) -> dict[str, tuple]:
  """'/'-joined Flax path -> shape, for `arch` (no compute: eval_shape)."""
  info = models.info(arch)
  model = info.build(num_classes=num_classes)
  size = info.input_size
  variables = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)},
                         jnp.zeros((1, size, size, 3)), train=False))
  return {k: tuple(v.shape) for k, v in flatten(variables).items()}


# ------------------------------------------------------ torch <-> flax keys


def _flax_leaf(arch: str, key: str, value: np.ndarray):
  """One torch state_dict entry -> (flax path, array), or None to drop it."""
  *module, leaf = key.split('.')
  if leaf == 'num_batches_tracked':
    return None
  if leaf == 'running_mean':
    return '/'.join(['batch_stats', *module, 'mean']), value
  if leaf == 'running_var':
    return '/'.join(['batch_stats', *module, 'var']), value
  if leaf == 'bias':
    return '/'.join(['params', *module, 'bias']), value
  if leaf != 'weight':
    return '/'.join(['params', *module, leaf]), value  # unexpected, reported
  if value.ndim == 4:
    return '/'.join(['params', *module, 'kernel']), value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    if arch.startswith('vgg') and tuple(module) == _VGG_FC0 and (
        value.shape[1] == np.prod(_VGG_FC0_CHW)):
      out = value.shape[0]
      value = value.reshape(out, *_VGG_FC0_CHW).transpose(2, 3, 1, 0)
      return '/'.join(['params', *module, 'kernel']), value.reshape(-1, out)
    return '/'.join(['params', *module, 'kernel']), value.T
  if value.ndim == 1:
    return '/'.join(['params', *module, 'scale']), value
  return '/'.join(['params', *module, 'weight']), value  # reported


def torch_key_and_shape(path: str, shape: tuple) -> tuple[str, tuple]:
  """Inverse of the key rule: Flax path and shape -> torch key and shape."""
  collection, *module, leaf = path.split('/')
  torch_leaf = {'mean': 'running_mean', 'var': 'running_var',
                'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
  if collection == 'params' and leaf == 'kernel':
    shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else (
        shape[::-1])
  return '.'.join([*module, torch_leaf]), tuple(shape)


def _num_classes(arch: str, flat: Mapping[str, np.ndarray]) -> int:
  head = models.info(arch).head[0]
  key = f'params/{head}/bias'
  if key not in flat:
    torch_key, _ = torch_key_and_shape(key, ())
    raise ConversionError(
        f'checkpoint has no classifier bias {torch_key!r}; is it a {arch} '
        f'state_dict ({models.info(arch).torch_reference})?')
  return int(flat[key].shape[0])


def _mismatch_report(arch, got: Mapping[str, tuple],
                     want: Mapping[str, tuple]) -> list[str]:
  lines = []
  for k in sorted(set(want) - set(got)):
    tk, ts = torch_key_and_shape(k, want[k])
    lines.append(f'missing key {tk!r} (expected shape {ts})')
  for k in sorted(set(got) - set(want)):
    tk, ts = torch_key_and_shape(k, got[k])
    lines.append(f'unexpected key {tk!r} with shape {ts}')
  for k in sorted(set(got) & set(want)):
    if tuple(got[k]) != tuple(want[k]):
      tk, ts = torch_key_and_shape(k, got[k])
      _, tw = torch_key_and_shape(k, want[k])
      lines.append(f'key {tk!r} has shape {ts}, expected {tw}')
  return lines


def convert_state_dict(arch: str, state_dict: Mapping[str, Any]
                       ) -> tuple[dict[str, Any], int]:
  """torch state_dict (numpy arrays) -> (Flax variables, num_classes).

  Raises ConversionError listing every missing, unexpected or wrongly shaped
  key (named as torch keys with torch shapes).
  """
  _check_arch(arch)
  flat = {}
  for key, value in state_dict.items():
    entry = _flax_leaf(arch, key, np.asarray(value))
    if entry is not None:
      flat[entry[0]] = entry[1]
  num_classes = _num_classes(arch, flat)
  problems = _mismatch_report(
      arch, {k: v.shape for k, v in flat.items()},
      expected_shapes(arch, num_classes))
  if problems:
    raise ConversionError(
        f'checkpoint does not match {arch} '
        f'({models.info(arch).torch_reference}):\n  ' + '\n  '.join(problems))
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}
  return unflatten(flat), num_classes


# ------------------------------------------------------------------- files


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch state_dict as numpy arrays, never unpickling objects.

  `.safetensors` needs only the safetensors package; `.pth`/`.pt`/`.bin` are
  read with `torch.load(weights_only=True)`.
  """
  if not os.path.isfile(path):
    raise ConversionError(f'checkpoint file not found: {path}')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConversionError(
        f'reading {path} needs torch (pip install "danil_jax[torch]"); or '
        'convert a .safetensors file, which needs no torch') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'cannot read {path} as a torch state_dict: {e}'
                          ) from e
  # Training checkpoints often wrap the state_dict.
  for wrapper in ('state_dict', 'model', 'state_dict_ema'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path} holds a {type(obj).__name__}, '
                          'not a state_dict')
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f'{path}: entry {key!r} is not a tensor')
    key = key[len('module.'):] if key.startswith('module.') else key
    value = value.detach().cpu()
    out[key] = (value.float() if value.is_floating_point() else value).numpy()
  return out


def save(variables: Mapping[str, Any], out_dir: str, *, arch: str,
         num_classes: int, source: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
  np.savez(os.path.join(out_dir, VARIABLES_FILE), **flat)
  metadata = dict(arch=arch, num_classes=num_classes,
                  source=os.path.abspath(source) if source else '',
                  format_version=FORMAT_VERSION)
  with open(os.path.join(out_dir, METADATA_FILE), 'w') as f:
    json.dump(metadata, f, indent=2)


def convert_file(arch: str, checkpoint: str, out_dir: str) -> dict[str, Any]:
  """What `python -m danil_jax.convert` does; returns the metadata."""
  _check_arch(arch)
  state_dict = read_state_dict(checkpoint)
  variables, num_classes = convert_state_dict(arch, state_dict)
  save(variables, out_dir, arch=arch, num_classes=num_classes,
       source=checkpoint)
  return read_metadata(out_dir)


def read_metadata(path: str) -> dict[str, Any]:
  if not os.path.isdir(path):
    raise ConversionError(
        f'pretrained weights directory {path!r} does not exist '
        '(config.model.pretrained); create it with python -m danil_jax.convert')
  meta_file = os.path.join(path, METADATA_FILE)
  if not os.path.isfile(meta_file):
    raise ConversionError(
        f'{path} is not a converted checkpoint directory (no {METADATA_FILE});'
        ' create one with python -m danil_jax.convert')
  try:
    with open(meta_file) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f'{meta_file} is damaged ({e}); convert the '
                          'checkpoint again with python -m danil_jax.convert'
                          ) from None
  missing = [k for k in ('arch', 'num_classes') if k not in meta]
  if not isinstance(meta, dict) or missing:
    raise ConversionError(f'{meta_file} lacks {missing or "its fields"}; '
                          'convert the checkpoint again with python -m '
                          'danil_jax.convert')
  return meta


def _stored_shapes(path: str) -> dict[str, tuple]:
  """Shapes in DIR/variables.npz from the array headers, reading no data."""
  npz = os.path.join(path, VARIABLES_FILE)
  try:
    shapes = {}
    with zipfile.ZipFile(npz) as archive:
      for name in archive.namelist():
        with archive.open(name) as f:
          version = np.lib.format.read_magic(f)
          read_header = (np.lib.format.read_array_header_1_0
                         if version == (1, 0)
                         else np.lib.format.read_array_header_2_0)
          shape, _, _ = read_header(f)
        shapes[name.removesuffix('.npy')] = tuple(shape)
    return shapes
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise ConversionError(f'{npz} is missing or damaged ({e}); convert the '
                          'checkpoint again with python -m danil_jax.convert'
                          ) from None


def check(arch: str, path: str) -> dict[str, Any]:
  """Checks a converted-weights directory without loading it (no compute).

  Raises ConversionError naming the directory or file if it is missing,
  damaged, for another architecture or of the wrong shapes; returns the
  metadata.
  """
  meta = read_metadata(path)
  if meta['arch'] != arch:
    raise ConversionError(
        f'{path} holds {meta["arch"]} weights, not {arch}')
  problems = _mismatch_report(arch, _stored_shapes(path),
                              expected_shapes(arch, meta['num_classes']))
  if problems:
    raise ConversionError(f'{path} does not match {arch}:\n  '
                          + '\n  '.join(problems))
  return meta


def load(arch: str, path: str) -> dict[str, Any]:
  """Converted variables {'params', 'batch_stats'} from `path` (a directory)."""
  meta = read_metadata(path)
  if meta['arch'] != arch:
    raise ConversionError(
        f'{path} holds {meta["arch"]} weights, not {arch}')
  npz = os.path.join(path, VARIABLES_FILE)
  try:
    with np.load(npz) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ConversionError(f'{npz} is missing or damaged ({e}); convert the '
                          'checkpoint again with python -m danil_jax.convert'
                          ) from None
  problems = _mismatch_report(arch, {k: v.shape for k, v in flat.items()},
                              expected_shapes(arch, meta['num_classes']))
  if problems:
    raise ConversionError(f'{path} does not match {arch}:\n  '
                          + '\n  '.join(problems))
  return unflatten({k: jnp.asarray(v) for k, v in flat.items()})


# ------------------------------------------------------------------ merging


def _under(key: str, heads) -> str | None:
  for h in heads:
    for collection in ('params', 'batch_stats'):
      if key.startswith(f'{collection}/{h}/'):
        return h
  return None


def merge_pretrained(init_variables: Mapping[str, Any],
                     pretrained_variables: Mapping[str, Any], *,
                     head) -> dict[str, Any]:
  """`init_variables` with every leaf replaced by its pretrained value.

  `head` lists the classifier's parameter paths ('/'-joined, relative to
  `params`, e.g. ('fc',) or ('classifier/6',)). A head whose shapes differ
  from the pretrained one (another number of classes), or that the
  pretrained variables lack, keeps its fresh initialisation, as in the paper.
  Any other missing, unexpected or wrongly shaped leaf raises ValueError
  listing all of them.
  """
  init = flatten(init_variables)
  pre = flatten(pretrained_variables)
  heads = tuple(head)
  keep_init = set()
  for h in heads:
    init_keys = [k for k in init if _under(k, (h,))]
    pre_keys = [k for k in pre if _under(k, (h,))]
    same = sorted(init_keys) == sorted(pre_keys) and all(
        tuple(np.shape(init[k])) == tuple(np.shape(pre[k])) for k in init_keys)
    if not same:
      keep_init.add(h)
  problems = []
  for k in sorted(set(init) - set(pre)):
    if _under(k, keep_init) is None:
      problems.append(f'missing in pretrained: {k} {tuple(np.shape(init[k]))}')
  for k in sorted(set(pre) - set(init)):
    if _under(k, keep_init) is None:
      problems.append(f'unexpected in pretrained: {k} {tuple(np.shape(pre[k]))}')
  for k in sorted(set(pre) & set(init)):
    if _under(k, keep_init) is None and (
        tuple(np.shape(pre[k])) != tuple(np.shape(init[k]))):
      problems.append(f'shape mismatch: {k} pretrained {tuple(np.shape(pre[k]))}'
                      f' vs model {tuple(np.shape(init[k]))}')
  if problems:
    raise ValueError('pretrained variables do not fit the model:\n  '
                     + '\n  '.join(problems))
  merged = {}
  for k, v in init.items():
    if _under(k, keep_init) is not None:
      merged[k] = v
    else:
      merged[k] = jnp.asarray(pre[k], dtype=jnp.result_type(v))
  return unflatten(merged)
