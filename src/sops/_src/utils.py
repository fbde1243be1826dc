# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the sops modules: validation, collectives and tree tests."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def tree_add_scale(x: Any, a: jax.typing.ArrayLike, y: Any) -> Any:
  """``x + a y`` leaf by leaf, in each leaf's own dtype (a mixed-precision tree stays so)."""
  return jax.tree.map(lambda xi, yi: xi + jnp.asarray(a, xi.dtype) * yi, x, y)


def max_abs(tree: Any, axis_name: str | None = None) -> jax.Array:
  """The largest ``|x|`` over all leaves (0 for no elements), maxed over ``axis_name`` if set.

  An overflow-free scale for a tree: unlike the Euclidean norm it never squares the entries.
  """
  leaves = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree) if jnp.size(x)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  m = jnp.max(jnp.stack([x.astype(jnp.result_type(*leaves)) for x in leaves]))
  return m if axis_name is None else lax.pmax(m, axis_name)


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
  allow_inf: bool = False,
) -> None:
  """Raises ``ValueError`` naming ``name`` when a hyperparameter is out of range or not a number.

  Python/NumPy numbers and concrete arrays (``jnp.array(0.9)``, and the arrays
  ``optax.inject_hyperparams`` holds outside ``jit``) are checked elementwise; ``inf`` is
  rejected unless ``allow_inf``. Callables (schedules) and traced values are not checked: a traced
  value is only known inside ``jit``, where raising is impossible.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    arr = np.asarray(value)
    kind = "an integer" if integer else "a number"
    if integer and not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{name} must be {kind}, got an array of dtype {arr.dtype}.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
      raise ValueError(f"{name} must be {kind}, got an array of dtype {arr.dtype}.")
    for v in arr.reshape(-1).tolist():
      _check_number(name, v, low, high, low_inclusive, high_inclusive, allow_inf)
    return
  if integer:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"{name} must be an integer, got {value!r}.")
  if not _is_static_number(value):
    raise ValueError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
  _check_number(name, value, low, high, low_inclusive, high_inclusive, allow_inf)


def _check_number(name, value, low, high, low_inclusive, high_inclusive, allow_inf) -> None:
  v = float(value)
  if v != v:  # NaN
    raise ValueError(f"{name} must be a number, got {value!r}.")
  if not allow_inf and math.isinf(v):
    raise ValueError(f"{name} must be finite, got {value!r}.")
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


def check_grad_tree(
  updates: Any,
  reference: Any,
  *,
  what: str = "gradient",
  against: str = "parameter",
  context: str = "The gradient tree does not match the parameters given to init",
) -> None:
  """Raises ``ValueError`` naming the first path where ``updates`` differs from ``reference``.

  ``what`` and ``against`` name the two trees in the message (``"gradient"`` vs ``"parameter"``);
  ``context`` opens it. Paths are compared as ``jax.tree_util.keystr`` strings, then shapes.
  """
  got = jax.tree_util.tree_flatten_with_path(updates)[0]
  want = jax.tree_util.tree_flatten_with_path(reference)[0]
  for (pg, g), (pw, w) in zip(got, want, strict=False):
    kg, kw = jax.tree_util.keystr(pg), jax.tree_util.keystr(pw)
    if kg != kw:
      raise ValueError(f"{context}: first mismatch at {what} path {kg!r} vs {against} path {kw!r}.")
    if jnp.shape(g) != jnp.shape(w):
      raise ValueError(
        f"{context}: at path {kg!r} the {what} leaf has shape {jnp.shape(g)} but the {against} "
        f"leaf has shape {jnp.shape(w)}."
      )
  if len(got) != len(want):
    longer, which = (got, what) if len(got) > len(want) else (want, against)
    path = jax.tree_util.keystr(longer[min(len(got), len(want))][0])
    raise ValueError(
      f"{context}: {len(got)} {what} leaves vs {len(want)} {against} leaves; first unmatched "
      f"{which} path {path!r}."
    )


def is_float_leaf(x: Any) -> bool:
  """Whether ``x`` has an inexact (floating or complex) dtype; int, bool and float0 do not."""
  dtype = x.dtype if hasattr(x, "dtype") else jnp.result_type(x)
  return bool(jnp.issubdtype(dtype, jnp.inexact))


def float_leaves(tree: Any) -> Any:
  """``tree`` with every non-float leaf (int, bool, ``float0`` gradients) replaced by ``None``."""
  return jax.tree.map(lambda x: x if is_float_leaf(x) else None, tree)


def restore_leaves(filtered: Any, original: Any) -> Any:
  """Fills the ``None`` holes that :func:`float_leaves` made in ``filtered`` from ``original``."""
  return jax.tree.map(
    lambda f, o: o if f is None else f, filtered, original, is_leaf=lambda x: x is None
  )


def strong_types(tree: Any) -> Any:
  """``tree`` with weakly typed leaves made strongly typed (same dtype), so that the types of an
  optimizer state do not change between ``init`` and ``update`` (which would retrace ``jit``)."""

  def strong(x):
    if isinstance(x, jax.Array) and getattr(x, "weak_type", False):
      return jnp.asarray(x, x.dtype)
    return x

  return jax.tree.map(strong, tree)


def pass_through_non_float(tx: Any) -> Any:
  """Wraps an optax ``GradientTransformation`` so that int, bool and ``float0`` leaves are passed
  through unchanged (as ``optax.masked`` does for masked-out leaves) instead of reaching ``tx``.

  ``tx.init`` sees only the float leaves of the params; ``update`` returns the gradient of a
  non-float leaf unchanged (a ``float0`` gradient from ``jax.grad(..., allow_int=True)`` stays
  ``float0``).
  """

  def init_fn(params):
    return tx.init(float_leaves(params))

  def update_fn(updates, state, params=None, **extra):
    out, state = tx.update(
      float_leaves(updates), state, None if params is None else float_leaves(params), **extra
    )
    return restore_leaves(out, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def guarded_update(
  updates: Any,
  state: Any,
  reference: Any,
  step: Any,
  axis_name: str | None,
  statistics_dtype: Any = jnp.float32,
) -> tuple[Any, Any]:
  """The ``update`` of a blocked optimizer (Shampoo, SOAP) around its ``step``, with its guards.

  Int, bool and ``float0`` leaves pass through unchanged; the float gradients must match
  ``reference`` (``ValueError`` naming the path otherwise). A step whose gradient is not finite,
  or whose squared norm exceeds a quarter of the largest finite value of ``statistics_dtype`` or
  of an accumulator (a leaf's dtype promoted to at least float32), is skipped: zero update,
  ``state`` kept except ``state.info.nonfinite_skips``. The bound keeps the state finite: every
  entry of ``G G^T``, ``g^2`` or a rotated ``g^2`` is at most ``||g||^2``, and an exponential
  average of values below a quarter of the range stays below it. With ``axis_name`` every device
  skips if one does.

  There is no conditional around the step: ``step(leaves, ok)`` must return ``(out_leaves,
  new_state)`` with ``new_state`` equal to ``state`` where ``ok`` is False, whatever the gradient
  holds (its conditionals gated by ``ok``, its moving averages given weights ``1, 0`` by
  :func:`ema_or_keep`); this function zeroes the update and counts the skip. A conditional over
  the whole step cost ~5% of a transformer step on CPU (its results were copied), one that
  checked the computed state afterwards another ~3%, and selecting the element-wise state
  afterwards as much as the conditional.
  """
  original, updates = updates, float_leaves(updates)
  check_grad_tree(updates, reference)
  leaves, treedef = jax.tree.flatten(updates)
  acc = [jnp.promote_types(x.dtype, jnp.float32) for x in leaves]  # grafting.accumulator_dtype
  limit = min(float(jnp.finfo(d).max) for d in [statistics_dtype, *acc]) / 4
  squares = [jnp.sum(jnp.square(x.astype(d))) for x, d in zip(leaves, acc, strict=True)]
  norm2 = sum(squares, jnp.zeros((), jnp.float32))
  ok = norm2 <= limit  # False for NaN and inf
  if axis_name is not None:
    ok = lax.pmin(ok.astype(jnp.int32), axis_name) > 0
  out, new_state = step(leaves, ok)
  out = [jnp.where(ok, x, jnp.zeros_like(x)) for x in out]
  skips = new_state.info.nonfinite_skips
  info = new_state.info._replace(nonfinite_skips=jnp.where(ok, skips, safe_increment(skips)))
  return restore_leaves(jax.tree.unflatten(treedef, out), original), new_state._replace(info=info)


def ema_or_keep(
  ok: jax.Array,
  w_old: jax.typing.ArrayLike,
  w_new: jax.typing.ArrayLike,
  old: jax.Array,
  new_term: jax.Array,
) -> jax.Array:
  """``w_old * old + w_new * new_term``, or exactly ``old`` where ``ok`` (scalar) is False.

  The weights become ``1, 0`` and a non-finite ``new_term`` is replaced by 0 in the same
  element-wise pass, so a skipped step keeps its moving average without a separate select over
  the state (which XLA does not fuse with the update). Computed in ``old``'s dtype promoted with
  ``new_term``'s.
  """
  w_old, w_new = jnp.where(ok, w_old, 1.0), jnp.where(ok, w_new, 0.0)
  return w_old * old + w_new * jnp.where(ok, new_term, 0.0)


def keep_unless(ok: jax.Array, new: Any, old: Any) -> Any:
  """``new`` where ``ok`` (a scalar bool), else ``old``, leaf by leaf (small state: counters)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def scalar_loss(name: str, fn: Callable[[Any], Any]) -> Callable[[Any], jax.Array]:
  """``fn`` with its output checked at trace time: a scalar float loss, not ``(loss, aux)``."""

  def checked(p):
    out = fn(p)
    if isinstance(out, numbers.Real) and not isinstance(out, bool):
      out = jnp.asarray(out, jnp.float32)  # a constant loss, e.g. of an empty tree
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
      raise ValueError(
        f"{name} must return a scalar loss, got a {type(out).__name__}; (loss, aux) pairs "
        f"(has_aux) are not supported: pass lambda params: {name}(params)[0]."
      )
    if jnp.shape(out) != ():
      raise ValueError(
        f"{name} must return a scalar loss, got shape {jnp.shape(out)}: reduce it (jnp.mean)."
      )
    if not jnp.issubdtype(out.dtype, jnp.floating):
      raise ValueError(f"{name} must return a float loss, got dtype {out.dtype}.")
    return out

  return checked


def missing_argument(what: str, call: str) -> TypeError:
  """The ``TypeError`` for a missing extra argument of Newton-CG's ``update``: what, and how.

  The message also names the usual cause in Flax: Linen's ``TrainState.apply_gradients`` calls
  ``tx.update`` without extra arguments (it forwards its keywords to ``replace``).
  """
  return TypeError(
    f"scale_by_newton_cg.update needs {what}: call {call}. Flax Linen's "
    "TrainState.apply_gradients(grads=..., value_fn=...) does not pass extra arguments to the "
    "optimizer: call state.tx.update yourself (the recipe is in docs/newton_cg.md, 'Flax Linen "
    "TrainState', and examples/flax_linen.py); nnx.Optimizer.update(model, grads, value_fn=...) "
    "passes them."
  )
