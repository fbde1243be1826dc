# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Diagonal "graft" optimizers whose per-block step norms Shampoo borrows.

Layer-wise grafting (Agarwal, Anil, Hazan, Koren, Zhang, "Disentangling Adaptive Gradient Methods
from Learning Rates", arXiv:2002.11803) takes the *direction* of one optimizer and the *norm* of
another. Shampoo uses its own direction with the norm of one of these graft directions:

* ``"adam"``: ``g / (sqrt(nu / (1 - b2^t)) + eps)``, ``nu`` an EMA of ``g^2`` (Adam without its
  first moment: momentum is applied after grafting, or before with Shampoo's
  ``precondition_momentum``, when ``g`` is the momentum);
* ``"rmsprop"``: ``g / (sqrt(nu) + eps)``, same EMA, no bias correction;
* ``"adagrad"``: ``g / (sqrt(sum g^2) + eps)``;
* ``"sgd"`` and ``"none"``: ``g`` (``"none"`` also means Shampoo's direction is not rescaled).

With ``b2 == 1`` the EMAs become running sums (AdaGrad), as for Shampoo's statistics.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sops._src import utils

GRAFTS = ("adam", "rmsprop", "adagrad", "sgd", "none")


def _uses_nu(kind: str) -> bool:
  return kind in ("adam", "rmsprop", "adagrad")


def ema_weights(b2: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
  """``(w_old, w_new)`` of an EMA with decay ``b2``; ``b2 == 1`` gives a running sum ``(1, 1)``."""
  b2 = jnp.asarray(b2)
  return b2, jnp.where(b2 == 1.0, jnp.ones_like(b2), 1.0 - b2)


def init_graft(kind: str, params: Any) -> Any:
  """The graft state: zeros like ``params`` (at least float32), or ``()`` when none is needed."""
  if not _uses_nu(kind):
    return ()
  return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), accumulator_dtype(p)), params)


def accumulator_dtype(x: Any) -> jnp.dtype:
  """The dtype of optimizer accumulators for a parameter: its dtype promoted to at least float32."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def graft_direction(
  kind: str,
  grads: Any,
  nu: Any,
  count: jax.Array,
  b2: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  active: jax.typing.ArrayLike = True,
  numerators: Any = None,
) -> tuple[Any, Any]:
  """Returns ``(direction, new_nu)`` of the graft optimizer ``kind`` (``nu`` itself where
  ``active`` is False: a skipped step).

  Args:
    kind: one of :data:`GRAFTS`.
    grads: gradient tree (leaves in the accumulator dtype).
    nu: graft state from :func:`init_graft` or a previous call.
    count: int32 step number starting at 1 (for Adam's bias correction).
    b2: second-moment decay.
    eps: added to the root of the second moment.
    active: scalar bool; False keeps ``nu`` exactly (the direction is then not used).
    numerators: the tree divided by the second-moment root (``None``: ``grads``), e.g. Adam's
      bias-corrected first moment; ``nu`` is always updated from ``grads``.

  Returns:
    The graft direction (same tree as ``grads``) and the new graft state.
  """
  numerators = grads if numerators is None else numerators
  if not _uses_nu(kind):
    return numerators, nu
  w_old, w_new = ema_weights(b2)
  if kind == "adagrad":
    w_old, w_new = 1.0, 1.0
  new_nu = jax.tree.map(
    lambda v, g: utils.ema_or_keep(active, w_old, w_new, v, jnp.square(g)).astype(v.dtype),
    nu,
    grads,
  )
  if kind == "adam":
    b2a = jnp.asarray(b2)
    corr = jnp.where(b2a < 1.0, 1.0 - b2a**count, 1.0)
  else:
    corr = 1.0
  direction = jax.tree.map(
    lambda g, v: (g / (jnp.sqrt(v / corr) + eps)).astype(g.dtype), numerators, new_nu
  )
  return direction, new_nu


def rescale_to_graft(yb: jax.Array, graft_blocks: jax.Array) -> jax.Array:
  """Rescales every block of Shampoo's direction to the norm of the graft's direction there."""
  axes = tuple(range(1, yb.ndim))
  gnorm = jnp.sqrt(jnp.sum(jnp.square(graft_blocks), axis=axes, keepdims=True))
  snorm = jnp.sqrt(jnp.sum(jnp.square(yb), axis=axes, keepdims=True))
  return yb * (gnorm / jnp.where(snorm > 0, snorm, 1.0))


def momentum(mom_leaves, directions, count, b1, nesterov, ok):
  """EMA of ``directions`` with Adam-style bias correction (Nesterov optional); returns
  ``(output, new_momentum)``, the momentum kept exactly where ``ok`` is False (a skipped step).
  Shampoo applies it after grafting, or before with ``precondition_momentum``; SOAP takes Adam's
  first moment from it (``optax.scale_by_adam``'s, NAdam's with ``nesterov``)."""
  b1 = jnp.asarray(b1)
  full = [
    utils.ema_or_keep(ok, b1, 1.0 - b1, m, d) for m, d in zip(mom_leaves, directions, strict=True)
  ]
  if nesterov:
    out = [
      b1 * m / (1.0 - b1 ** (count + 1)) + (1.0 - b1) * d / (1.0 - b1**count)
      for m, d in zip(full, directions, strict=True)
    ]
  else:
    out = [m / (1.0 - b1**count) for m in full]
  return out, [f.astype(m.dtype) for f, m in zip(full, mom_leaves, strict=True)]
