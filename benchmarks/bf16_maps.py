"""How far bf16 compute moves DANIL's maps and Ld from float32.

  python benchmarks/bf16_maps.py                       # resnet50 64px b4
  python benchmarks/bf16_maps.py --model=small_resnet --size=32 --batch=8

Same float32 parameters and batch; the model built with `dtype=float32` and
`dtype=bfloat16`. Every label is set to a class other than the float32
prediction, so every image is misclassified in float32 and has a map. Prints,
per compute dtype, the relative error against float32 of
||A+ - A-||^2 (Eq. 2, per image: median and max), of Ld (Eq. 5, batch mean)
and of the map itself (||map_bf16 - map_f32|| / ||map_f32||, max over
images), for the train-mode forward that a DANIL step differentiates.
Distances and maps are compared on the images whose bf16 prediction (hence
pseudo label y-) equals the float32 one.

Two bf16 rows: `bfloat16`, the model built with `dtype=bfloat16`; and
`bf16 forward, f32 backward`, the float32 model whose input and every conv
and BatchNorm output are rounded to bf16 with a straight-through gradient:
the forward values of bf16 compute with an exact float32 backward. When the
two rows agree, the error comes from the bf16 forward (the network is
another function), not from the precision of the backward or of the map.

Two rows of the misclassified-only mode
(`danil_jax/method/misclassified_only.py`,
per-image maps of the eval-mode forward with the running statistics),
against the same maps of the float32 model (y- of the float32 train-mode
forward): `mode, map_dtype=compute`, the bf16 model's maps; and `mode,
map_dtype=float32`, the maps through the float32 copy of the bf16 model
that the train step with `map_dtype='float32'` takes, with y- from the bf16
train-mode forward as in that step (so `same` counts the images whose bf16
y- equals the float32 one; on those the map is the float32 one).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from danil_jax.method import losses
from danil_jax.method import misclassified_only
from danil_jax import models
from danil_jax.trainer import train_step
from danil_jax.models import layers


def _round_to_bf16(y):
  """bf16 values, identity gradient (straight-through)."""
  if not isinstance(y, jax.Array) or y.dtype != jnp.float32:
    return y
  return y + jax.lax.stop_gradient(
      y.astype(jnp.bfloat16).astype(jnp.float32) - y)


def _round_outputs(next_fun, args, kwargs, context):
  out = next_fun(*args, **kwargs)
  if context.method_name == '__call__' and isinstance(
      context.module, (nn.Conv, nn.BatchNorm, layers.BatchNorm)):
    return _round_to_bf16(out)
  return out


class Bf16ForwardF32Backward:
  """A float32 model applied with bf16-rounded forward values."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, x, **kwargs):
    with nn.intercept_methods(_round_outputs):
      return self.model.apply(variables, _round_to_bf16(x), **kwargs)


def maps_and_ld(model, variables, images, labels):
  """(A+ - A- per image in float32, ||.||^2 per image, Ld) in train mode."""

  def fn(x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(0)})

  logits, vjp, _ = jax.vjp(fn, images, has_aux=True)
  pred = jnp.argmax(logits, -1)
  k = logits.shape[-1]
  (diff,) = vjp(jax.nn.one_hot(pred, k, dtype=logits.dtype)
                - jax.nn.one_hot(labels, k, dtype=logits.dtype))
  _, aux = losses.danil_loss(fn, images, labels, has_aux=True,
                            reduction='per_image')
  return (diff.astype(jnp.float32), aux['distance'], aux['distraction'],
          pred)


def mode_maps_and_ld(model, variables, images, labels, map_dtype):
  """As `maps_and_ld`, in the misclassified-only mode: y- from `model`'s
  train-mode forward, maps from `steps`' eval-mode map forward."""
  state = train_step.create_train_state(model, variables, optax.sgd(0.0),
                                   jax.random.PRNGKey(0))
  pred = jnp.argmax(model.apply(variables, images, train=True,
                                mutable=['batch_stats'])[0], -1)
  logits_fn = train_step._eval_logits_fn(state, map_dtype)  # the step's maps
  params = variables['params']
  logits, vjp = jax.vjp(lambda x: logits_fn(params, x), images)
  k = logits.shape[-1]
  (diff,) = vjp(jax.nn.one_hot(pred, k, dtype=logits.dtype)
                - jax.nn.one_hot(labels, k, dtype=logits.dtype))
  diff = diff.astype(jnp.float32)
  distance = jnp.sum(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
  ld, _, _ = misclassified_only.distraction_value_and_grad(
      logits_fn, params, images, labels, pred, eps=1e-4,
      reduction='per_image')
  return diff, distance, ld, pred


def relative_errors(model_name, size, batch, num_classes=7, seed=0):
  """{variant: dict(distance_median, distance_max, ld, map_median)}."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.standard_normal((batch, size, size, 3)),
                       jnp.float32)
  f32 = models.create(model_name, num_classes, dtype=jnp.float32)
  variables = f32.init(jax.random.PRNGKey(seed), images[:1], train=False)
  logits = f32.apply(variables, images, train=False)
  # A label other than the float32 prediction: every image has a map.
  labels = (jnp.argmax(logits, -1) + 1 + jnp.arange(batch) %
            (num_classes - 1)) % num_classes
  ref_map, ref_dist, ref_ld, ref_pred = jax.jit(
      lambda v: maps_and_ld(f32, v, images, labels))(variables)
  bf16 = models.create(model_name, num_classes, dtype=jnp.bfloat16)
  train_mode = {
      'bfloat16': bf16,
      'bf16 forward, f32 backward': Bf16ForwardF32Backward(f32)}
  variants = {name: (lambda v, m=model: maps_and_ld(m, v, images, labels))
              for name, model in train_mode.items()}
  mode_ref = jax.jit(lambda v: mode_maps_and_ld(f32, v, images, labels,
                                                'compute'))(variables)
  for map_dtype in ('compute', 'float32'):
    variants[f'mode, map_dtype={map_dtype}'] = (
        lambda v, d=map_dtype: mode_maps_and_ld(bf16, v, images, labels, d))
  out = {}
  for name, fn in variants.items():
    got_map, dist, ld, pred = jax.jit(fn)(variables)
    ref = mode_ref if name.startswith('mode') else (ref_map, ref_dist,
                                                     ref_ld, ref_pred)
    out[name] = _errors(ref, (got_map, dist, ld, pred), batch)
  return out


def _errors(ref, got, batch):
  ref_map, ref_dist, ref_ld, ref_pred = ref
  got_map, dist, ld, pred = got
  # Images with the same y- and a map (in the mode, a correct image has
  # none).
  same = np.asarray(pred == ref_pred) & (np.asarray(ref_dist) > 0)
  with np.errstate(divide='ignore', invalid='ignore'):  # masked by `same`
    rel = (np.abs(np.asarray(dist) - np.asarray(ref_dist))
           / np.asarray(ref_dist))[same]
    map_err = (np.linalg.norm((got_map - ref_map).reshape(batch, -1), axis=1)
               / np.linalg.norm(np.asarray(ref_map).reshape(batch, -1),
                                axis=1))[same]
  return dict(
      distance_median=float(np.median(rel)) if same.any() else None,
      distance_max=float(np.max(rel)) if same.any() else None,
      ld=float(abs(ld - ref_ld) / ref_ld),
      map_median=float(np.median(map_err)) if same.any() else None,
      same_prediction=f'{int(same.sum())}/{batch}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--size', type=int, default=64)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--seeds', default='0')
  args = parser.parse_args()
  print(f'{args.model} {args.size}px batch {args.batch}, '
        f'{jax.default_backend()}; relative error vs float32')
  for seed in (int(s) for s in args.seeds.split(',')):
    for dtype, err in relative_errors(args.model, args.size, args.batch,
                                      seed=seed).items():
      print(f'seed {seed} {dtype}: ' + ', '.join(
          f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}'
          for k, v in err.items()), flush=True)


if __name__ == '__main__':
  main()
