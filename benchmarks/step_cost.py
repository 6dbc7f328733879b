"""Cost of a DANIL training step against a plain one.

  python benchmarks/step_cost.py                      # small_resnet, resnet50
  python benchmarks/step_cost.py --torch              # + PyTorch reference
  python benchmarks/step_cost.py --models=vgg11,efficientnet_b0 --batch=4 \
      --json=/tmp/cost.json

For each backbone, in one process, after compilation and interleaved rep by
rep (so load drift hits every variant alike), times:

  forward       train-mode forward only
  plain         `train_step.step_for('base')` (forward + backward)
  ohem          `train_step.step_for('ohem')`
  danil         `train_step.step_for('danil')`: one forward, one input
                VJP for A+ - A- (Eq. 2-4), the outer gradient through it
  danil_2grad   DANIL with A+ and A- from two separate input gradients
                (Algorithm 1 literally; as `tests/method/test_losses.py`)
  danil_correct the DANIL step on a batch whose labels are the predictions
                (no sample misclassified; same executable as `danil`)
  danil_skip    the DANIL step with `skip_correct=True`: a plain forward
                first; `lax.cond` then finishes a plain step when no sample
                is misclassified (Ld = 0, Eq. 5), else runs the DANIL step
  danil_skip_correct  the same executable on the all-correct batch
  danil_mo      the DANIL step with `misclassified_only=True` (per-image maps
                with running BatchNorm statistics, double backprop over the
                misclassified images' capacity bucket only)
  danil_mo_eighth  the same executable on a batch with ceil(B/8) images
                misclassified (the rest labelled with their predictions)
  danil_eighth  the exact DANIL step on that batch
  danil_stock   (--stock) the DANIL step with JAX's stock conv/max-pool rules
                instead of `danil_jax.method.ops` (conv_rules='stock')

`--conv_rules` sets the rules of every other variant (default 'auto');
`--reduction` the reading of the DANIL variants' Ld (default 'per_image';
the trainer's default is 'batch').

and reports the median ms, the ratio to `plain`, the ratio in forward units,
compile time and XLA temp memory. Every call starts from a copy of the same
donated train state (copied outside the clock). DANIL/plain ~ 2.0 is the
floor of an exact double backprop.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

# Runs as `python benchmarks/step_cost.py` from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
import optax

from danil_jax.method import losses
from danil_jax import models
from danil_jax.method import ops
from danil_jax.trainer import train_step

# model -> (input size, batch) defaults.
DEFAULTS = {'small_resnet': (64, 16), 'resnet50': (224, 8), 'vgg11': (224, 8),
            'vgg11_bn': (224, 8), 'inception_v4': (299, 8),
            'efficientnet_b0': (224, 8)}
JAX_VARIANTS = ('forward', 'plain', 'ohem', 'danil', 'danil_2grad',
                'danil_correct', 'danil_skip', 'danil_skip_correct',
                'danil_eighth', 'danil_mo', 'danil_mo_eighth')
# Variants that run another variant's executable on the all-correct batch
# or the batch with 1/8 misclassified.
SAME_EXECUTABLE = {'danil_correct': 'danil',
                   'danil_skip_correct': 'danil_skip',
                   'danil_eighth': 'danil', 'danil_mo_eighth': 'danil_mo'}
TORCH_VARIANTS = ('forward', 'plain', 'danil')
LAM, EPS = 1e-5, 1e-4


def two_gradient_loss(params, state, batch, rng, *, lam, eps):
  """DANIL with A+ and A- as two separate input gradients (Algorithm 1)."""

  def forward(x):
    return state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})

  images, labels = batch['image'], batch['label']
  logits, updates = forward(images)
  pred = jax.lax.stop_gradient(jnp.argmax(logits, -1))

  def summed_ce(x, y):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        forward(x)[0].astype(jnp.float32), y))

  a_pos = jax.grad(summed_ce)(images, labels)
  a_neg = jax.grad(summed_ce)(images, pred)
  distance = jnp.sum(jnp.square((a_pos - a_neg).astype(jnp.float32)),
                     axis=(1, 2, 3))
  ld = jnp.mean(jnp.where(pred != labels, 1.0 / (distance + eps), 0.0))
  return losses.cross_entropy_loss(logits, labels) + lam * ld, updates


def two_gradient_step(state, batch, *, lam, eps):
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, updates), grads = jax.value_and_grad(
      two_gradient_loss, has_aux=True)(state.params, state, batch, rng,
                                       lam=lam, eps=eps)
  state = state.apply_gradients(grads=grads)
  return state.replace(batch_stats=updates['batch_stats']), dict(loss=loss)


def forward_only(state, batch):
  logits, updates = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats},
      batch['image'], train=True, mutable=['batch_stats'],
      rngs={'dropout': state.rng})
  return logits, updates


def _step_fns(stock_apply=None, reduction='per_image'):
  # `reduction` (losses.danil_loss's reading) for every DANIL variant.
  danil = functools.partial(train_step.step_for, 'danil', lam=LAM, eps=EPS,
                            reduction=reduction)
  return {
      'forward': (forward_only, False),
      'plain': (train_step.step_for('base'), True),
      'ohem': (train_step.step_for('ohem'), True),
      'danil': (danil(), True),
      'danil_2grad': (functools.partial(two_gradient_step, lam=LAM, eps=EPS),
                      True),
      'danil_skip': (danil(skip_correct=True), True),
      'danil_mo': (danil(misclassified_only=True), True),
      # The same weights through a model built with conv_rules='stock'.
      'danil_stock': (lambda s, b: danil()(
          s.replace(apply_fn=stock_apply), b), True),
  }


def _compile(fn, donate, state, batch):
  start = time.perf_counter()
  jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
  compiled = jitted.lower(state, batch).compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp = getattr(memory, 'temp_size_in_bytes', None) if memory else None
  return compiled, seconds, temp


def _copy(tree):
  return jax.block_until_ready(jax.tree.map(jnp.copy, tree))


def setup_jax(name, size, batch_size, num_classes, dtype, torch_model=None,
              conv_rules='auto'):
  """(train state, batch, batch with every sample correct)."""
  model = models.create(name, num_classes, dtype=dtype, conv_rules=conv_rules)
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, size, size, 3), np.float32)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  if torch_model is not None:
    from danil_jax.models import weights  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    variables, _ = weights.convert_state_dict(
        name, torch_reference.state_dict_numpy(torch_model))
  else:
    variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)
  # lr as a state array, so XLA cannot specialise on its value.
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01, momentum=0.9)
  state = train_step.create_train_state(model, variables, tx,
                                   jax.random.PRNGKey(1))
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels)}
  # A lambda: a cached trace of forward_only would hide its compile time.
  logits, _ = jax.jit(lambda s, b: forward_only(s, b))(state, batch)
  correct = {'image': batch['image'],
             'label': jnp.argmax(logits, -1).astype(jnp.int32)}
  return state, batch, correct


def one_eighth_misclassified(correct, num_classes):
  """The all-correct batch with its first ceil(B/8) labels changed."""
  labels = correct['label']
  wrong = -(-labels.shape[0] // 8)
  flipped = labels.at[:wrong].set((labels[:wrong] + 1) % num_classes)
  return {'image': correct['image'], 'label': flipped}


def _inputs(variant, batch, correct, eighth):
  if variant.endswith('_correct'):
    return correct
  return eighth if variant.endswith('_eighth') else batch


def run_model(name, size, batch_size, args):
  """Times every variant of one backbone; returns its result dict."""
  result = dict(model=name, size=size, batch=batch_size, dtype=args.dtype,
                conv_rules=args.conv_rules, reduction=args.reduction,
                variants={})
  torch_steps = None
  if args.torch and models.info(name).torch_reference:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
    torch_model = torch_reference.build(name, args.num_classes)
    torch_steps = torch_reference.Steps(
        torch_model, lr=0.01, momentum=0.9, lam=LAM, eps=EPS,
        device=args.torch_device,
        autocast_dtype=(torch.bfloat16 if args.dtype == 'bfloat16' else None))
  state, batch, correct = setup_jax(
      name, size, batch_size, args.num_classes, jnp.dtype(args.dtype),
      torch_model=torch_steps.model if torch_steps else None,
      conv_rules=args.conv_rules)
  eighth = one_eighth_misclassified(correct, args.num_classes)
  # forward and plain are the units of the ratios: always timed.
  variants = [v for v in JAX_VARIANTS
              if v in args.variants.split(',') + ['forward', 'plain']]
  variants += ['danil_stock'] if args.stock else []
  for v, owner in SAME_EXECUTABLE.items():
    if v in variants and owner not in variants:
      variants.insert(variants.index(v), owner)
  fns = _step_fns(models.create(name, args.num_classes,
                                dtype=jnp.dtype(args.dtype),
                                conv_rules='stock').apply,
                   reduction=args.reduction)
  compiled = {}
  for v in variants:
    if v in SAME_EXECUTABLE:
      compiled[v] = compiled[SAME_EXECUTABLE[v]]
      result['variants'][v] = dict(
          result['variants'][SAME_EXECUTABLE[v]], ms=[])
      continue
    fn, donate = fns[v]
    compiled[v], seconds, temp = _compile(fn, donate, state, batch)
    result['variants'][v] = dict(compile_s=seconds, temp_bytes=temp, ms=[])
    print(f'  compiled {name}/{v}: {seconds:.1f} s', flush=True)
  # Sanity: the variants compute the same DANIL loss; the correct batch has
  # no misclassified sample (so the skip path is what is timed).
  checks = {}
  for v in variants:
    if v.startswith('danil'):
      _, metrics = compiled[v](_copy(state),
                               _inputs(v, batch, correct, eighth))
      checks[v] = {k: float(x) for k, x in metrics.items()}
  if torch_steps is not None:
    torch_inputs = torch_steps.inputs(batch['image'], batch['label'])
    checks['torch_danil'] = _torch_check(torch_steps, torch_inputs)
    result['torch'] = {v: dict(ms=[]) for v in TORCH_VARIANTS
                       if v in variants}
  result['checks'] = checks
  print('  checks: ' + json.dumps(checks), flush=True)
  for rep in range(args.reps + 1):  # rep 0 is a warm-up
    for v in variants:
      inputs = _inputs(v, batch, correct, eighth)
      state_copy = _copy(state)
      start = time.perf_counter()
      _, metrics = jax.block_until_ready(compiled[v](state_copy, inputs))
      if rep:
        result['variants'][v]['ms'].append(
            (time.perf_counter() - start) * 1e3)
        for key in ('skipped', 'bucket'):  # which branch each call took
          if key in metrics:
            result['variants'][v].setdefault(key, []).append(
                float(metrics[key]))
    if torch_steps is not None:
      for v in result['torch']:
        elapsed = torch_steps.time_ms(v, *torch_inputs)
        if rep:
          result['torch'][v]['ms'].append(elapsed)
  _summarise(result)
  return result


def _torch_check(torch_steps, torch_inputs):
  torch_steps.reset()
  loss, ce, ld = torch_steps.danil_terms(*torch_inputs)
  torch_steps.reset()
  return dict(loss=loss.item(), ce=ce.item(), distraction=ld.item())


def _summarise(result):
  groups = [result['variants']] + ([result['torch']] if 'torch' in result
                                   else [])
  for group in groups:
    for entry in group.values():
      entry['median_ms'] = statistics.median(entry['ms'])
    for entry in group.values():
      entry['x_plain'] = entry['median_ms'] / group['plain']['median_ms']
      entry['x_forward'] = entry['median_ms'] / group['forward']['median_ms']
  if 'torch' in result:
    for v, entry in result['torch'].items():
      entry['jax_over_torch'] = (result['variants'][v]['median_ms']
                                 / entry['median_ms'])


def format_table(results) -> str:
  header = (f"{'model':14s} {'variant':14s} {'ms':>9s} {'x plain':>8s} "
            f"{'x fwd':>6s} {'compile s':>9s} {'temp MiB':>9s} "
            f"{'torch ms':>9s} {'t x plain':>9s} {'jax/torch':>9s}")
  lines = [header, '-' * len(header)]
  for r in results:
    label = f"{r['model']} {r['size']}px b{r['batch']}"
    if r['dtype'] != 'float32':
      label += f" {r['dtype']}"
    lines.append(label)
    plain_temp = r['variants']['plain']['temp_bytes']
    for v, e in r['variants'].items():
      temp = e['temp_bytes']
      temp_s = f'{temp / 2**20:9.1f}' if temp is not None else f"{'-':>9s}"
      if temp is not None and plain_temp and v != 'plain':
        temp_s += f' ({temp / plain_temp:.2f}x)'
      t = r.get('torch', {}).get(v)
      torch_s = (f" {t['median_ms']:9.1f} {t['x_plain']:9.2f} "
                 f"{t['jax_over_torch']:9.2f}" if t else '')
      lines.append(f"{'':14s} {v:14s} {e['median_ms']:9.1f} "
                   f"{e['x_plain']:8.2f} {e['x_forward']:6.2f} "
                   f"{e['compile_s']:9.1f} {temp_s}{torch_s}")
    skips = {v: e['skipped'] for v, e in r['variants'].items()
             if 'skipped' in e}
    if skips:
      lines.append(f"{'':14s} skipped, per timed call: " + ', '.join(
          f"{v} {[int(x) for x in s]}" for v, s in skips.items()))
    buckets = {v: e['bucket'] for v, e in r['variants'].items()
               if 'bucket' in e}
    if buckets:
      lines.append(f"{'':14s} bucket (images double-backpropagated), per "
                   'timed call: ' + ', '.join(
                       f'{v} {[int(x) for x in b]}' for v, b in
                       buckets.items()))
  return '\n'.join(lines)


def _load() -> str:
  return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--models', default='small_resnet,resnet50',
                      help='comma-separated, from ' + ','.join(DEFAULTS))
  parser.add_argument('--size', type=int, default=None,
                      help='input size for every model (default per model)')
  parser.add_argument('--batch', type=int, default=None,
                      help='batch for every model (default per model)')
  parser.add_argument('--reps', type=int, default=5,
                      help='timed reps per variant, after one warm-up')
  parser.add_argument('--variants', default=','.join(JAX_VARIANTS),
                      help='comma-separated subset of ' + ','.join(
                          JAX_VARIANTS))
  parser.add_argument('--num_classes', type=int, default=7)
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16'),
                      help='model compute dtype (maps/norms stay float32)')
  parser.add_argument('--torch', action='store_true',
                      help='add the PyTorch reference (same weights, batch)')
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count(),
                      help='torch.set_num_threads (XLA uses all cores); '
                      'on a loaded machine OpenMP threads spin and collapse')
  parser.add_argument('--torch_device', default=None,
                      help="torch device (default: 'cuda' when JAX runs on "
                      "a GPU, else 'cpu'); bfloat16 runs under autocast")
  parser.add_argument('--stock', action='store_true',
                      help='also time DANIL with the stock lax conv/pool rules')
  parser.add_argument('--conv_rules', default='auto',
                      choices=ops.CONV_RULES,
                      help='the rules of every variant but danil_stock')
  parser.add_argument('--reduction', default='per_image',
                      choices=losses.REDUCTIONS,
                      help="the reading of every DANIL variant's Ld "
                      "(danil_2grad: 'per_image' only)")
  parser.add_argument('--json', default=None, help='write results here')
  args = parser.parse_args(argv)
  if args.torch_device is None:
    args.torch_device = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
  env = dict(jax=jax.__version__, backend=jax.default_backend(),
             device_kind=jax.devices()[0].device_kind,
             devices=[str(d) for d in jax.devices()], cpus=os.cpu_count(),
             load_before=_load())
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    env['torch'] = torch.__version__
    if args.torch_device.startswith('cuda'):
      env['gpu'] = torch.cuda.get_device_name()
  try:
    env['cpu'] = subprocess.run(
        ['sh', '-c', "lscpu | grep 'Model name' | cut -d: -f2"],
        capture_output=True, text=True, check=False).stdout.strip()
  except OSError:
    pass
  results = []
  for name in args.models.split(','):
    size, batch = DEFAULTS.get(name, (models.info(name).input_size, 8))
    size, batch = args.size or size, args.batch or batch
    print(f'{name} {size}x{size} batch {batch} ({args.dtype})', flush=True)
    results.append(run_model(name, size, batch, args))
  env['load_after'] = _load()
  print(f"\n{env['backend']} {env['device_kind']} "
        f"({env.get('cpu', '?')}, {env['cpus']} cores), "
        f"jax {env['jax']}" + (f", torch {env['torch']}" if args.torch else '')
        + f"; load avg before {env['load_before']}, after {env['load_after']}"
        f"; median of {args.reps} interleaved reps")
  print(format_table(results))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(env=env, args=vars(args), results=results), f, indent=1)


if __name__ == '__main__':
  main()
