"""The DANIL step in PyTorch: what users would otherwise run.

  python benchmarks/torch_reference.py --model=resnet50 --size=224 --batch=8

One shared forward of the torchvision/timm model, A+ - A- from
`torch.autograd.grad(ce_difference, x, create_graph=True)` (Eq. 2-4: the
log-sum-exp cancels in L+c - L-c, leaving z_{y-} - z_{y+}), Ld (Eq. 5), the
total loss (Eq. 6), a backward to the parameters only and an SGD step. The
model is random-initialised by torch; `step_cost.py --torch` converts that
very state_dict with `danil_jax.models.weights` so both frameworks run identical
weights on the same batch, and prints their losses side by side as a check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# Runs as `python benchmarks/torch_reference.py` from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Our arch name -> the torch model it mirrors (random init, no download).
BUILDERS = {
    'resnet50': lambda n: __import__('torchvision').models.resnet50(
        weights=None, num_classes=n),
    'vgg11': lambda n: __import__('torchvision').models.vgg11(
        weights=None, num_classes=n),
    'inception_v4': lambda n: __import__('timm').create_model(
        'inception_v4', num_classes=n),
    'efficientnet_b0': lambda n: __import__('timm').create_model(
        'efficientnet_b0', num_classes=n),
}


def build(arch: str, num_classes: int, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  return BUILDERS[arch](num_classes).train()


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  # Copies: `.numpy()` shares the tensor's memory, `jax.device_put` of it
  # can too (zero-copy on CPU), and the torch steps update BN statistics and
  # parameters in place; a shared buffer would change the JAX weights.
  return {k: v.detach().cpu().numpy().copy()
          for k, v in model.state_dict().items()}


class Steps:
  """Forward, plain step and DANIL step of one torch model (train mode).

  Every step runs from the same parameters: the optimiser state is reset
  and the parameters restored from a snapshot outside the timed region by
  `reset()`, mirroring the JAX side, which starts each call from a copy of
  one train state.
  """

  def __init__(self, model, *, lr=0.01, momentum=0.9, lam=1e-5, eps=1e-4,
               device='cpu', autocast_dtype=None):
    self.device = torch.device(device)
    self.model = model.to(self.device)
    # bf16 compute under autocast, like `config.dtype`: the parameters, the
    # input gradient and its norm stay float32.
    self.autocast_dtype = autocast_dtype
    self.params = [p for p in model.parameters() if p.requires_grad]
    self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
    self.lam, self.eps = lam, eps
    self._snapshot = {k: v.clone() for k, v in model.state_dict().items()}

  def reset(self):
    self.model.load_state_dict(self._snapshot)
    self.opt.state.clear()

  def synchronize(self):
    if self.device.type == 'cuda':
      torch.cuda.synchronize(self.device)

  def _autocast(self):
    return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                          enabled=self.autocast_dtype is not None)

  def inputs(self, images_nhwc, labels):
    """(x NCHW float, y long) on this device, from numpy-like NHWC arrays."""
    x = torch.from_numpy(np.array(images_nhwc)).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.array(labels)).long()
    return x.contiguous().to(self.device), y.to(self.device)

  def time_ms(self, name, x, y):
    """ms of one call of step `name` from the snapshot, device synced."""
    self.reset()
    self.synchronize()
    start = time.perf_counter()
    getattr(self, name)(x, y)
    self.synchronize()
    return (time.perf_counter() - start) * 1e3

  def forward(self, x, y):
    del y
    with self._autocast():
      return self.model(x)

  def plain(self, x, y):
    with self._autocast():
      logits = self.model(x)
    loss = F.cross_entropy(logits.float(), y)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss

  def danil_terms(self, x, y):
    """(loss, ce, Ld) with the graph kept for the parameter backward."""
    x = x.detach().requires_grad_(True)
    with self._autocast():
      logits = self.model(x).float()  # the one shared forward
    ce = F.cross_entropy(logits, y)
    pred = logits.argmax(1).detach()
    misclassified = (pred != y).to(logits.dtype)
    # sum_i (z_{i,y-} - z_{i,y+}) = L+c - L-c, summed over the batch.
    ce_difference = (logits.gather(1, pred[:, None])
                     - logits.gather(1, y[:, None])).sum()
    (maps,) = torch.autograd.grad(ce_difference, x, create_graph=True)
    distance = maps.float().pow(2).sum(dim=(1, 2, 3))
    ld = (misclassified / (distance + self.eps)).mean()
    return ce + self.lam * ld, ce, ld

  def danil(self, x, y):
    loss, _, _ = self.danil_terms(x, y)
    self.opt.zero_grad(set_to_none=True)
    # Parameters only: no gradient w.r.t. the input in the second pass.
    loss.backward(inputs=self.params)
    self.opt.step()
    return loss


def time_steps(steps: Steps, x, y, names, reps: int) -> dict[str, list]:
  """Interleaved timings (ms) of the named methods, after one warm-up each."""
  times = {n: [] for n in names}
  for rep in range(reps + 1):
    for name in names:
      elapsed = steps.time_ms(name, x, y)
      if rep:  # rep 0 warms up the allocator and autograd caches
        times[name].append(elapsed)
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet50', choices=sorted(BUILDERS))
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--num_classes', type=int, default=7)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
  parser.add_argument('--bf16', action='store_true',
                      help='bf16 autocast (parameters stay float32)')
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count())
  steps = Steps(build(args.model, args.num_classes), device=args.device,
                autocast_dtype=torch.bfloat16 if args.bf16 else None)
  gen = torch.Generator().manual_seed(1)
  x = torch.randn(args.batch, 3, args.size, args.size,
                  generator=gen).to(args.device)
  y = torch.randint(0, args.num_classes, (args.batch,),
                    generator=gen).to(args.device)
  times = time_steps(steps, x, y, ('forward', 'plain', 'danil'), args.reps)
  base = statistics.median(times['plain'])
  for name, ts in times.items():
    ms = statistics.median(ts)
    print(f'{name:8s} {ms:9.1f} ms  x{ms / base:.2f} plain')


if __name__ == '__main__':
  main()
