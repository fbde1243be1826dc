# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the sops modules: validation, collectives and tree tests."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def pmean_if(x: Any, axis_name: str | None) -> Any:
  """Averages ``x`` (a pytree) over ``axis_name``; the identity when it is ``None``."""
  if axis_name is None:
    return x
  return jax.tree.map(lambda v: lax.pmean(v, axis_name), x)


def psum_if(x: Any, axis_name: str | None) -> Any:
  """Sums ``x`` (a pytree) over ``axis_name``; the identity when it is ``None``."""
  if axis_name is None:
    return x
  return jax.tree.map(lambda v: lax.psum(v, axis_name), x)


def tree_all_finite(tree: Any) -> jax.Array:
  """Returns a scalar bool: whether every leaf of ``tree`` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.stack(leaves).all()


def safe_increment(count: jax.Array) -> jax.Array:
  """Increments an int32 counter, saturating at the int32 maximum instead of wrapping."""
  max_int = jnp.iinfo(count.dtype).max
  return jnp.where(count < max_int, count + 1, max_int)


def _is_static_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_scalar(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
  integer: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` when a static hyperparameter is out of range.

  Traced values and callables (schedules, ``inject_hyperparams`` arrays) are not checked:
  only Python/NumPy numbers are, since only they are known at construction.
  """
  if callable(value):
    return
  if integer:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"{name} must be an integer, got {value!r}.")
  if not _is_static_number(value):
    return
  v = float(value)
  if v != v:  # NaN
    raise ValueError(f"{name} must be a number, got {value!r}.")
  if low is not None and (v < low or (v == low and not low_inclusive)):
    op = ">=" if low_inclusive else ">"
    raise ValueError(f"{name} must be {op} {low}, got {value!r}.")
  if high is not None and (v > high or (v == high and not high_inclusive)):
    op = "<=" if high_inclusive else "<"
    raise ValueError(f"{name} must be {op} {high}, got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  """Raises ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices!r}, got {value!r}.")
