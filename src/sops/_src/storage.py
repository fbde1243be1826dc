# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Compact storage of Shampoo's state: packed symmetric factors, low-precision or quantised.

Statistics and inverse roots are symmetric ``(factors, n, n)`` stacks. :class:`StateStorage`
chooses how the state keeps them between steps: the upper triangle only (``symmetric``), a
narrower float dtype, or block-quantised integers (``int8``/``int16``: every row of the strict
upper triangle scaled to its largest magnitude, the diagonal kept exactly in float32, as in the
seed paper's JAX code). A step decodes the stacks to full float matrices, works as before and
encodes them again, so the options change what is stored, never the algorithm. Encoding a decoded
value gives it back bit for bit, so roots kept between root computations do not drift.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Quantized(NamedTuple):
  """A stack of symmetric matrices stored as integers: ``x[i, j] = values[i, j] * scales[i]``
  for ``i < j`` (and symmetric), ``x[i, i] = diagonal[i]``."""

  values: jax.Array  # int8/int16, zero diagonal: (factors, n (n + 1) / 2) packed or (factors, n, n)
  diagonal: jax.Array  # (factors, n) float32 (float64 for float64 statistics)
  scales: jax.Array  # (factors, n), same dtype: row scales (powers of two) of the strict upper part


def _dtype(name: str, value: Any) -> jnp.dtype | None:
  if value is None:
    return None
  try:
    dt = jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"{name} must be a dtype or None, got {value!r}.") from e
  ok = jnp.issubdtype(dt, jnp.floating) or dt in (jnp.int8, jnp.int16)
  if not ok or (name == "momentum" and not jnp.issubdtype(dt, jnp.floating)):
    allowed = "a floating dtype" + ("" if name == "momentum" else ", 'int8' or 'int16'")
    raise ValueError(f"{name} must be None or {allowed}, got {value!r}.")
  return dt


def compute_dtype(statistics_dtype: Any) -> jnp.dtype:
  """The validated floating dtype that statistics and roots are computed in."""
  if (
    isinstance(statistics_dtype, (jax.Array, np.ndarray))
    or callable(statistics_dtype)
    and (not isinstance(statistics_dtype, type))
  ):
    raise ValueError(
      f"statistics_dtype must be a dtype (with optax.inject_hyperparams pass it as a string or "
      f"in static_args), got {statistics_dtype!r}."
    )
  try:
    sdt = jnp.dtype(statistics_dtype)
  except TypeError as e:
    raise ValueError(f"statistics_dtype must be a floating dtype, got {statistics_dtype!r}.") from e
  if not jnp.issubdtype(sdt, jnp.floating):
    raise ValueError(f"statistics_dtype must be a floating dtype, got {statistics_dtype!r}.")
  return sdt


@dataclasses.dataclass(frozen=True)
class StateStorage:
  """How :func:`sops.shampoo` stores its state between steps (memory options).

  Attributes:
    symmetric: keep only the upper triangle of every statistic and inverse root (``n (n + 1) /
      2`` entries instead of ``n^2``; lossless).
    statistics: storage dtype of the statistics: ``None`` (the compute dtype,
      ``statistics_dtype``), a float dtype, or ``"int16"``/``"int8"`` (block-quantised, diagonal
      exact). The running sums are updated in float32 and re-quantised every step, so changes
      below a quantisation step are rounded away: ``int8`` is too coarse for statistics.
    preconditioners: storage dtype of the inverse roots, as for ``statistics`` (roots are only
      read between root computations, so coarse storage costs no drift). For :func:`sops.soap`:
      of its eigenbases, a float dtype (they are not symmetric and are never packed).
    momentum: dtype of the momentum (``None``: the parameters' dtype promoted to float32), as
      ``mu_dtype`` in ``optax.adam``; SOAP's first moment.

  Examples:
    >>> import sops
    >>> storage = sops.StateStorage(symmetric=True, statistics="int16", preconditioners="int8")
    >>> tx = sops.shampoo(3e-3, storage=storage)

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018 (its JAX code's ``best_effort_memory_usage_reduction`` quantises
    statistics and preconditioners to int16 with the diagonal kept exact).
  """

  symmetric: bool = False
  statistics: Any = None
  preconditioners: Any = None
  momentum: Any = None

  def __post_init__(self):
    if not isinstance(self.symmetric, bool):
      raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}.")
    for name in ("statistics", "preconditioners", "momentum"):
      object.__setattr__(self, name, _dtype(name, getattr(self, name)))


COMPACT = StateStorage(symmetric=True, statistics="int16", preconditioners="int8")
# SOAP's "preconditioners" are its eigenbases: orthogonal, not symmetric, so float storage only.
SOAP_COMPACT = StateStorage(symmetric=True, statistics="int16", preconditioners="bfloat16")


def as_storage(storage: Any, soap: bool = False) -> StateStorage:
  """``None`` (full float storage), ``"compact"`` or a :class:`StateStorage`; for SOAP
  (``soap=True``) the eigenbases take ``preconditioners``, a float dtype."""
  if storage is None:
    return StateStorage()
  if isinstance(storage, str) and storage == "compact":
    return SOAP_COMPACT if soap else COMPACT
  if not isinstance(storage, StateStorage):
    raise ValueError(f"storage must be None, 'compact' or a sops.StateStorage, got {storage!r}.")
  dt = storage.preconditioners
  if soap and dt is not None and not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(
      f"SOAP stores its eigenbases in StateStorage.preconditioners: they are not symmetric, so it "
      f"must be a float dtype, got {dt}."
    )
  return storage


def _halves(n: int) -> tuple[int, np.ndarray]:
  k = n // 2
  return k, np.arange(k + 1)[:, None] > np.arange(k)[None, :]  # strictly lower in (k + 1, k)


def pack(x: jax.Array) -> jax.Array:
  """The ``n (n + 1) / 2`` entries of an upper triangle of symmetric ``(..., n, n)`` matrices.

  Even ``n = 2k`` with slices only (a rectangular full packed layout, no gather): with ``x =
  [[P, Q^T], [Q, R]]`` the lower triangle of ``P`` and the upper triangle of ``R`` share one
  ``(k + 1, k)`` array, followed by ``Q``. Odd ``n``: the upper triangle, row by row.
  """
  n = x.shape[-1]
  if n % 2:
    rows, cols = np.triu_indices(n)
    return x[..., rows, cols]
  k, lower = _halves(n)
  zero_row = jnp.zeros((*x.shape[:-2], 1, k), x.dtype)
  p_low = jnp.concatenate([zero_row, x[..., :k, :k]], axis=-2)
  r_up = jnp.concatenate([x[..., k:, k:], zero_row], axis=-2)
  rfp = jnp.where(lower, p_low, r_up).reshape((*x.shape[:-2], k * (k + 1)))
  return jnp.concatenate([rfp, x[..., k:, :k].reshape((*x.shape[:-2], k * k))], axis=-1)


def unpack(v: jax.Array, n: int) -> jax.Array:
  """The symmetric ``(..., n, n)`` matrices of :func:`pack`'s output."""
  if n % 2:
    rows, cols = np.triu_indices(n)
    index = np.zeros((n, n), np.int32)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows))
    return v[..., index]
  k, lower = _halves(n)
  rfp = v[..., : k * (k + 1)].reshape((*v.shape[:-1], k + 1, k))
  q = v[..., k * (k + 1) :].reshape((*v.shape[:-1], k, k))
  low_p, up_r = rfp[..., 1:, :], rfp[..., :k, :]
  tri = np.arange(k)[:, None] >= np.arange(k)[None, :]
  p = jnp.where(tri, low_p, jnp.swapaxes(low_p, -1, -2))
  r = jnp.where(tri.T, up_r, jnp.swapaxes(up_r, -1, -2))
  top = jnp.concatenate([p, jnp.swapaxes(q, -1, -2)], axis=-1)
  return jnp.concatenate([top, jnp.concatenate([q, r], axis=-1)], axis=-2)


def _quantize(x: jax.Array, dtype: jnp.dtype, symmetric: bool) -> Quantized:
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # diagonal and scales: >= float32
  upper = jnp.triu(0.5 * (x + jnp.swapaxes(x, -1, -2)), 1)
  qmax = float(jnp.iinfo(dtype).max)
  # Power-of-two scales (the smallest with |x| / scale <= qmax): x / scale and q * scale are
  # exact, so re-encoding a decoded value gives it back bit for bit. It costs under one bit.
  mant, exp = jnp.frexp(jnp.max(jnp.abs(upper), axis=-1) / qmax)
  scales = jnp.ldexp(jnp.ones_like(mant), jnp.where(mant == 0.5, exp - 1, exp))
  q = jnp.round(upper / scales[..., None])
  q = jnp.clip(q, -qmax, qmax).astype(dtype)
  q = q + jnp.swapaxes(q, -1, -2)  # zero diagonal
  values = pack(q) if symmetric else q
  return Quantized(values, jnp.diagonal(x, axis1=-2, axis2=-1), scales)


def _dequantize(x: Quantized, dtype: jnp.dtype) -> jax.Array:
  n = x.diagonal.shape[-1]
  q = unpack(x.values, n) if x.values.ndim == 2 else x.values
  upper = np.arange(n)[:, None] <= np.arange(n)[None, :]  # entry (i, j) has row min(i, j)'s scale
  scale = jnp.where(upper, x.scales[..., :, None], x.scales[..., None, :])
  off = q.astype(x.scales.dtype) * scale
  return (off + x.diagonal[..., None] * jnp.eye(n, dtype=off.dtype)).astype(dtype)


def encode(x: jax.Array, dtype: jnp.dtype | None, symmetric: bool) -> Any:
  """A ``(factors, n, n)`` symmetric stack in its stored form (``dtype=None``: ``x.dtype``)."""
  dtype = x.dtype if dtype is None else dtype
  if jnp.issubdtype(dtype, jnp.integer):
    return _quantize(x, dtype, symmetric)
  if symmetric:  # the mean of the two triangles (G G^T is symmetric only up to rounding)
    return pack(0.5 * (x + jnp.swapaxes(x, -1, -2))).astype(dtype)
  return x.astype(dtype)


def decode(x: Any, dtype: jnp.dtype) -> jax.Array:
  """The full ``(factors, n, n)`` stack in ``dtype`` from its stored form."""
  if isinstance(x, Quantized):
    return _dequantize(x, dtype)
  if x.ndim == 2:
    n = int(round((np.sqrt(8 * x.shape[-1] + 1) - 1) / 2))
    return unpack(x, n).astype(dtype)
  return x.astype(dtype)


def encode_like(x: jax.Array, like: Any) -> Any:
  """``x`` in the stored form of ``like`` (same layout and dtype)."""
  if isinstance(like, Quantized):
    return _quantize(x, like.values.dtype, like.values.ndim == 2)
  return encode(x, like.dtype, like.ndim == 2)


def updated_stacks(full: tuple, like: tuple, changed: jax.Array, dtype: Any) -> tuple[tuple, tuple]:
  """``(decoded, stored)`` of stacks ``full`` that differ from their stored form ``like`` only
  where ``changed`` (a traced bool): encoded, and rounded to the stored precision, only then."""

  def encode_all():
    stored = tuple(encode_like(x, s) for x, s in zip(full, like, strict=True))
    return tuple(decode(x, dtype) for x in stored), stored

  if all(not _is_quantized(s) and s.ndim == 3 for s in like):  # full float storage: casts only
    return encode_all()
  return lax.cond(changed, encode_all, lambda: (full, tuple(like)))


_STACKS = ("statistics", "preconditioners", "pending_statistics")


def _is_quantized(x: Any) -> bool:
  return isinstance(x, Quantized)


def decode_state(state: Any, dtype: jnp.dtype, fields: tuple[str, ...] = _STACKS) -> Any:
  """A ``ScaleByShampooState`` whose stacks ``fields`` are full float matrices."""
  dec = functools.partial(decode, dtype=dtype)
  return state._replace(
    **{f: jax.tree.map(dec, getattr(state, f), is_leaf=_is_quantized) for f in fields}
  )


def encode_state(
  state: Any, like: Any, fields: tuple[str, ...] = _STACKS, active: Any = True
) -> Any:
  """``state`` (full stacks ``fields``) stored like the state ``like``; where ``active`` is False
  (a skipped step, whose stacks are ``like``'s decoded) exactly ``like``'s: float storage
  re-encodes its decoded stacks exactly, a quantised stack is selected."""

  def one(x, s):
    out = encode_like(x, s)
    if _is_quantized(s) and active is not True:
      out = jax.tree.map(lambda a, b: jnp.where(active, a, b), out, s)
    return out

  return state._replace(
    **{f: jax.tree.map(one, getattr(state, f), getattr(like, f)) for f in fields}
  )
