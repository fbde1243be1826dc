# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Levenberg-Marquardt adaptive damping of Newton-CG, on overflow-free scaled quantities.

The rule compares the loss change of a full step ``p`` with the decrease that the undamped
quadratic model predicts, ``m(p) = g.p + p.B.p / 2``, and raises or lowers the Tikhonov damping
``lambda`` by a constant factor (Martens 2010, Section 4.1; Martens & Sutskever 2012). In float32
the products ``g.p`` and ``p.B.p`` of a loss scaled by ``1e20`` overflow although every input is
finite, so every quantity here is divided by ``sg * sp``, with ``sg = max|g|`` and ``sp = max|p|``
(:func:`unit_scaled`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sops._src import utils

_F32 = jnp.float32


def unit_scaled(tree: Any, axis_name: str | None) -> tuple[jax.Array, Any]:
  """``(s, tree / s)`` with ``s = max|tree|`` (1 when zero or not finite): a unit-scaled copy."""
  s = utils.max_abs(tree, axis_name).astype(_F32)
  s = jnp.where((s > 0) & jnp.isfinite(s), s, 1)
  return s, jax.tree.map(lambda x: x / s.astype(x.dtype), tree)


def levenberg_marquardt(
  *,
  gph: jax.Array,
  curvature_term: jax.Array,
  change: jax.Array,
  resolution: jax.Array,
  damping: jax.typing.ArrayLike,
  finite: jax.Array,
  min_damping: jax.typing.ArrayLike,
  max_damping: jax.typing.ArrayLike,
  adjustment: jax.typing.ArrayLike,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """One damping update from scaled quantities (all divided by ``sg * sp``).

  Args:
    gph: ``g.p``; curvature_term: ``p.B.p`` (undamped); change: ``f(x + p) - f(x)``; resolution:
      ``100 eps |f|``, the smallest decrease the loss's dtype can show.
    damping: the damping used for this step.
    finite: whether everything so far was finite.
    min_damping: lower clip of the new damping.
    max_damping: upper clip of the new damping.
    adjustment: factor by which the damping grows (ratio < 1/4) or shrinks (ratio > 3/4).

  Returns:
    ``(new_damping, reduction_ratio, rejected, stalled, finite)``: the ratio is 0 when the model
    decrease is not measurable (then the damping is kept and the step flagged ``stalled``); a
    measurable step that does not lower the loss is ``rejected`` (Levenberg-Marquardt).
  """
  lam = jnp.asarray(damping, _F32)
  model = gph + 0.5 * curvature_term
  finite = finite & jnp.isfinite(model)
  measurable = model < -resolution
  ratio = change / jnp.where(measurable, model, -1)
  ratio = jnp.where(jnp.isfinite(ratio), ratio, -jnp.inf)
  adj = jnp.asarray(adjustment, _F32)
  proposed = jnp.where(ratio < 0.25, lam * adj, jnp.where(ratio > 0.75, lam / adj, lam))
  proposed = jnp.clip(proposed, jnp.asarray(min_damping, _F32), jnp.asarray(max_damping, _F32))
  new_lam = jnp.where(measurable & finite, proposed, lam).astype(_F32)
  rho = jnp.where(measurable, jnp.maximum(ratio, jnp.finfo(_F32).min), 0).astype(_F32)
  rejected = finite & measurable & ~(ratio > 0)
  stalled = finite & ~measurable
  return new_lam, rho, rejected, stalled, finite
