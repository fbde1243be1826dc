# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""A Kronecker-factored Fisher as Newton-CG's preconditioner, from chunk gradients alone.

K-FAC (Martens & Grosse 2015) approximates each layer's block of the Fisher by a Kronecker
product ``A (x) G`` of activation and back-propagated-gradient statistics, which needs the layer's
internals. Here the factors come from gradients only, so they work for any parameter tree: the
batch is cut into ``K`` chunks, each chunk's summed per-example gradient ``G_k`` (a matrix per
leaf) is one sample of the Fisher, and the Kronecker factors are Shampoo's statistics
``L = mean_k G_k G_k^T`` and ``R = mean_k G_k^T G_k``. For Kronecker-structured samples
(``E[vec G vec G^T] = A (x) C``) ``L (x) R / tr L = A (x) C`` exactly (Morwani et al. 2024), the
approximation :func:`kronecker_inverse` inverts from the factors' eigendecompositions, with the
CG system's damping added exactly or split between the factors as K-FAC does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sops._src import eigenbasis, utils


class KroneckerFactors(NamedTuple):
  """The two factors of a matrix-shaped leaf reshaped to ``(m, n)`` (last axis = ``n``).

  Attributes:
    left: ``(m, m)``, the mean of ``G_k G_k^T``.
    right: ``(n, n)``, the mean of ``G_k^T G_k``.

  Examples:
    >>> import jax.numpy as jnp, sops
    >>> f = sops.KroneckerFactors(jnp.eye(3), jnp.eye(2))
    >>> print(f.left.shape, f.right.shape)
    (3, 3) (2, 2)

  References:
    Martens & Grosse, "Optimizing neural networks with Kronecker-factored approximate
    curvature", ICML 2015.
  """

  left: jax.Array
  right: jax.Array


MAX_DIM = 2048


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
  """``(prod(shape[:-1]), shape[-1])`` for leaves of two or more axes whose sides fit."""
  if len(shape) < 2:
    return None
  m, n = math.prod(shape[:-1]), shape[-1]
  return (m, n) if 1 < min(m, n) and max(m, n) <= MAX_DIM else None


def fisher_kronecker(
  per_example_loss: Callable[..., jax.Array],
  params: Any,
  *batch: Any,
  num_chunks: int = 16,
) -> Any:
  r"""Kronecker factors of the Fisher from chunk gradients, for ``preconditioner="kronecker"``.

  The batch is cut into ``num_chunks`` equal chunks; each chunk's gradient of the summed
  per-example losses, divided by ``sqrt(chunk size)``, is one sample ``G_k`` whose second moment
  is the per-example Fisher :math:`\frac1n \sum_i g_i g_i^\top` (exactly so when the per-example
  gradients have mean zero, as with targets sampled from the model). A leaf of two or more axes,
  reshaped to ``(m, n)`` with ``n`` its last axis, gets :class:`KroneckerFactors`
  ``(mean_k G_k G_k^T, mean_k G_k^T G_k)``; other leaves (vectors, or a side above
  ``MAX_DIM = 2048``) get the diagonal ``mean_k G_k^2``, like :func:`sops.fisher_diagonal`.
  Costs one gradient of the batch (``vmap`` over the chunks) and ``2 K m n (m + n)`` flops per
  matrix leaf.

  Args:
    per_example_loss: ``(params, *example) -> scalar`` for one example (no batch axis).
    params: the parameters.
    *batch: arrays with a leading batch axis divisible by ``num_chunks``.
    num_chunks: ``K``, the number of gradient samples (the factors' rank is at most ``K``).

  Returns:
    A pytree with ``params``' structure down to its leaves, each a :class:`KroneckerFactors` or
    an array shaped like the leaf; pass it to Newton-CG as ``kronecker_factors=...``.

  Examples:
    >>> import jax, jax.numpy as jnp, sops
    >>> loss = lambda w, x, y: jnp.sum((x @ w - y) ** 2)
    >>> x = jax.random.normal(jax.random.key(0), (8, 3))
    >>> y = jax.random.normal(jax.random.key(1), (8, 2))
    >>> f = sops.fisher_kronecker(loss, jnp.zeros((3, 2)), x, y, num_chunks=4)
    >>> print(f.left.shape, f.right.shape)
    (3, 3) (2, 2)

  References:
    Martens & Grosse, "Optimizing neural networks with Kronecker-factored approximate
    curvature", ICML 2015; Morwani et al., "A new perspective on Shampoo's preconditioner",
    arXiv 2406.17748, 2024.
  """
  utils.check_scalar("num_chunks", num_chunks, low=1, integer=True)
  n = jax.tree.leaves(batch)[0].shape[0]
  if n % num_chunks:
    raise ValueError(f"num_chunks={num_chunks} must divide the batch size {n}.")
  size = n // num_chunks
  chunks = jax.tree.map(lambda a: a.reshape(num_chunks, size, *a.shape[1:]), batch)

  def chunk_grad(chunk):
    def total(p):
      return jnp.sum(jax.vmap(per_example_loss, (None, *([0] * len(chunk))))(p, *chunk))

    return jax.grad(total)(params)

  grads = jax.vmap(chunk_grad)(chunks)
  scale = 1.0 / math.sqrt(size)

  def factors(g):
    g = g * jnp.asarray(scale, g.dtype)
    shape = _matrix_shape(g.shape[1:])
    if shape is None:
      return jnp.mean(jnp.square(g), axis=0)
    gm = g.reshape(num_chunks, *shape)
    left = jnp.einsum("kij,klj->il", gm, gm) / num_chunks
    right = jnp.einsum("kji,kjl->il", gm, gm) / num_chunks
    return KroneckerFactors(left, right)

  return jax.tree.map(factors, grads)


def _is_factors(x: Any) -> bool:
  return isinstance(x, KroneckerFactors)


def _eigh_stacks(mats: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
  """``(eigenvalues, eigenvectors)`` of symmetric matrices, one stack per size.

  The stacks are decomposed one matrix at a time: batched CPU ``eigh`` calls running side by side
  can deadlock XLA's thread pool (:func:`sops._src.eigenbasis.eigh`)."""
  out: list = [None] * len(mats)
  for dim in sorted({a.shape[0] for a in mats}):
    idx = [i for i, a in enumerate(mats) if a.shape[0] == dim]
    w, v = eigenbasis.eigh(jnp.stack([mats[i] for i in idx]), sequential=True)
    for j, i in enumerate(idx):
      out[i] = (jnp.maximum(w[j], 0), v[j])
  return out


class KroneckerInverse(NamedTuple):
  """:math:`M^{-1}` on a matrix leaf: ``V -> Q_L ((Q_L^T V Q_R) * scale) Q_R^T``, or, without
  ``scale`` (factored damping, whose inverse is a Kronecker product), ``V -> left V right``."""

  left: jax.Array  # (m, m) eigenvectors of L, or the left factor of M^{-1}
  right: jax.Array  # (n, n) eigenvectors of R, or the right factor of M^{-1}
  scale: jax.Array | None  # (m, n) M^{-1}'s eigenvalues; None for factored damping


DAMPINGS = ("factored", "exact")


def kronecker_inverse(
  factors: Any,
  damping: jax.typing.ArrayLike,
  exponent: jax.typing.ArrayLike,
  mode: str = "factored",
):
  r"""The blocks of :math:`M^{-1}` for :math:`M = (F + \lambda I)^\xi`, ``F`` Kronecker-factored.

  A matrix leaf with factors ``(L, R)`` has :math:`F \approx L \otimes R / \mathrm{tr} L`,
  written :math:`s \tilde L \otimes \tilde R` with :math:`\tilde L, \tilde R` of mean eigenvalue
  one and ``s`` the mean eigenvalue of the block. From the eigendecompositions
  :math:`\tilde L = Q_L E_L Q_L^\top`, :math:`\tilde R = Q_R E_R Q_R^\top`, :math:`M` has
  eigenvectors :math:`Q_L \otimes Q_R` and eigenvalues, with ``mode="exact"``,
  :math:`(s e_{L,i} e_{R,j} + \lambda)^\xi`, or with ``mode="factored"`` K-FAC's factored
  damping :math:`s^\xi (e_{L,i} + \gamma)^\xi (e_{R,j} + \gamma)^\xi`,
  :math:`\gamma = \sqrt{\lambda / s}`, which damps more than :math:`\lambda` where
  :math:`\lambda` is small against ``s`` (the cross terms add about :math:`\sqrt{\lambda s}`).
  Diagonal leaves get :math:`(d + \lambda)^{-\xi}` as in Martens' preconditioner. A block whose
  factors are zero or not finite gets :math:`\lambda^{-\xi} I`. All blocks are divided by one
  constant (the largest diagonal entry, exact eigenvalue or factored left-factor coefficient),
  which keeps float32 in range and which CG does not see.

  Args:
    factors: from :func:`fisher_kronecker` (replica-averaged when data parallel).
    damping: the Tikhonov damping :math:`\lambda` of the system being solved.
    exponent: :math:`\xi` (1: the damped Kronecker Fisher's inverse).
    mode: ``"factored"`` or ``"exact"`` damping.

  Returns:
    ``factors``' structure with a :class:`KroneckerInverse` on matrix leaves and arrays (the
    diagonal of :math:`M^{-1}`) on the others; apply with :func:`apply_inverse`.
  """
  leaves, treedef = jax.tree.flatten(factors, is_leaf=_is_factors)
  dt = _dtype(factors)
  lam = jnp.maximum(jnp.asarray(damping, dt), jnp.finfo(dt).tiny)
  xi = jnp.asarray(exponent, dt)
  mats, means = [], []
  for f in filter(_is_factors, leaves):
    left, right = f.left.astype(dt), f.right.astype(dt)
    m, n = len(left), len(right)
    tr = jnp.trace(left)
    ok = (tr > 0) & jnp.isfinite(tr) & utils.tree_all_finite((left, right))
    tr = jnp.where(ok, tr, 1.0)
    # Without usable factors the block is lam I: identity factors and s = 0.
    mats += [
      jnp.where(ok, left * (m / tr), jnp.eye(m, dtype=dt)),
      jnp.where(ok, right * (n / tr), jnp.eye(n, dtype=dt)),
    ]
    means.append(jnp.where(ok, tr / (m * n), 0.0))
  eig = _eigh_stacks(mats) if mats else []
  # Each block's M^{-1} eigenvalues, as an (m, n) matrix (exact) or two vectors (factored).
  scales = []
  for k, s in enumerate(means):
    el, er = eig[2 * k][0], eig[2 * k + 1][0]
    if mode == "exact":
      scales.append((s * el[:, None] * er[None, :] + lam) ** -xi)
    else:
      g = jnp.where(s > 0, jnp.sqrt(lam / jnp.maximum(s, jnp.finfo(dt).tiny)), 0.0)
      c = jnp.where(s > 0, s, lam) ** -xi
      scales.append((c * (el + g) ** -xi, (er + g) ** -xi))
  # A non-finite diagonal entry counts as zero: that coordinate gets the damping alone.
  diag = [
    (jnp.where(jnp.isfinite(f), jnp.maximum(f.astype(dt), 0), 0) + lam) ** -xi
    for f in leaves
    if not _is_factors(f)
  ]
  # One scale for all blocks keeps float32 away from under- and overflow.
  top = jnp.max(
    jnp.stack(
      [jnp.max(c if mode == "exact" else c[0]) for c in scales] + [jnp.max(c) for c in diag]
    )
  )
  top = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
  out, k, d = [], 0, 0
  for f in leaves:
    if _is_factors(f):
      (_, ql), (_, qr) = eig[2 * k], eig[2 * k + 1]
      if mode == "exact":
        out.append(KroneckerInverse(ql, qr, scales[k] / top))
      else:
        sl, sr = scales[k]
        out.append(KroneckerInverse((ql * (sl / top)) @ ql.T, (qr * sr) @ qr.T, None))
      k += 1
    else:
      out.append(diag[d] / top)
      d += 1
  return treedef.unflatten(out)


def apply_inverse(inverse: Any, v: Any) -> Any:
  """``M^{-1} v`` with ``inverse`` from :func:`kronecker_inverse` (``v`` shaped like params)."""

  def one(x, op):
    if not isinstance(op, KroneckerInverse):
      return x * op.astype(x.dtype)
    xm = x.reshape(len(op.left), len(op.right)).astype(op.left.dtype)
    if op.scale is None:
      return (op.left @ xm @ op.right).reshape(x.shape).astype(x.dtype)
    rotated = (op.left.T @ xm @ op.right) * op.scale
    return (op.left @ rotated @ op.right.T).reshape(x.shape).astype(x.dtype)

  return jax.tree.map(one, v, inverse)


def _dtype(tree: Any) -> jnp.dtype:
  """The leaves' common dtype, float32 at least."""
  return jnp.result_type(jnp.float32, *(x.dtype for x in jax.tree.leaves(tree)))


def zeros_like_factors(params: Any) -> Any:
  """Zero factors shaped as :func:`fisher_kronecker` returns them for ``params`` (in the
  params' dtype, float32 at least)."""
  dt = _dtype(params)

  def zeros(x):
    shape = _matrix_shape(x.shape)
    if shape is None:
      return jnp.zeros(x.shape, dt)
    return KroneckerFactors(jnp.zeros((shape[0],) * 2, dt), jnp.zeros((shape[1],) * 2, dt))

  return jax.tree.map(zeros, params)


class KroneckerState(NamedTuple):
  """EMA of the Kronecker factors and the inverse built from them at the last refresh."""

  factors: Any
  inverse: Any


def init(params: Any, mode: str) -> KroneckerState:
  """Zero factors and the identity inverse (for ``mode``'s representation)."""
  factors = zeros_like_factors(params)

  def identity(f):
    if not _is_factors(f):
      return jnp.ones_like(f)
    m, n, dt = len(f.left), len(f.right), f.left.dtype
    scale = jnp.ones((m, n), dt) if mode == "exact" else None
    return KroneckerInverse(jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt), scale)

  return KroneckerState(factors, jax.tree.map(identity, factors, is_leaf=_is_factors))


def update(
  state: KroneckerState,
  factors: Any,
  *,
  refresh: jax.Array,
  num_refreshes: jax.Array,
  decay: jax.typing.ArrayLike,
  damping: jax.typing.ArrayLike,
  exponent: jax.typing.ArrayLike,
  mode: str,
  axis_name: str | None,
) -> KroneckerState:
  """On ``refresh``: the factors' EMA (bias-corrected by ``1 - decay^num_refreshes``) and its
  inverse at the current damping; else ``state``. ``factors`` may be a function of no arguments,
  then called on refreshes only. Non-finite factors leave the state as it was."""

  def fresh():
    new = factors() if callable(factors) else factors
    shapes = [jax.tree.map(jnp.shape, t) for t in (new, state.factors)]
    if shapes[0] != shapes[1]:
      raise ValueError(
        "newton_cg: kronecker_factors do not match the params given to init (expected "
        f"sops.fisher_kronecker(per_example_loss, params, ...) of the same params): got "
        f"{shapes[0]}, expected {shapes[1]}."
      )
    new = utils.pmean_if(new, axis_name)
    d = jnp.asarray(decay, _dtype(state.factors))
    ema = jax.tree.map(lambda a, b: (d * a + (1 - d) * b).astype(a.dtype), state.factors, new)
    ok = utils.tree_all_finite(ema)
    ema = jax.tree.map(lambda a, b: jnp.where(ok, a, b), ema, state.factors)
    corrected = jax.tree.map(lambda a: a / (1 - d**num_refreshes), ema)
    inverse = kronecker_inverse(corrected, damping, exponent, mode)
    inverse = jax.tree.map(lambda a, b: jnp.where(ok, a, b), inverse, state.inverse)
    return KroneckerState(ema, inverse)

  return lax.cond(refresh, fresh, lambda: state)
