"""Which BatchNorm statistics for the misclassified-only mode's maps.

The exact DANIL loss (`losses.danil_loss`) takes each image's maps A+ - A-
(Eq. 2) through the train-mode forward: BatchNorm normalises with the
batch's statistics, which couple the images and are differentiated through.
The misclassified-only mode (`misclassified_only.py`) needs per-image maps,
so it holds the statistics constant. This measures, on the checkpoints of a
trained run and the training batches that followed them, how far each
choice moves Ld (Eq. 5) and its parameter gradient from the exact ones:

  running: the running statistics (eval-mode forward), what the mode does;
  batch:   the full batch's statistics, as in the train-mode forward, but
           under stop-gradient (measured here only).

Per checkpoint, averaged over `--batches` training batches, for both
readings of Ld (`reduction`): cos(g_mode, g_exact), ||g_mode|| / ||g_exact||
and Ld_mode / Ld_exact, with g = dLd/dparams (Ld alone, lam = 1); the share
of images whose argmax in the map forward equals the pseudo label y- of the
train-mode forward (Eq. 4, what both the exact loss and the mode use); and
cos(g_ce + lam g_d) of the combined update (Eq. 6) at `--lam`; and, per
gradient, the share of its norm along the conv weights feeding each BatchNorm
channel (`radial`, `_tangential`) and the cosine with that part removed
(`cos_tan`). For scale, `cos_next`: the cosine of the exact gradient of one
batch with that of the next batch, same checkpoint; `running_vs_batch`: the
cosine of the two modes' gradients.

  PYTHONPATH=$PWD python -m danil_jax.main --config=configs/demo.py \
    --workdir=/tmp/stats_run --config.checkpoint_every_steps=25 \
    --config.keep_checkpoints=40
  PYTHONPATH=$PWD python benchmarks/mode_statistics.py --workdir=/tmp/stats_run
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags
from etils import epath

from danil_jax.evaluation import best_checkpoint
from danil_jax.runtime import input_pipeline
from danil_jax.method import losses
from danil_jax.method import misclassified_only
from danil_jax.trainer import train_step
from danil_jax.evaluation import trained_run

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run (small_resnet, '
                               'flax.linen.BatchNorm) with many checkpoints.')
_STEPS = flags.DEFINE_list('steps', [], 'Checkpoint steps; default: all.')
_BATCHES = flags.DEFINE_integer('batches', 4, 'Training batches per '
                                'checkpoint: those of steps s, s+1, ...')
_LAM = flags.DEFINE_float('lam', 1e-5, 'lam of the combined update (Eq. 6).')
_EPS = flags.DEFINE_float('eps', 1e-4, 'eps of Eq. 5.')

MODES = ('running', 'batch')
READINGS = ('batch', 'per_image')


def _cosine(a, b) -> jax.Array:
  dot = sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))
  return dot / (optax.tree.norm(a) * optax.tree.norm(b))


def _tangential(grads, params):
  """`grads` less their radial part in each conv kernel's output channels.

  Every conv of small_resnet feeds a BatchNorm: with the batch's statistics
  differentiated through, the loss is invariant to each output channel's
  weight scale, so the exact gradient is orthogonal to that channel's
  weights; with statistics held constant it is not.
  """
  def project(g, w):
    if g.ndim != 4:  # not a conv kernel (HWIO)
      return g
    g2, w2 = g.reshape(-1, g.shape[-1]), w.reshape(-1, w.shape[-1])
    coef = jnp.sum(g2 * w2, 0) / jnp.maximum(jnp.sum(w2 * w2, 0), 1e-30)
    return (g2 - coef * w2).reshape(g.shape)
  return jax.tree.map(project, grads, params)


def _radial_share(grads, params) -> jax.Array:
  radial = jax.tree.map(jnp.subtract, grads, _tangential(grads, params))
  return optax.tree.norm(radial) / optax.tree.norm(grads)


KINDS = ('conv', 'bn_scale', 'bn_bias', 'head')


def _shares(grads) -> dict:
  """The share of ||grads||^2 in conv kernels, BatchNorm scales and biases
  and the dense head."""
  squares = dict.fromkeys(KINDS, 0.0)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    names = [getattr(k, 'key', '') for k in path]
    if names[0] == 'head':
      kind = 'head'
    elif g.ndim == 4:
      kind = 'conv'
    else:
      kind = 'bn_scale' if names[-1] == 'scale' else 'bn_bias'
    squares[kind] = squares[kind] + jnp.sum(jnp.square(g))
  total = sum(squares.values())
  return {k: v / total for k, v in squares.items()}


def batch_statistics(state, params, x, momentum: float = 0.9):
  """(train-mode logits, the batch's BatchNorm mean/var per layer).

  flax.linen.BatchNorm updates r <- m r + (1 - m) batch with the biased
  variance (what it normalises with); from r = 0 the update is (1 - m) batch.
  Returned under stop-gradient: a forward closing over them differentiates
  nothing through them.
  """
  zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
  logits, updates = state.apply_fn({'params': params, 'batch_stats': zeros}, x,
                                   train=True, mutable=['batch_stats'])
  stats = jax.tree.map(lambda v: v / (1 - momentum), updates['batch_stats'])
  return logits, jax.lax.stop_gradient(stats)


def measure(state, batch, *, lam: float, eps: float) -> dict:
  """The figures of one batch (module docstring), as scalars."""
  params, x, labels = state.params, batch['image'], batch['label']

  def train_forward(p):
    return lambda z: state.apply_fn(
        {'params': p, 'batch_stats': state.batch_stats}, z, train=True,
        mutable=['batch_stats'])

  def ce(p):
    logits, _ = train_forward(p)(x)
    return losses.cross_entropy_loss(logits, labels), logits

  (_, train_logits), g_ce = jax.value_and_grad(ce, has_aux=True)(params)
  pred = jnp.argmax(train_logits, -1)  # y- (Eq. 4), as the train step takes it
  zero_stats_logits, stats = batch_statistics(state, params, x)
  logits_fns = dict(
      running=train_step._eval_logits_fn(state),  # pylint: disable=protected-access
      batch=lambda p, z: state.apply_fn({'params': p, 'batch_stats': stats},
                                        z, train=False))
  batch_logits = logits_fns['batch'](params, x)
  out = dict(
      misclassified=jnp.mean(pred != labels),
      # The recovered-statistics forward must reproduce the train-mode one.
      check=jnp.maximum(jnp.max(jnp.abs(batch_logits - train_logits)),
                        jnp.max(jnp.abs(zero_stats_logits - train_logits))))
  for mode, fn in logits_fns.items():
    out[f'{mode}/y-'] = jnp.mean(jnp.argmax(fn(params, x), -1) == pred)
  for reading in READINGS:
    def exact_ld(p, reading=reading):
      _, aux = losses.danil_loss(train_forward(p), x, labels, lam=1.0, eps=eps,
                                 has_aux=True, reduction=reading)
      return aux['distraction']
    ld_exact, g_exact = jax.value_and_grad(exact_ld)(params)
    total_exact = jax.tree.map(lambda c, d: c + lam * d, g_ce, g_exact)
    out[f'exact/{reading}/ld'] = ld_exact
    out[f'exact/{reading}/radial'] = _radial_share(g_exact, params)
    tan_exact = _tangential(g_exact, params)
    out[f'exact/{reading}/grads'] = g_exact
    out[f'exact/{reading}/shares'] = _shares(g_exact)
    mode_grads = {}
    for mode, fn in logits_fns.items():
      ld, g, _ = misclassified_only.distraction_value_and_grad(
          fn, params, x, labels, pred, eps=eps, reduction=reading)
      key = f'{mode}/{reading}'
      out[f'{key}/cos'] = _cosine(g, g_exact)
      out[f'{key}/norm'] = optax.tree.norm(g) / optax.tree.norm(g_exact)
      out[f'{key}/ld'] = ld / ld_exact  # nan where nothing is misclassified
      out[f'{key}/radial'] = _radial_share(g, params)
      out[f'{key}/shares'] = _shares(g)
      out[f'{key}/cos_tan'] = _cosine(_tangential(g, params), tan_exact)
      out[f'{key}/cos_total'] = _cosine(
          jax.tree.map(lambda c, d: c + lam * d, g_ce, g), total_exact)
      mode_grads[mode] = g
    out[f'running_vs_batch/{reading}/cos'] = _cosine(*mode_grads.values())
  return out


def _columns() -> list[str]:
  columns = ['misclassified']
  for reading in READINGS:
    for mode in MODES:
      columns += [f'{mode}/{reading}/{k}' for k in ('cos', 'norm', 'ld')]
  columns += [f'{mode}/batch/cos_total' for mode in MODES]
  for reading in READINGS:
    columns += [f'exact/{reading}/radial']
    for mode in MODES:
      columns += [f'{mode}/{reading}/{k}' for k in ('radial', 'cos_tan')]
  columns += [f'{mode}/y-' for mode in MODES]
  columns += [f'running_vs_batch/{reading}/cos' for reading in READINGS]
  return columns + [f'exact/{reading}/cos_next' for reading in READINGS]


def main(argv):
  del argv
  workdir = _WORKDIR.value
  run = trained_run.load(workdir, 'last')
  config = run.config
  directory, _ = best_checkpoint.find_checkpoint(workdir, 'last')
  chosen = [int(s) for s in _STEPS.value] or sorted(
      int(p.name) for p in epath.Path(directory).iterdir() if p.name.isdigit())
  source = run.builder.as_data_source(config.dataset.train_split)
  # The augmented training batches the run drew at steps s, s+1, ...
  train_batch = input_pipeline._TrainBatch(  # pylint: disable=protected-access
      source, dataclasses.replace(run.pre, augment=True),
      global_batch_size=config.input.global_batch_size, seed=config.seed,
      positions=slice(0, config.input.global_batch_size))
  measure_jit = jax.jit(functools.partial(measure, lam=_LAM.value,
                                          eps=_EPS.value))
  columns = _columns()
  print('| step | ' + ' | '.join(columns) + ' |')
  print('|' + '---|' * (len(columns) + 1))
  worst_check = 0.0
  all_rows = []
  for step in chosen:
    state = run.state.replace(**trained_run.restore_weights(
        directory, step, run.mesh))
    rows = [jax.device_get(measure_jit(state, train_batch.map(step + i)))
            for i in range(_BATCHES.value)]
    worst_check = max([worst_check] + [float(r['check']) for r in rows])
    # The reference scale: the exact gradient of one batch against the next.
    for reading in READINGS:
      key = f'exact/{reading}'
      for row, following in zip(rows, rows[1:]):
        row[f'{key}/cos_next'] = _cosine(row[f'{key}/grads'],
                                         following[f'{key}/grads'])
      rows[-1][f'{key}/cos_next'] = np.nan
    all_rows += rows
    mean = {k: np.nanmean([float(r[k]) for r in rows]) for k in columns}
    print(f'| {step} | ' + ' | '.join(f'{mean[c]:.3f}' for c in columns)
          + ' |', flush=True)
  print('\nShare of ||dLd/dparams||^2 by parameter kind (mean over all '
        'checkpoints and batches):')
  print('| gradient | ' + ' | '.join(KINDS) + ' |')
  print('|' + '---|' * (len(KINDS) + 1))
  for reading in READINGS:
    for source in ('exact',) + MODES:
      key = f'{source}/{reading}/shares'
      print(f'| {source}, {reading!r} | ' + ' | '.join(
          f'{np.mean([float(r[key][k]) for r in all_rows]):.3f}'
          for k in KINDS) + ' |')
  print(f'max |logits(eval mode, recovered batch statistics) - logits(train '
        f'mode)| = {worst_check:.2e}')


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
