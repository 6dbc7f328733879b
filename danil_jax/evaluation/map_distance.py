"""The mechanism DANIL acts on, measured on a split: ||A+ - A-||^2 per image.

DANIL (the paper's Eq. 5) penalises a small distance between the response
maps A+ = dL+c/dx (Eq. 3, the true class) and A- = dL-c/dx (Eq. 4, the
class the model is distracted by), so a trained model's maps should lie
further apart than a model trained without the term. This scores that, for
every image of a split, with the model in inference mode:

  distance = ||A+ - A-||^2 (the squared L2 norm over all pixels and channels)

with y- the model's top wrong class, the highest-scoring class other than
the label: for a misclassified image its prediction, for a correct one the
runner-up (intrinsic_maps.response_maps), so the distance is defined for
every image, not only for those DANIL's training step penalises. The maps
are of the image as given: test-time augmentation does not apply.

`summary` reports the median and quartiles over three groups: every image,
the misclassified ones, and the near misses, the NEAR_MISS_FRACTION of the
images with the smallest top-2 probability margin p(top1) - p(top2) of the
same forward pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from danil_jax.method import intrinsic_maps
from danil_jax.runtime import input_pipeline
from danil_jax.runtime import multihost

KEY = 'map_distance'  # the block in metrics.json; the predictions.csv column
GROUPS = ('all', 'misclassified', 'near_miss')
STATS = ('median', 'q1', 'q3', 'count')
NEAR_MISS_FRACTION = 0.1  # the lowest decile of the top-2 margin
# The per-run scalars a comparison pairs over seeds, one per group: log10
# of the group's median, since distances of different runs differ by
# factors and a paired difference of logs is a ratio.
SCALARS = tuple(f'log10_{KEY}' + ('' if group == 'all' else f'_{group}')
                for group in GROUPS)


def map_step(apply_fn, mesh):
  """The jitted step: a global batch -> per image `distance`, `y_minus`,
  `margin` (top-2 probability margin), `prediction`, `label`, `mask`.

  Sharded over `mesh` as the eval step (scoring.jit_eval_step); images do
  not interact in inference mode, so each row's result does not depend on
  how the batch is split over devices.
  """
  def step(variables, batch):
    maps = intrinsic_maps.response_maps(
        lambda x: apply_fn(variables, x, train=False), batch['image'],
        batch['label'])
    top2 = jax.lax.top_k(jax.nn.softmax(
        maps['logits'].astype(jnp.float32)), 2)[0]
    return dict(distance=maps['distance'], y_minus=maps['y_minus'],
                margin=top2[:, 0] - top2[:, 1],
                prediction=maps['prediction'], label=batch['label'],
                mask=batch['mask'])

  return jax.jit(step, in_shardings=(multihost.replicated(mesh),
                                     multihost.data_sharding(mesh)),
                 out_shardings=multihost.replicated(mesh))


def per_image(step, variables, source, *, pre, global_batch_size: int, mesh,
              num_workers: int = 0) -> dict:
  """`map_step`'s outputs for every example of `source`, in index order
  (the padding of the last global batch dropped), as numpy arrays."""
  parts = {}
  for local_batch in input_pipeline.eval_batches(
      source, global_batch_size=global_batch_size, pre=pre,
      num_workers=num_workers):
    out = jax.device_get(step(variables, multihost.global_batch(local_batch,
                                                                mesh)))
    mask = np.asarray(out.pop('mask'), bool)
    for name, value in out.items():
      parts.setdefault(name, []).append(np.asarray(value)[mask])
  images = {name: np.concatenate(value) for name, value in parts.items()}
  if len(images['distance']) != len(source):
    raise RuntimeError(f"mapped {len(images['distance'])} examples of a "
                       f'split of {len(source)}')
  return images


def near_misses(margin: np.ndarray) -> np.ndarray:
  """Boolean [N]: the ceil(NEAR_MISS_FRACTION * N) images with the smallest
  margin (ties by index, so the count is fixed)."""
  margin = np.asarray(margin)
  chosen = np.zeros(len(margin), bool)
  count = math.ceil(NEAR_MISS_FRACTION * len(margin))
  chosen[np.argsort(margin, kind='stable')[:count]] = True
  return chosen


def _stats(values: np.ndarray) -> dict:
  """STATS of `values`: the median, the quartiles, the count."""
  if not len(values):
    return dict(dict.fromkeys(STATS, None), count=0)
  q1, median, q3 = np.percentile(np.asarray(values, np.float64),
                                 [25, 50, 75])
  return dict(zip(STATS, (float(median), float(q1), float(q3),
                          int(len(values)))))


def summary(images: dict) -> dict:
  """`per_image`'s arrays -> {group: {median, q1, q3, count}} for GROUPS,
  plus the margin below which an image counts as a near miss. A group
  without images has count 0 and None for the rest (strict JSON)."""
  distance = np.asarray(images['distance'])
  masks = dict(all=np.ones(len(distance), bool),
               misclassified=(np.asarray(images['prediction'])
                              != np.asarray(images['label'])),
               near_miss=near_misses(images['margin']))
  out = {group: _stats(distance[masks[group]]) for group in GROUPS}
  near = np.asarray(images['margin'])[masks['near_miss']]
  out['near_miss_max_margin'] = float(near.max()) if len(near) else None
  return out


def scalars(block: dict) -> dict:
  """A metrics.json `map_distance` block -> {SCALARS name: log10 median},
  for the groups with a positive median."""
  return {name: math.log10(block[group]['median'])
          for name, group in zip(SCALARS, GROUPS)
          if block.get(group, {}).get('median')}


def columns(images: dict, class_names) -> dict:
  """The per-image columns predictions.csv gains: the distance and y-."""
  return {KEY: [repr(float(d)) for d in images['distance']],
          'y_minus': [class_names[int(k)] for k in images['y_minus']]}


def format_summary(block: dict) -> str:
  """One line per group: median [q1, q3] and the number of images."""
  lines = ['||A+ - A-||^2, y- the top wrong class: median [q1, q3] (images)']
  for group in GROUPS:
    stat = block[group]
    lines.append(f'  {group:<15}' + (
        '-' if not stat['count'] else
        f"{stat['median']:.4g} [{stat['q1']:.4g}, {stat['q3']:.4g}]")
                 + f" ({stat['count']})")
  return '\n'.join(lines)
