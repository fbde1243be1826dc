# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Batched inverse p-th roots of symmetric positive semi-definite matrices.

Two methods share one front end (per-block scale normalisation, symmetrisation, padding masks, the
relative ridge, the error bound and the fallback):

- ``"coupled_newton"``: the coupled Newton iteration of Guo and Higham (2006) as used by Shampoo,
  matmul-only and therefore fast on accelerators; blocks converge independently inside one
  ``lax.while_loop``.
- ``"eigh"``: an eigendecomposition with eigenvalues clamped at zero before the ridge.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sops._src import eigenbasis, utils

_METHODS = ("coupled_newton", "eigh")
_PRECISIONS = ("float32", "float64")
_HI = lax.Precision.HIGHEST
# Vectors of the block power iteration that estimates the largest eigenvalue, and its steps.
_POWER_BLOCK = 4
_POWER_STEPS = 12


class InversePthRootInfo(NamedTuple):
  """Per-block diagnostics of :func:`inverse_pth_root`.

  Attributes:
    iterations: coupled Newton iterations each block ran (0 for ``method="eigh"``).
    error: an upper bound on the relative error ``||X - X*||_2 / ||X*||_2`` of the returned root
      ``X`` against the exact root ``X*`` of the same input: ``((1 - eta)^(-1/p) - 1) (1 +
      eta)^(1/p)``, about ``eta / p``, with ``eta`` the relative backward error, taken from the
      balanced residual ``X^(p//2) (A + eps I) X^(p - p//2) - I`` for ``"coupled_newton"`` and
      from the decomposition's own residual ``V^T A V - W`` scaled by ``(W + eps)^(-1/2)`` on both
      sides for ``"eigh"`` (see :func:`inverse_pth_root`). It is computed before a fallback
      replaces a failed block, and is ``inf`` (and the block fails) when ``eta >= 1`` (no bound)
      or the input or the result is not finite. ``eta`` is computed in the working precision, so
      at the float32 rounding floor (true errors ~1e-6) the estimate can fall below the true
      error (measured: up to 2.4x below for ``"eigh"``, 1.2x for ``"coupled_newton"``).
    failed: whether ``error`` is ``inf`` or ``error > fail_threshold``; the
      returned root of such a block is the fallback.
  """

  iterations: jax.Array  # shape=mats.shape[:-2], int32
  error: jax.Array  # shape=mats.shape[:-2], float32
  failed: jax.Array  # shape=mats.shape[:-2], bool


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=_HI)


def _sym(a: jax.Array) -> jax.Array:
  return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _matrix_power(a: jax.Array, p: int) -> jax.Array:
  """``a**p`` for a static integer ``p >= 1`` by repeated squaring (unrolled)."""
  result = None
  base = a
  while True:
    if p & 1:
      result = base if result is None else _mm(result, base)
    p >>= 1
    if not p:
      return result
    base = _mm(base, base)


def _normalize(q: jax.Array) -> jax.Array:
  norm = jnp.sqrt(jnp.sum(q * q, axis=-2, keepdims=True))
  return q / jnp.where(norm > 0, norm, 1.0)


def _start_vectors(a: jax.Array, real: jax.Array | None) -> jax.Array:
  """``min(_POWER_BLOCK, n)`` unit start vectors shaped like ``a[..., :b]``, zero outside ``real``.

  Rows of a cosine table: deterministic and well spread, so none is orthogonal to a top
  eigenvector.
  """
  n = a.shape[-1]
  b = min(_POWER_BLOCK, n)
  idx = jnp.arange(n, dtype=a.dtype)[:, None]
  q = jnp.cos(idx * (jnp.arange(b, dtype=a.dtype) + 1.0) * 1.618034 + 0.5 * idx)
  q = q + jnp.zeros_like(a[..., :b])  # broadcast over the stack, keeping a's sharding
  if real is not None:
    q = jnp.where(real[..., :, None], q, 0.0)
  return _normalize(q)


def _max_eigenvalue(a: jax.Array, real: jax.Array) -> jax.Array:
  """Largest eigenvalue of symmetric PSD ``a`` (zero outside ``real``) by power iteration.

  Runs ``_POWER_BLOCK`` independent power iterations on ``(a / ||a||_F)^4`` (two squarings, which
  raise the ratio of the second to the first eigenvalue to the fourth power) from a fixed spread
  of start vectors, so no start is orthogonal to the top eigenvector, and returns the largest
  Rayleigh quotient on ``a`` itself, whose error is quadratic in the vector's. A Rayleigh quotient
  never exceeds the top eigenvalue; when the next eigenvalues nearly tie it undershoots by a
  fraction of their spread (worst 0.9% of ``lambda_max`` over 200 random spectra of sizes 2-200
  with clustered tops, measured in float32). Callers leave margins for that: the coupled Newton
  scaling uses ``1.25 * lambda_max``; the ridge and reported error move by under 1%.

  Only matmuls and elementwise ops: no ``qr``/``eigh`` custom calls. On CPU those LAPACK calls
  split their batch over the intra-op thread pool and block on it, and several of them running at
  once (one per Shampoo stack) can deadlock a small pool.
  """
  fro = jnp.sqrt(jnp.sum(a * a, axis=(-1, -2)))
  scale = jnp.where(fro > 0, fro, 1.0)[..., None, None]
  a2 = _mm(a / scale, a / scale)
  a4 = _mm(a2, a2)
  q = lax.fori_loop(0, _POWER_STEPS, lambda _, q: _normalize(_mm(a4, q)), _start_vectors(a, real))
  rayleigh = jnp.sum(q * _mm(a, q), axis=-2) / jnp.maximum(jnp.sum(q * q, axis=-2), 1e-30)
  return jnp.maximum(jnp.max(rayleigh, axis=-1), 0.0)


def _norm2(r: jax.Array) -> jax.Array:
  """Spectral norm of ``r`` (by :func:`_max_eigenvalue` on ``r^T r``: under 1% low)."""
  return jnp.sqrt(_max_eigenvalue(_mm(jnp.swapaxes(r, -1, -2), r), None))


def _balanced_residual_norm(x: jax.Array, a: jax.Array, p: int, mask2: jax.Array) -> jax.Array:
  """Spectral norm of ``R = X^h A X^(p-h) - I``, ``h = p//2``: a relative backward error of ``X``.

  ``X`` (symmetric positive definite) is the exact root of ``B = X^(-p)``; with ``E = A - B``,
  ``R = X^h E X^(p-h)``. For even ``p`` that is ``B^(-1/2) E B^(-1/2)``, so ``||R|| = eta`` of
  :func:`_root_error_bound`. For odd ``p``, ``B^(-1/2) E B^(-1/2) = X^(1/2) Z X^(1/2)`` with
  ``Z = X^h E X^h`` symmetric is similar to ``Z X = R``, so ``eta`` is the spectral radius of
  ``R``, at most ``||R||`` (up to ``cond^(1/(2p))`` less: at ``p = 1`` the bound is 2x-30x the
  true error). The norm is taken of the residual as computed, asymmetric rounding included: a
  symmetrised or spectral-radius estimate drops that rounding and fell to 0.8x the true error at
  condition 1e6, where the root itself is at the rounding floor. Splitting the power around
  ``A`` keeps the residual from amplifying errors of ``X`` across eigenvalues, which
  ``X^p A - I`` does by up to ``cond^((p - 1) / p)``.
  """
  n = x.shape[-1]
  h = p // 2
  left = _matrix_power(x, h) if h else None
  right = _mm(a, _matrix_power(x, p - h))
  r = (right if left is None else _mm(left, right)) - jnp.eye(n, dtype=x.dtype)
  return _norm2(jnp.where(mask2, r, 0.0))


def _root_error_bound(eta: jax.Array, p: int) -> jax.Array:
  r"""Relative error bound of an inverse p-th root from a relative backward error ``eta``.

  If ``X = B^(-1/p)`` exactly and ``||B^(-1/2) (A - B) B^(-1/2)||_2 <= eta < 1``, then
  ``(1 - eta) B <= A <= (1 + eta) B`` in the Loewner order, and since ``t -> t^(-1/p)`` is operator
  monotone decreasing for ``p >= 1``, ``A^(-1/p) - B^(-1/p)`` lies between ``((1 + eta)^(-1/p) - 1)
  B^(-1/p)`` and ``((1 - eta)^(-1/p) - 1) B^(-1/p)``. Its norm is at most ``((1 - eta)^(-1/p) - 1)
  ||X||``, and ``||X|| <= (1 + eta)^(1/p) ||A^(-1/p)||``. No first-order approximation: the bound
  is exact in ``eta``, which is ``~eta / p`` when small, ``inf`` when ``eta >= 1``. ``expm1`` and
  ``log1p`` keep it accurate for ``eta`` near the float32 epsilon.
  """
  ok = eta < 1
  e = jnp.where(ok, eta, 0.0)
  bound = jnp.expm1(-jnp.log1p(-e) / p) * jnp.exp(jnp.log1p(e) / p)
  return jnp.where(ok, bound, jnp.inf)


def _eigh_error(a, w, v, mu, real_pairs, p):
  """Error bound of the eigh root ``X = V diag(mu)^(-1/p) V^T`` of ``a``, ``mu = max(w, 0) + eps``.

  The float32 balanced residual of ``X`` is useless at high condition numbers: forming
  ``X^h A X^(p-h)`` rounds at ``u ||A||`` in every direction, which ``X^h`` then amplifies by
  ``1/lambda_min``. Its noise, ``~u cond`` whatever ``p``, masks a root error of ``~u cond / p``.
  Here the backward error is taken where the decomposition defines it, in its own basis:
  ``G = V^T A V - diag(w)`` (``w`` unclamped, as clamping is eigh's definition, not an error),
  scaled to ``eta = ||M^(-1/2) G M^(-1/2)||_2``, ``M = diag(mu)``: the relative backward error of
  :func:`_root_error_bound` for ``B = V W V^T`` if ``V`` were orthonormal. The product rounds at
  ``u ||A||`` too, but only once and without ``X``'s amplification. ``V``'s loss of orthogonality
  ``omega = ||V^T V - I||_2`` (``~n u``) is added to first order: writing ``V = Q (I + S)``
  with ``Q`` orthonormal, ``||S|| <= omega``, it moves ``eta`` by at most
  ``2 omega sqrt(mu_max / mu_min) (1 + eta)`` and ``X`` by ``omega (2 + omega) ||X||``. Measured
  at condition 1e6 in float32 (log-spaced and rank-deficient gradient statistics, n = 48..256,
  p = 1..8) the bound is 1.05x-2.4x the true error against a float64 root of the same input.
  """
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=a.dtype)
  pairs = real_pairs[..., :, None] & real_pairs[..., None, :]
  vt = jnp.swapaxes(v, -1, -2)
  g = _mm(vt, _mm(a, v)) - w[..., None, :] * eye  # not symmetrised: its rounding is kept
  s = lax.rsqrt(mu)
  eta = _norm2(jnp.where(pairs, g * s[..., :, None] * s[..., None, :], 0.0))
  omega = _norm2(jnp.where(pairs, _mm(vt, v) - eye, 0.0))
  mu_max = jnp.max(jnp.where(real_pairs, mu, 0.0), axis=-1)
  mu_min = jnp.min(jnp.where(real_pairs, mu, jnp.inf), axis=-1)
  spread = jnp.sqrt(mu_max / mu_min)
  eta = eta + jnp.where(omega > 0, 2.0 * omega * spread * (1.0 + eta), 0.0)
  return _root_error_bound(eta, p) + omega * (2.0 + omega) * jnp.exp(jnp.log1p(eta) / p)


def _coupled_newton(a, p, max_iters, tol, active, k_real):
  """Coupled Newton iteration for ``a^(-1/p)`` per block, ``a`` SPD; returns ``(x, iterations)``."""
  n = a.shape[-1]
  eye = jnp.eye(n, dtype=a.dtype)
  fro = jnp.sqrt(jnp.sum(a * a, axis=(-1, -2)))
  lmax = _max_eigenvalue(a, None)
  # Scale so the spectrum of M0 lies in (0, (p + 1) / 2] (convergence needs (0, p + 1)).
  c = jnp.minimum(fro, 1.25 * lmax)
  c = jnp.where(c > 0, c, 1.0)
  z = (1.0 + p) / (2.0 * c)
  m = a * z[..., None, None]
  x = eye * (z ** (1.0 / p))[..., None, None]
  rms = jnp.sqrt(jnp.asarray(k_real, a.dtype))

  def err_of(m):
    return jnp.sqrt(jnp.sum(jnp.square(m - eye), axis=(-1, -2))) / rms

  def cond(state):
    i, _, _, _, _, active = state
    return (i < max_iters) & jnp.any(active)

  def body(state):
    i, x, m, err, iters, active = state
    t = ((p + 1.0) * eye - m) / p
    x_new = _mm(x, t)
    m_new = _sym(_mm(_matrix_power(t, p), m))
    err_new = err_of(m_new)
    improved = err_new < err
    take = active & (improved | (i == 0))
    x = jnp.where(take[..., None, None], x_new, x)
    m = jnp.where(take[..., None, None], m_new, m)
    err = jnp.where(take, err_new, err)
    iters = iters + take.astype(jnp.int32)
    active = take & (err_new > tol)
    return i + 1, x, m, err, iters, active

  init = (
    jnp.asarray(0, jnp.int32),
    x,
    m,
    err_of(m),
    jnp.zeros_like(a[..., 0, 0], jnp.int32),  # keeps a's batch sharding
    active,
  )
  _, x, _, _, iters, _ = lax.while_loop(cond, body, init)
  return _sym(x), iters


def _check_p(p) -> int:
  if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
    raise ValueError(f"p must be a Python integer >= 1, got {p!r}.")
  return int(p)


def inverse_pth_root(
  mats: jax.typing.ArrayLike,
  p: int,
  *,
  method: str = "coupled_newton",
  ridge_epsilon: float = 1e-6,
  relative_ridge: bool = True,
  max_iters: int = 100,
  tol: float | None = None,
  block_sizes: jax.typing.ArrayLike | None = None,
  fallback: jax.typing.ArrayLike | None = None,
  fail_threshold: float = 0.1,
  precision: str = "float32",
  sequential_eigh: bool = False,
) -> tuple[jax.Array, InversePthRootInfo]:
  r"""Inverse p-th roots :math:`(A + \epsilon I)^{-1/p}` of a stack of symmetric PSD matrices.

  For each block :math:`A` of ``mats`` (shape ``(..., n, n)``) this returns
  :math:`X = (A + \epsilon I)^{-1/p}` with :math:`\epsilon = \text{ridge\_epsilon}\cdot
  \lambda_{\max}(A)` when ``relative_ridge`` (else :math:`\epsilon = \text{ridge\_epsilon}`). The
  input is symmetrized, :math:`A \leftarrow (A + A^\top)/2`, and for ``method="eigh"`` its
  eigenvalues are clamped at zero before the ridge is added. All blocks are computed in one batched
  call.

  ``method="coupled_newton"`` runs the coupled Newton iteration (Guo and Higham, 2006)
  :math:`T_k = ((p+1) I - M_k)/p`, :math:`X_{k+1} = X_k T_k`, :math:`M_{k+1} = T_k^p M_k` from
  :math:`M_0 = z A_\epsilon`, :math:`X_0 = z^{1/p} I`, so that :math:`M_k = X_k^p A_\epsilon \to
  I` and :math:`X_k \to A_\epsilon^{-1/p}`. Each block stops on its own when
  :math:`\|M_k - I\|_F/\sqrt{n} \le` ``tol`` (scale invariant) or when that quantity stops
  decreasing (the rounding floor), keeping its best iterate. ``λ_max`` is estimated by a block power
  iteration on :math:`(A/\|A\|_F)^4`. ``method="eigh"`` uses an eigendecomposition.

  Each block is first divided by its largest entry :math:`s` and the root multiplied by
  :math:`s^{-1/p}`, so blocks of any scale that float32 represents (tested from 1e-30 to 1e30)
  are rooted at unit scale.

  The reported ``info.error`` is an upper bound on the relative error
  :math:`\|X - X_*\|_2/\|X_*\|_2` of the *result* against the exact root :math:`X_*` of the same
  input: :math:`((1-\eta)^{-1/p} - 1)(1+\eta)^{1/p} \approx \eta/p`, where :math:`\eta` is the
  relative backward error :math:`\|B^{-1/2}(A_\epsilon - B)B^{-1/2}\|_2` of the matrix :math:`B`
  whose root :math:`X` is exactly (operator monotonicity of :math:`t^{-1/p}` makes this a bound,
  not a first-order estimate). For ``"coupled_newton"`` :math:`\eta` is bounded by the spectral
  norm of the balanced residual :math:`X^{\lfloor p/2 \rfloor} A_\epsilon X^{p - \lfloor p/2
  \rfloor} - I` (equal to it for even :math:`p`); for ``"eigh"`` it is measured in the
  eigenbasis, from :math:`V^\top A V - W`, because a float32 residual of :math:`X` at condition
  :math:`\kappa` carries rounding noise of :math:`u\kappa` for every :math:`p` while the root is
  only :math:`\sim u\kappa/p` off. The bound is evaluated in the working precision, so it is
  itself rounded; measured at condition 1e6 it is 1x-4.5x the true error against a float64 root
  (``docs/linalg.md``, which also says what float32 can and cannot achieve there).

  Args:
    mats: array of shape ``(..., n, n)``: symmetric positive semi-definite blocks.
    p: the root, a static Python integer ``>= 1``.
    method: ``"coupled_newton"`` (default) or ``"eigh"``.
    ridge_epsilon: ridge :math:`\ge 0` added to the diagonal; relative to the largest eigenvalue of
      each block when ``relative_ridge``.
    relative_ridge: whether ``ridge_epsilon`` is relative to each block's largest eigenvalue. A
      relative ridge on an all-zero block leaves it singular: that block fails.
    max_iters: maximum coupled Newton iterations (``>= 1``).
    tol: stopping tolerance on :math:`\|M - I\|_F/\sqrt{n}`; ``None`` means ``1e-6`` in float32
      and ``1e-12`` in float64.
    block_sizes: optional integer array of shape ``mats.shape[:-2]`` (may be traced) with each
      block's real size ``k``; rows and columns ``>= k`` are padding: they are ignored on input
      and the result there is the identity, while the ``k x k`` part equals the unpadded result.
    fallback: array broadcastable to ``mats.shape`` returned for failed blocks; ``None`` means
      the identity.
    fail_threshold: a block whose ``info.error`` exceeds this fails (``> 0``). At condition 1e6
      float32 ``"eigh"`` roots are 2-15% off for ``p <= 2`` (the rounding floor of ``syevd``), so
      the default ``0.1`` rejects some of them; ``sops.shampoo`` uses ``1.0``.
    precision: ``"float32"`` (default) or ``"float64"``, which computes in float64 and requires
      ``jax.config.update("jax_enable_x64", True)``; the result keeps the input's dtype.
    sequential_eigh: with ``"eigh"``, decompose the blocks one at a time (``lax.map``) instead of
      in one batched call; same results. On CPU the batched call splits the stack over the
      process' shared thread pool, which serializes it with computations on other CPU devices
      (used by :func:`sops.async_shampoo`); one at a time is slower on an idle multi-core CPU.

  Returns:
    A tuple ``(roots, info)``: ``roots`` has the shape of ``mats`` and never contains NaN or Inf;
    ``info`` is an :class:`InversePthRootInfo` of per-block arrays.

  Raises:
    ValueError: on an invalid static argument (``p``, ``method``, ``ridge_epsilon``,
      ``max_iters``, ``tol``, ``fail_threshold``, ``precision``) or a non-square input.

  Examples:
    >>> import jax.numpy as jnp
    >>> import sops
    >>> a = jnp.array([[4.0, 0.0], [0.0, 16.0]])
    >>> x, info = sops.linalg.inverse_pth_root(a, 2, ridge_epsilon=0.0)
    >>> print(jnp.round(x, 4))
    [[0.5  0.  ]
     [0.   0.25]]
    >>> bool(info.failed), bool(info.error < 1e-5)
    (False, True)

  References:
    Guo and Higham, "A Schur-Newton method for the matrix p'th root and its inverse", SIAM J.
    Matrix Anal. Appl. 28(3), 2006. Gupta, Koren and Singer, "Shampoo: Preconditioned stochastic
    tensor optimization", arXiv:1802.09568. Anil, Gupta, Koren, Regan and Singer, "Scalable second
    order optimization for deep learning", arXiv:2002.09018.
  """
  p = _check_p(p)
  utils.check_choice("method", method, _METHODS)
  utils.check_choice("precision", precision, _PRECISIONS)
  utils.check_choice("sequential_eigh", sequential_eigh, (True, False))
  utils.check_scalar("ridge_epsilon", ridge_epsilon, low=0.0)
  utils.check_scalar("max_iters", max_iters, low=1, integer=True)
  if tol is not None:
    utils.check_scalar("tol", tol, low=0.0)
  utils.check_scalar("fail_threshold", fail_threshold, low=0.0, low_inclusive=False, allow_inf=True)
  if precision == "float64" and not jax.config.jax_enable_x64:
    raise ValueError(
      'precision="float64" requires 64-bit JAX: call jax.config.update("jax_enable_x64", True).'
    )
  mats = jnp.asarray(mats)
  if mats.ndim < 2 or mats.shape[-1] != mats.shape[-2]:
    raise ValueError(f"mats must have shape (..., n, n), got {mats.shape}.")
  out_dtype = mats.dtype if jnp.issubdtype(mats.dtype, jnp.floating) else jnp.float32
  dtype = jnp.float64 if precision == "float64" else jnp.float32
  if tol is None:
    tol = 1e-12 if precision == "float64" else 1e-6
  n = mats.shape[-1]
  batch = mats.shape[:-2]
  eye = jnp.eye(n, dtype=dtype)

  with jax.named_scope("inverse_pth_root"):
    a = mats.astype(dtype)
    idx = jnp.arange(n)
    if block_sizes is None:
      k_real = jnp.full(batch, n, jnp.int32)
    else:
      k_real = jnp.broadcast_to(jnp.asarray(block_sizes, jnp.int32), batch)
      k_real = jnp.clip(k_real, 0, n)
    real = idx < k_real[..., None]  # (..., n)
    mask2 = real[..., :, None] & real[..., None, :]
    a = jnp.where(mask2, a, 0.0)
    finite_in = jnp.all(jnp.isfinite(a), axis=(-1, -2))
    a = jnp.where(finite_in[..., None, None], a, eye)
    # Every block is rooted at unit scale, (A + eps I)^(-1/p) = s^(-1/p) (A/s + eps/s I)^(-1/p), so
    # that squares and powers neither overflow nor underflow (float32 covers 1e-38..3e38, and the
    # iteration squares the input). s is the largest entry: exact, overflow-free, and for a PSD
    # block the largest diagonal entry, between lambda_max / n and lambda_max. The error bounds
    # are relative, so they are the same at either scale.
    scale = jnp.max(jnp.abs(a), axis=(-1, -2))
    scale = jnp.where(scale > 0, scale, 1.0)
    a = _sym(a / scale[..., None, None])

    if relative_ridge:
      if method == "eigh":
        lmax = None  # taken exactly from the eigenvalues below
      else:
        lmax = _max_eigenvalue(a, real)
      rel_eps = ridge_epsilon
    else:
      lmax = jnp.ones(batch, dtype)
      rel_eps = ridge_epsilon / scale  # the absolute ridge, at the block's unit scale

    if method == "eigh":
      # Padding gets a negative diagonal, so its eigenpairs sort first and never mix with the real
      # (PSD) ones.
      fro = jnp.sqrt(jnp.sum(a * a, axis=(-1, -2)))
      a_e = a - eye * jnp.where(real, 0.0, 1.0 + fro[..., None])[..., None, :]
      w_raw, v = eigenbasis.eigh(a_e, sequential_eigh)
      is_pad = idx < (n - k_real)[..., None]
      w = jnp.where(is_pad, 0.0, jnp.maximum(w_raw, 0.0))
      if lmax is None:
        lmax = jnp.max(w, axis=-1)
      eps = rel_eps * lmax
      mu = jnp.where(is_pad, 1.0, w + eps[..., None])
      vt = jnp.swapaxes(v, -1, -2)
      x = _sym(_mm(v * (mu ** (-1.0 / p))[..., None, :], vt))
      iters = jnp.zeros(batch, jnp.int32)
      error = _eigh_error(a_e, w_raw, v, mu, ~is_pad, p)
    else:
      eps = rel_eps * lmax
      # Padding gets the diagonal lmax + eps: inside the real spectrum, so it neither changes the
      # scaling nor slows convergence.
      pad_diag = jnp.where(lmax > 0, lmax, 1.0)
      diag = jnp.where(real, eps[..., None], pad_diag[..., None])
      a_d = a + eye * diag[..., None, :]
      x, iters = _coupled_newton(a_d, p, max_iters, tol, finite_in, k_real)
      # The residual is known only to within its own float32 rounding, which for a root at the
      # rounding floor is as large as the residual itself (its errors commute with A, so the bound
      # is tight): unscaled, it fell to 0.93x the true error at condition 1e6. Doubling eta
      # covers that; measured, the bound is then 1.9x-4.5x the true error for p = 2..8.
      eta = 2.0 * _balanced_residual_norm(x, a_d, p, mask2)
      error = _root_error_bound(eta, p)
    # Neither eta sees the rounding of evaluating and storing X itself, ~sqrt(k) u relative: without
    # this term the bound fell to 0.94x the true error at condition 10, where both are ~1e-6.
    error = error + jnp.sqrt(k_real.astype(dtype)) * jnp.finfo(dtype).eps

    x = jnp.where(mask2, x * (scale ** (-1.0 / p))[..., None, None], eye)
    finite_out = jnp.all(jnp.isfinite(x), axis=(-1, -2)) & jnp.isfinite(error)
    ok = finite_in & finite_out
    error = jnp.where(ok, error, jnp.inf)
    failed = ~ok | (error > fail_threshold)
    if fallback is None:
      fb = jnp.broadcast_to(eye, x.shape)
    else:
      fb = jnp.broadcast_to(jnp.asarray(fallback, dtype), x.shape)
      fb = jnp.where(jnp.isfinite(fb), fb, 0.0)
    x = jnp.where(failed[..., None, None], fb, x)
  info = InversePthRootInfo(
    iterations=iters.astype(jnp.int32),
    error=error.astype(jnp.float32),
    failed=failed,
  )
  return x.astype(out_dtype), info
