# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Eigenbases of stacked symmetric PSD statistics, computed cold or tracked from the previous one.

A Kronecker factor changes slowly between root computations, so its eigenbasis does too. Instead of
a full eigendecomposition every time, :func:`tracked_eigenbasis` refines the previous basis ``Q``
with one step of subspace iteration, ``Q' = qr(A Q)``, and takes the eigenvalues as the diagonal of
``Q'^T A Q'`` (as in Facebook's Distributed Shampoo amortised eigendecomposition and in SOAP). The
relative off-diagonal mass ``||Q'^T A Q' - diag||_F / ||Q'^T A Q'||_F`` measures how far ``Q'`` is
from an eigenbasis; blocks above a tolerance fall back to a cold ``eigh``. On this project's CPU a
QR costs about half an ``eigh`` of the same stack (``docs/shampoo.md`` has the table).

Padding: rows and columns ``>= k`` of a block of real size ``k`` are ignored; they get a diagonal
at the top of the spectrum, so their eigenvectors never mix with the real part's, and the root
built from the basis is the identity there.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST
_CHOLESKY_RIDGE = 1e-4  # relative shift of the power step in the CholeskyQR path


class Eigenbasis(NamedTuple):
  """Per-block eigenbasis ``Q`` (columns), eigenvalue estimates and its off-diagonal mass."""

  vectors: jax.Array  # (..., n, n)
  values: jax.Array  # (..., n): diag(Q^T A Q), clamped at 0
  off_diagonal: jax.Array  # (...,): ||Q^T A Q - diag||_F / ||Q^T A Q||_F (0 for a zero block)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HI)


def _t(a: jax.Array) -> jax.Array:
  return jnp.swapaxes(a, -1, -2)


def masked(mats: jax.Array, k_real: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetrised blocks with the padding moved to the top of the spectrum, and the real mask."""
  n = mats.shape[-1]
  a = 0.5 * (mats + _t(mats))
  real = jnp.arange(n) < k_real[..., None]
  mask2 = real[..., :, None] & real[..., None, :]
  a = jnp.where(mask2, a, 0.0)
  fro = jnp.sqrt(jnp.sum(a * a, axis=(-1, -2)))
  top = jnp.where(fro > 0, 2.0 * fro, 1.0)  # strictly above every real eigenvalue: no mixing
  return a + jnp.eye(n, dtype=a.dtype) * jnp.where(real, 0.0, top[..., None])[..., None, :], mask2


def _rayleigh(a: jax.Array, q: jax.Array) -> Eigenbasis:
  d = _mm(_t(q), _mm(a, q))
  w = jnp.diagonal(d, axis1=-2, axis2=-1)
  off = d - w[..., None] * jnp.eye(d.shape[-1], dtype=d.dtype)
  fro = jnp.sqrt(jnp.sum(d * d, axis=(-1, -2)))
  rel = jnp.sqrt(jnp.sum(off * off, axis=(-1, -2))) / jnp.where(fro > 0, fro, 1.0)
  return Eigenbasis(q, jnp.maximum(w, 0.0), rel)


def eigh(a: jax.Array, sequential: bool = False) -> tuple[jax.Array, jax.Array]:
  """``jnp.linalg.eigh`` of a stack; ``sequential`` runs it one block at a time (``lax.map``).

  Same results bit for bit. On CPU the batched LAPACK call splits the stack over the process'
  shared intra-op thread pool and waits for it, so it serializes with computations running on
  other CPU devices (and two at once can deadlock a small pool); one block at a time runs on the
  calling thread only.
  """
  return _one_block_at_a_time(jnp.linalg.eigh, a) if sequential else jnp.linalg.eigh(a)


def _one_block_at_a_time(fn, x: jax.Array) -> tuple[jax.Array, ...]:
  """``fn`` (a LAPACK decomposition returning a tuple) of each ``(m, n)`` block of the stack ``x``
  in turn (``lax.map``), each output reshaped back to the stack's leading dimensions."""
  if x.ndim == 2:
    return fn(x)
  outs = lax.map(fn, x.reshape(-1, *x.shape[-2:]))
  return tuple(o.reshape(x.shape[:-2] + o.shape[1:]) for o in outs)


def batched_lapack_may_deadlock(platform: str | None = None) -> bool:
  """Whether a batched CPU ``eigh``/QR may deadlock: JAX has several CPU devices.

  The batched LAPACK call waits for the process' thread pool, whose threads the other CPU
  devices may hold while they wait in a collective (seen under sharded ``jit``, in one process
  and across processes); one block at a time (:func:`eigh`, :func:`qr`) runs on the calling
  thread.
  """
  return (platform or jax.default_backend()) == "cpu" and jax.device_count() > 1


def qr(x: jax.Array, sequential: bool = False) -> tuple[jax.Array, jax.Array]:
  """``jnp.linalg.qr`` of a stack; ``sequential`` runs it one block at a time (see :func:`eigh`)."""
  return _one_block_at_a_time(jnp.linalg.qr, x) if sequential else jnp.linalg.qr(x)


def cold_eigenbasis(a: jax.Array, sequential: bool = False) -> Eigenbasis:
  """Full ``eigh`` of symmetric blocks ``a`` (already :func:`masked`)."""
  _, q = eigh(a, sequential)
  return _rayleigh(a, q)


def padding_columns(q: jax.Array, k_real: jax.Array) -> jax.Array:
  """``(..., n)`` bool: the columns of ``q`` that span the padding (their weight lies there)."""
  real = jnp.arange(q.shape[-1]) < k_real[..., None]
  return jnp.sum(jnp.where(real[..., :, None], 0.0, q * q), axis=-2) > 0.5


def cholesky_qr(x: jax.Array) -> jax.Array:
  """Orthonormal ``Q`` of ``x = Q R`` (``R`` with a positive diagonal) by shifted CholeskyQR3.

  Matrix products, a Cholesky factorisation and a triangular solve per pass, so it batches well on
  accelerators, where a batched Householder QR of many small blocks runs block by block. The
  columns are normalised first (this leaves ``Q`` unchanged), the first pass is shifted so its
  Cholesky cannot break down, and two more passes restore orthogonality to rounding level
  (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa, "Shifted Cholesky QR for computing the QR
  factorization of ill-conditioned matrices", SIAM J. Sci. Comput. 42(1), 2020). A non-finite
  result (rank-deficient ``x`` at working precision) is for the caller to reject.
  """
  n = x.shape[-1]
  norms = jnp.sqrt(jnp.sum(x * x, axis=-2, keepdims=True))
  x = x / jnp.where(norms > 0, norms, 1.0)
  eye = jnp.eye(n, dtype=x.dtype)
  shift = 11.0 * (n * n + n * (n + 1)) * jnp.finfo(x.dtype).eps  # ||x||_2^2 <= n after scaling
  for i in range(3):
    g = _mm(_t(x), x)
    if i == 0:
      g = g + shift * n * eye
    chol = jnp.linalg.cholesky(0.5 * (g + _t(g)))
    x = lax.linalg.triangular_solve(chol, x, left_side=False, lower=True, transpose_a=True)
  return x


def ordered_qr(
  aq: jax.Array,
  q: jax.Array,
  k_real: jax.Array,
  method: str = "householder",
  sequential: bool = False,
):
  """One subspace-iteration step ``qr(a q)`` from the basis ``q``, given ``aq = a q``.

  The columns are first ordered by decreasing Rayleigh quotient, the padding columns last (they
  stay at the padding positions): subspace iteration converges to the eigenvectors in that order,
  so a column that is already an eigenvector keeps its place instead of being pulled towards a
  larger one by the Gram-Schmidt step. ``method``: ``"householder"`` (``jnp.linalg.qr``) or
  ``"cholesky"`` (:func:`cholesky_qr`, for accelerators); ``sequential``: Householder QR one
  block at a time (:func:`qr`).
  """
  key = jnp.where(padding_columns(q, k_real), -jnp.inf, jnp.sum(q * aq, axis=-2))
  order = jnp.argsort(-key, axis=-1)[..., None, :]
  x = jnp.take_along_axis(aq, order, axis=-1)

  def householder():
    q_new, r = qr(x, sequential)
    # Keep each column's orientation (qr's signs are arbitrary): a basis that does not move stays.
    sign = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(q.dtype)
    return q_new * sign[..., None, :]

  if method != "cholesky":
    return householder()
  # A column whose Rayleigh quotient is tiny next to the largest one is mostly rounding noise
  # from the larger directions: (a + delta I) q keeps such columns close to their old direction,
  # so the Gram matrix stays well conditioned. Blocks where CholeskyQR still breaks down take the
  # Householder QR (computed only if one does).
  top = jnp.max(jnp.abs(key), axis=-1, where=jnp.isfinite(key), initial=0.0)
  delta = _CHOLESKY_RIDGE * top[..., None, None]
  x = x + delta * jnp.take_along_axis(q, order, axis=-1)
  out = cholesky_qr(x)
  bad = ~jnp.all(jnp.isfinite(out), axis=(-1, -2))
  return lax.cond(
    jnp.any(bad), lambda: jnp.where(bad[..., None, None], householder(), out), lambda: out
  )


def drift(a: jax.Array, q: jax.Array, aq: jax.Array, mask2: jax.Array) -> jax.Array:
  """``||Q^T A Q - diag||_F / ||A||_F`` over the real part, from ``aq = a q`` in O(n^2).

  ``Q`` is orthogonal, so ``||Q^T A Q||_F = ||A||_F`` and only the diagonal is needed; the padding
  (exact eigenvectors of :func:`masked` blocks) cancels out of the difference. The subtraction
  cancels, so drifts below ``sqrt(n eps)`` (~1e-3 for n = 8 in float32) read as that floor.
  """
  diag = jnp.sum(q * aq, axis=-2)
  fro2 = jnp.sum(a * a, axis=(-1, -2))
  real2 = jnp.sum(jnp.where(mask2, a * a, 0.0), axis=(-1, -2))
  off2 = jnp.maximum(fro2 - jnp.sum(diag * diag, axis=-1), 0.0)
  return jnp.sqrt(off2 / jnp.where(real2 > 0, real2, 1.0)) * (real2 > 0)


def refined_eigenbasis(a: jax.Array, q: jax.Array, k_real: jax.Array) -> Eigenbasis:
  """One ordered subspace-iteration step from the basis ``q`` (:func:`ordered_qr`), then
  Rayleigh quotients."""
  return _rayleigh(a, ordered_qr(_mm(a, q), q, k_real))


def tracked_eigenbasis(
  a: jax.Array,
  q_prev: jax.Array,
  tol: jax.typing.ArrayLike,
  k_real: jax.Array,
  sequential: bool = False,
) -> Eigenbasis:
  """Refines ``q_prev``; blocks whose off-diagonal mass exceeds ``tol`` (or is not finite) get a
  cold ``eigh`` instead, computed only when at least one block needs it."""
  warm = refined_eigenbasis(a, q_prev, k_real)
  bad = ~(warm.off_diagonal <= tol) | ~jnp.all(jnp.isfinite(warm.vectors), axis=(-1, -2))

  def cold():
    fresh = cold_eigenbasis(a, sequential)
    return jax.tree.map(
      lambda c, w: jnp.where(bad.reshape(bad.shape + (1,) * (w.ndim - bad.ndim)), c, w),
      fresh,
      warm,
    )

  return lax.cond(jnp.any(bad), cold, lambda: warm)


def root_from_eigenbasis(
  basis: Eigenbasis, p: int, ridge_epsilon: jax.typing.ArrayLike, mask2: jax.Array
) -> jax.Array:
  """``Q diag((w + eps)^(-1/p)) Q^T`` with ``eps = ridge_epsilon * max(w)`` over the real part,
  the identity on padding. A zero block gives a non-finite root (the caller rejects it)."""
  q = basis.vectors
  real = jnp.diagonal(mask2, axis1=-2, axis2=-1)
  # A column belongs to the padding when its weight lies on the padding coordinates.
  pad_col = padding_columns(q, jnp.sum(real, axis=-1))
  w = jnp.where(pad_col, 0.0, basis.values)
  eps = ridge_epsilon * jnp.max(w, axis=-1, keepdims=True)
  scale = jnp.where(pad_col, 0.0, (w + eps) ** (-1.0 / p))
  x = _mm(q * scale[..., None, :], _t(q))
  x = 0.5 * (x + _t(x))
  return jnp.where(mask2, x, jnp.eye(x.shape[-1], dtype=x.dtype))
