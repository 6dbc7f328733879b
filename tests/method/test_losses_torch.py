"""danil_loss(reduction='batch') against the batched PyTorch port of Algorithm 1.

The torch side is written as a port of the paper would be, on the whole
batch at once: `F.cross_entropy` mean-reduced, the two maps from
`torch.autograd.grad(loss, x, create_graph=True)`, `(A_plus -
A_minus).norm() ** 2` over the whole batch tensor, and `backward()` of
CE + lam * Ld. The same torchvision resnet50 (random init, train-mode
BatchNorm coupling the samples) goes through our converter; loss, Ld and
every parameter gradient are compared. Nothing is compared with our own output.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='the PyTorch reference needs torch (pip install '
    '"danil_jax[torch]")')
torchvision = pytest.importorskip('torchvision')
F = torch.nn.functional

from danil_jax import models  # pylint: disable=g-import-not-at-top
from danil_jax.method import losses  # pylint: disable=g-import-not-at-top
from danil_jax.models import weights  # pylint: disable=g-import-not-at-top

SIZE, BATCH, CLASSES, EPS = 64, 4, 4, 1e-4


def _condition(model, seed):
  """Random BN affine parameters with a positive bias offset (most ReLUs
  active) and small last-BN scales per residual branch: a freshly initialised
  deep BN-ReLU network is otherwise chaotic enough that float32 rounding
  alone moves its double-backprop gradients by ~1e-3
  (tests/models/test_weights.py measures this)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, m in model.named_modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=gen)
        m.bias.add_(2.0 * m.weight)
        if name.endswith('bn3'):
          m.weight.mul_(0.2)


def torch_port_step(model, x, labels, lam):
  """One DANIL step as the batched PyTorch port writes it; returns the loss,
  Ld and {name: grad}."""
  model.zero_grad()
  x = x.clone().requires_grad_(True)
  logits = model(x)
  ce = F.cross_entropy(logits, labels)
  pred = logits.argmax(1)
  if (pred != labels).any():
    a_plus, = torch.autograd.grad(ce, x, create_graph=True)
    a_minus, = torch.autograd.grad(F.cross_entropy(logits, pred), x,
                                   create_graph=True)
    ld = 1.0 / ((a_plus - a_minus).norm() ** 2 + EPS)
  else:
    ld = torch.zeros(())
  loss = ce + lam * ld
  loss.backward()
  grads = {n: p.grad.numpy().copy()
           for n, p in model.named_parameters()}
  return float(loss.detach()), float(ld.detach()), grads


def _torch_to_nhwc(t):
  return np.ascontiguousarray(t.numpy().transpose(0, 2, 3, 1))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope='module')
def case():
  torch.manual_seed(0)
  tmodel = torchvision.models.resnet50(weights=None, num_classes=CLASSES)
  _condition(tmodel, seed=1)
  tmodel.train()
  gen = torch.Generator().manual_seed(2)
  x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
  with torch.no_grad():
    pred = tmodel(x).argmax(1)
  # Samples 1 and 3 misclassified, 0 and 2 correct.
  labels = (pred + torch.tensor([0, 1, 0, 2])) % CLASSES
  state = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
  variables, _ = weights.convert_state_dict('resnet50', state)

  # lam that makes the Ld gradient as large as the CE one, so neither term's
  # error can hide behind the other.
  _, _, g_ce = torch_port_step(tmodel, x, labels, 0.0)
  _, ld, g_both = torch_port_step(tmodel, x, labels, 1.0)
  assert ld > 0
  norm = lambda g: float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2)
                                     for v in g.values())))
  lam = norm(g_ce) / norm({n: g_both[n] - g_ce[n] for n in g_ce})
  return tmodel, variables, x, labels, lam


def _ours(variables, x, labels, lam, reduction):
  model = models.create('resnet50', CLASSES)

  def loss_fn(params, batch_stats, x, labels):
    def logits_fn(x_):
      return model.apply({'params': params, 'batch_stats': batch_stats}, x_,
                         train=True, mutable=['batch_stats'])
    loss, aux = losses.danil_loss(logits_fn, x, labels, lam=lam, eps=EPS,
                                  has_aux=True, reduction=reduction)
    return loss, aux['distraction']

  args = (variables['params'], variables['batch_stats'],
          jnp.asarray(_torch_to_nhwc(x)), jnp.asarray(labels.numpy()))
  # LLVM optimisations off: the graph runs once, its compile is the cost.
  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(
      *args).compile(compiler_options={'xla_backend_optimization_level': 0})
  (loss, ld), grads = step(*args)
  return float(loss), float(ld), weights.flatten(jax.device_get(grads))


def test_batch_reading_equals_the_pytorch_port(case):
  tmodel, variables, x, labels, lam = case
  want_loss, want_ld, torch_grads = torch_port_step(tmodel, x, labels, lam)
  got_loss, got_ld, got = _ours(variables, x, labels, lam, 'batch')
  want = {}
  for name, g in torch_grads.items():
    key, value = weights._flax_leaf('resnet50', name, g)  # pylint: disable=protected-access
    want[key[len('params/'):]] = value
  assert set(got) == set(want)
  np.testing.assert_allclose(got_ld, want_ld, rtol=1e-4)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  flat_want = np.concatenate([want[k].ravel() for k in sorted(want)])
  flat_got = np.concatenate([got[k].ravel() for k in sorted(want)])
  total = _rel(flat_got, flat_want)
  # Each leaf against its own norm, plus a floor at the whole gradient's
  # scale: some leaves' gradients are ~0 in exact arithmetic (a BN bias whose
  # output feeds another BN through near-linear ReLUs) and hold only
  # float32 rounding, which the two frameworks round differently.
  floor = 1e-5 * np.linalg.norm(flat_want)
  excess = {k: (np.linalg.norm(got[k] - want[k])
                / (1e-2 * np.linalg.norm(want[k]) + floor)) for k in want}
  worst = max(excess, key=excess.get)
  print(f'lam {lam:.3g} Ld {want_ld:.4g} total rel {total:.2e}; worst leaf '
        f'{worst}: rel {_rel(got[worst], want[worst]):.2e}, |grad| '
        f'{np.linalg.norm(want[worst]):.2e} of {np.linalg.norm(flat_want):.2e}')
  assert total <= 1e-3
  assert excess[worst] <= 1.0, (worst, excess[worst])


def test_per_image_reading_is_not_the_port(case):
  """Guards the test above: the other reading fails the same comparison."""
  tmodel, variables, x, labels, lam = case
  _, want_ld, _ = torch_port_step(tmodel, x, labels, lam)
  _, got_ld, _ = _ours(variables, x, labels, lam, 'per_image')
  assert abs(got_ld - want_ld) > 0.5 * want_ld
