"""The training losses a run can use, by `config.method`: one entry each.

A method is its loss, written against a training-mode forward
`logits_fn(images) -> (logits, model updates)`, and the keys of its config
section (`config.<name>.*`) that the loss takes. A new method is an entry
here, its section in configs/default.py and its test; the trainer, the
config checks and the comparisons read this table.

Every loss returns (loss, aux) with aux holding the per-batch `ce` (L+c,
Eq. 3), `distraction` (Ld, Eq. 5; 0 for a method without it),
`misclassified` (1 per misclassified image) and `model_aux` (the forward's
BatchNorm updates).
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from danil_jax.method import losses


@dataclasses.dataclass(frozen=True)
class Method:
  """A loss the trainer runs, with the config keys it reads."""
  loss: Callable  # (logits_fn, images, labels, **options) -> (loss, aux)
  # Its config section (config.<section>.*), '' when it has none.
  section: str
  # The section's keys `loss` takes as keyword arguments.
  options: tuple[str, ...] = ()
  # Whether the loss has DANIL's term: the runs log its share of the
  # gradient, and the map distance is worth reading.
  has_distraction_term: bool = False


def _plain(loss_of_logits):
  """A loss of the logits as a Method's loss: one forward, Ld = 0."""

  def loss(logits_fn, images, labels, **options):
    logits, model_updates = logits_fn(images)
    misclassified = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
    aux = dict(ce=losses.cross_entropy_loss(logits, labels),
               distraction=jnp.zeros((), jnp.float32),
               misclassified=misclassified, logits=logits,
               model_aux=model_updates)
    return loss_of_logits(logits, labels, **options), aux

  return loss


def _danil(logits_fn, images, labels, *, lam, eps, reduction):
  return losses.danil_loss(logits_fn, images, labels, lam=lam, eps=eps,
                           has_aux=True, reduction=reduction)


METHODS = {
    # The paper's Base: cross-entropy (Eq. 3).
    'base': Method(_plain(losses.cross_entropy_loss), section=''),
    # Online hard example mining, the paper's other baseline.
    'ohem': Method(_plain(losses.ohem_loss), section='ohem',
                   options=('keep_ratio',)),
    # DANIL: L+c + lam * Ld (Eq. 6).
    'danil': Method(_danil, section='danil',
                    options=('lam', 'eps', 'reduction'),
                    has_distraction_term=True),
}


def names() -> tuple[str, ...]:
  return tuple(METHODS)


def sections() -> tuple[str, ...]:
  """The config sections that belong to one method each."""
  return tuple(m.section for m in METHODS.values() if m.section)


def options(name: str, config) -> dict:
  """The keyword arguments of method `name`'s loss, from `config`."""
  method = METHODS[name]
  return {key: config[method.section][key] for key in method.options}
