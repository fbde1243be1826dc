# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Conjugate gradients on pytrees inside ``lax.while_loop``.

The solver behind :func:`sops.newton_cg`: it minimises the quadratic model
``q(x) = 0.5 x^T A x - b^T x`` of a matrix-free operator ``A`` given as ``matvec``, stops on a
relative residual, on ``maxiter`` or on non-positive curvature, and keeps every scalar that steers
the loop identical across the replicas of a ``pmap``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sops._src import utils


class CGInfo(NamedTuple):
  """Diagnostics of one conjugate-gradient solve.

  Attributes:
    iterations: completed CG iterations (matrix-vector products after the first residual).
    relative_residual: ``||b - A x|| / ||b||`` from the residual recurrence (0 when ``b = 0``).
    curvature: Rayleigh quotient ``d^T A d / d^T d`` of the last search direction ``d`` that was
      tried; negative or zero when the solve stopped on non-positive curvature.
    nonpositive_curvature: whether the solve stopped because ``d^T A d <= 0``.
    nonfinite: whether the solve stopped because a product or inner product was not finite.
    converged: whether ``||r|| <= tol * ||b||`` was reached.
  """

  iterations: jax.Array  # shape=(), int32
  relative_residual: jax.Array  # shape=(), float dtype of b
  curvature: jax.Array  # shape=(), float dtype of b
  nonpositive_curvature: jax.Array  # shape=(), bool
  nonfinite: jax.Array  # shape=(), bool
  converged: jax.Array  # shape=(), bool


class _CGState(NamedTuple):
  k: jax.Array  # shape=(), int32
  x: Any  # pytree like b
  r: Any  # pytree like b
  d: Any  # pytree like b
  rr: jax.Array  # shape=(), r^T r
  rz: jax.Array  # shape=(), r^T M^{-1} r (r^T r without a preconditioner)
  curvature: jax.Array  # shape=(), last d^T A d / d^T d
  nonpositive: jax.Array  # shape=(), bool
  nonfinite: jax.Array  # shape=(), bool
  stalled: jax.Array  # shape=(), bool: the relative-progress stop fired
  phi: jax.Array  # (maxiter + 1,) model values q(x_i) for the progress stop, else (0,)
  saved: Any  # pytree like b with a leading (len(save_at),) axis, or None


class CGIterates(NamedTuple):
  """Iterates saved by :func:`conjugate_gradient_iterates` at the requested iterations.

  Attributes:
    iterates: pytree like ``b`` with a leading axis, one entry per iteration of ``save_at``
      (entries past the last completed iteration are zero).
    iterations: ``(len(save_at),)`` int32, the iteration of each entry.
    valid: ``(len(save_at),)`` bool, whether that iteration was reached.
  """

  iterates: Any
  iterations: jax.Array
  valid: jax.Array


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def conjugate_gradient(
  matvec: Callable[[Any], Any],
  b: Any,
  *,
  x0: Any | None = None,
  tol: jax.typing.ArrayLike = 1e-5,
  maxiter: jax.typing.ArrayLike | None = None,
  axis_name: str | None = None,
  preconditioner: Callable[[Any], Any] | None = None,
  progress_tol: float | None = None,
) -> tuple[Any, CGInfo]:
  r"""Solves ``A x = b`` for a symmetric operator on pytrees by conjugate gradients.

  Minimises :math:`q(x) = \tfrac12 x^\top A x - b^\top x` over growing Krylov spaces
  (Hestenes-Stiefel). Iterates while

  .. math::
    \|r_k\| > \mathrm{tol}\,\|b\|, \qquad k < \mathrm{maxiter}, \qquad d_k^\top A d_k > 0,

  with :math:`r_k = b - A x_k`. The stop is relative, hence invariant to rescaling ``b`` or ``A``;
  ``tol=0`` runs exactly ``maxiter`` iterations (unless the residual is exactly zero). The loop
  solves for ``b / max|b|`` and scales the solution back, so a huge or tiny but finite ``b`` (a
  float32 loss times ``1e20`` or ``1e-20``) does not over- or underflow the squared norms.

  Non-positive curvature :math:`d_k^\top A d_k \le 0` (``A`` indefinite, as a Hessian away from a
  minimum) stops the loop and returns the last iterate that had positive curvature; when it
  happens at the first iteration the right-hand side ``b`` itself is returned, which for a Newton
  system :math:`A p = -g` is the steepest-descent direction :math:`-g`. A non-finite product stops
  the loop the same way and is flagged in :class:`CGInfo`.

  A warm start ``x0`` costs one extra product and is kept only if it beats zero for the
  quadratic model, :math:`q(x_0) < 0 = q(0)`; since :math:`2q(x) = \|x - x^*\|_A^2 -
  \|x^*\|_A^2`, a discarded ``x0`` was farther from the solution than zero in the ``A``-norm.

  With ``axis_name`` set (inside ``pmap``/``shard_map``), every inner product is ``pmean``-ed over
  that axis, so every replica evaluates the same loop predicate and the collectives inside
  ``matvec`` stay matched. ``matvec`` itself must already return the replica-averaged product.

  With a ``preconditioner`` (a symmetric positive definite ``v -> M^{-1} v``) the loop is
  preconditioned CG: the search directions are ``M^{-1}``-conjugate and it converges in about
  ``sqrt(cond(M^{-1} A))`` iterations; the stop stays on the unpreconditioned residual.

  ``progress_tol`` adds Martens' relative-progress stop (2010, Section 4.4): at iteration ``i``
  with ``k = max(10, ceil(i / 10))``, stop when :math:`q(x_i) < 0` and
  :math:`(q(x_i) - q(x_{i-k})) / q(x_i) < k \cdot \mathrm{progress\_tol}` (Martens uses
  ``5e-4``): the quadratic model has stopped improving even though the residual has not
  converged. It needs a static integer ``maxiter``.

  Args:
    matvec: the linear map ``v -> A v`` on pytrees shaped like ``b``; ``A`` must be symmetric.
    b: the right-hand side, any pytree of float arrays.
    x0: optional starting point shaped like ``b`` (default zero).
    tol: relative residual tolerance, ``>= 0`` (a static negative or NaN ``tol`` raises); may be
      traced.
    maxiter: maximum number of iterations, ``>= 1`` when a static integer (default
      ``10 * size(b)``, as scipy's ``cg``); may be a traced integer.
    axis_name: mapped axis over which inner products are averaged, or ``None``.
    preconditioner: optional ``v -> M^{-1} v`` on pytrees shaped like ``b``, symmetric positive
      definite and linear (for example a diagonal scaling).
    progress_tol: optional ``> 0``: Martens' relative-progress stop (``None``: off).

  Returns:
    ``(x, info)``: the approximate solution, shaped like ``b``, and a :class:`CGInfo`.

  Raises:
    ValueError: if a static ``tol`` is negative or NaN, a static ``maxiter`` is below 1, or
      ``progress_tol`` is not positive or comes without a static ``maxiter``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import sops
    >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> x, info = sops.linalg.conjugate_gradient(lambda v: a @ v, jnp.array([1.0, 2.0]), tol=1e-6)
    >>> print(jnp.round(x, 4), int(info.iterations))
    [0.0909 0.6364] 2

  References:
    Hestenes, Stiefel, "Methods of conjugate gradients for solving linear systems", J. Res. Natl.
    Bur. Stand. 49(6), 1952.

    Nocedal, Wright, "Numerical Optimization", 2nd ed., Springer 2006, Algorithms 5.2, 5.3 and
    7.1.

    Martens, "Deep learning via Hessian-free optimization", ICML 2010.
  """
  x, info, _ = conjugate_gradient_iterates(
    matvec,
    b,
    x0=x0,
    tol=tol,
    maxiter=maxiter,
    axis_name=axis_name,
    preconditioner=preconditioner,
    progress_tol=progress_tol,
  )
  return x, info


def backtracking_iterations(maxiter: int, ratio: float = 1.3) -> tuple[int, ...]:
  """Martens' geometrically spaced CG iterations ``ceil(ratio^j)`` up to ``maxiter``.

  Args:
    maxiter: the last iteration, a positive integer.
    ratio: spacing, ``> 1`` (Martens: 1.3).

  Returns:
    The distinct iterations, increasing, ending with ``maxiter``.

  Examples:
    >>> import sops
    >>> sops.linalg.backtracking_iterations(10)
    (1, 2, 3, 4, 5, 7, 10)

  References:
    Martens, "Deep learning via Hessian-free optimization", ICML 2010, Section 4.6.
  """
  utils.check_scalar("maxiter", maxiter, low=1, integer=True)
  utils.check_scalar("ratio", ratio, low=1.0, low_inclusive=False)
  out, j = set(), 0
  while (i := math.ceil(ratio**j - 1e-9)) < maxiter:
    out.add(i)
    j += 1
  return tuple(sorted(out | {int(maxiter)}))


def conjugate_gradient_iterates(
  matvec: Callable[[Any], Any],
  b: Any,
  *,
  x0: Any | None = None,
  tol: jax.typing.ArrayLike = 1e-5,
  maxiter: jax.typing.ArrayLike | None = None,
  axis_name: str | None = None,
  preconditioner: Callable[[Any], Any] | None = None,
  progress_tol: float | None = None,
  save_at: tuple[int, ...] = (),
) -> tuple[Any, CGInfo, CGIterates | None]:
  """:func:`conjugate_gradient` that also returns its iterates at the iterations ``save_at``.

  For Martens' CG backtracking (:func:`backtracking_iterations`): the caller evaluates the true
  objective at the saved iterates and takes the best one.

  Args:
    matvec: as :func:`conjugate_gradient` (and every argument up to ``progress_tol``).
    b: right-hand side.
    x0: optional warm start.
    tol: relative residual tolerance.
    maxiter: maximum iterations.
    axis_name: mapped axis of the inner products.
    preconditioner: optional ``v -> M^{-1} v``.
    progress_tol: optional relative-progress stop.
    save_at: static increasing iterations (``>= 1``) whose iterates are kept.

  Returns:
    ``(x, info, iterates)``; ``iterates`` is a :class:`CGIterates`, or ``None`` when ``save_at``
    is empty.

  Examples:
    >>> import jax.numpy as jnp, sops
    >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    >>> x, info, its = sops.linalg.conjugate_gradient_iterates(
    ...   lambda v: a @ v, jnp.ones(3), tol=0.0, maxiter=3, save_at=(1, 2))
    >>> its.iterates.shape, bool(its.valid.all())
    ((2, 3), True)

  References:
    Martens, "Deep learning via Hessian-free optimization", ICML 2010.
  """
  utils.check_scalar("tol", tol, low=0.0)  # static values only: a traced tol is not checked
  if maxiter is None:
    maxiter = max(1, 10 * sum(x.size for x in jax.tree.leaves(b)))
  elif isinstance(maxiter, numbers.Integral):
    utils.check_scalar("maxiter", maxiter, low=1, integer=True)
  if progress_tol is not None:
    utils.check_scalar("progress_tol", progress_tol, low=0.0, low_inclusive=False)
    if not isinstance(maxiter, numbers.Integral):
      raise ValueError("progress_tol needs a static integer maxiter (it keeps q(x_i) per step).")
  save_at = tuple(int(i) for i in save_at)
  if any(i < 1 for i in save_at) or list(save_at) != sorted(set(save_at)):
    raise ValueError(f"save_at must be increasing iterations >= 1, got {save_at!r}.")
  precond = preconditioner if preconditioner is not None else (lambda v: v)

  def vdot(u, v):
    return utils.pmean_if(optax.tree.vdot(u, v), axis_name)

  # CG is linear in b: solve for b / scale with scale = max|b|, so that no squared norm over- or
  # underflows (a float32 loss times 1e20, or times 1e-20, would otherwise give r^T r = inf or 0).
  b_in = b
  scale = utils.max_abs(b, axis_name)
  scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1)
  b = jax.tree.map(lambda v: v / scale.astype(v.dtype), b)
  if x0 is not None:
    x0 = jax.tree.map(lambda v: v / scale.astype(v.dtype), x0)
  bb = vdot(b, b)
  dtype = jnp.result_type(bb)
  tol = jnp.asarray(tol, dtype)
  tol_rr = tol * tol * bb
  zero = jnp.zeros((), dtype)
  if x0 is None:
    x = optax.tree.zeros_like(b)
    r = b
    q0 = zero
  else:
    ax0 = matvec(x0)
    r0 = jax.tree.map(jnp.subtract, b, ax0)
    # q(x0) = 0.5 x0^T A x0 - b^T x0 = -0.5 x0^T (b + r0); keep x0 only if q(x0) < 0.
    q0 = -0.5 * vdot(x0, jax.tree.map(jnp.add, b, r0))
    keep = q0 < 0
    x = _select(keep, x0, optax.tree.zeros_like(b))
    r = _select(keep, r0, b)
    q0 = jnp.where(keep, q0, zero).astype(dtype)
  z = precond(r)
  rr = vdot(r, r)
  rz = rr if preconditioner is None else vdot(r, z)
  false = jnp.asarray(False)
  phi = jnp.zeros((maxiter + 1,) if progress_tol is not None else (0,), dtype)
  if progress_tol is not None:
    phi = phi.at[0].set(q0)
  saved = None
  if save_at:
    saved = jax.tree.map(lambda v: jnp.zeros((len(save_at), *v.shape), v.dtype), b)
  marks = jnp.asarray(save_at or (0,), jnp.int32)
  init = _CGState(jnp.zeros((), jnp.int32), x, r, z, rr, rz, zero, false, false, false, phi, saved)

  def cond_fn(s: _CGState) -> jax.Array:
    going = (s.k < maxiter) & (s.rr > tol_rr) & ~s.nonpositive & ~s.nonfinite
    return going & ~s.stalled

  def body_fn(s: _CGState) -> _CGState:
    ad = matvec(s.d)
    dad = vdot(s.d, ad)
    dd = vdot(s.d, s.d)
    alpha = s.rz / dad
    x = utils.tree_add_scale(s.x, alpha, s.d)
    r = utils.tree_add_scale(s.r, -alpha, ad)
    z = precond(r)
    rr = vdot(r, r)
    rz = rr if preconditioner is None else vdot(r, z)
    d = utils.tree_add_scale(z, rz / s.rz, s.d)
    # d^T A d = 0 is non-positive curvature (alpha = rr / 0 is not a step), not a non-finite value.
    nonpositive = jnp.isfinite(dad) & (dad <= 0)
    finite = jnp.isfinite(dad) & jnp.isfinite(rr) & jnp.isfinite(alpha) & jnp.isfinite(rz)
    nonfinite = ~nonpositive & ~finite
    ok = ~(nonfinite | nonpositive)
    curvature = jnp.where(dd > 0, dad / jnp.where(dd > 0, dd, 1), zero).astype(dtype)
    k = s.k + ok.astype(jnp.int32)
    phi, stalled = s.phi, s.stalled
    if progress_tol is not None:
      # q(x) = 0.5 x^T A x - b^T x = -0.5 (b + r)^T x, with r = b - A x from the recurrence.
      q = -0.5 * vdot(jax.tree.map(jnp.add, b, r), x)
      phi = jnp.where(ok, s.phi.at[k].set(q.astype(dtype)), s.phi)
      lag = jnp.maximum(10, (k + 9) // 10)
      past = phi[jnp.maximum(k - lag, 0)]
      stalled = ok & (k > lag) & (q < 0) & ((q - past) / q < lag * progress_tol)
    saved = s.saved
    if save_at:
      j = jnp.clip(jnp.searchsorted(marks, k), 0, len(save_at) - 1)
      hit = ok & (marks[j] == k)
      saved = jax.tree.map(lambda buf, v: buf.at[j].set(jnp.where(hit, v, buf[j])), s.saved, x)
    return _CGState(
      k=k,
      x=_select(ok, x, s.x),
      r=_select(ok, r, s.r),
      d=_select(ok, d, s.d),
      rr=jnp.where(ok, rr, s.rr),
      rz=jnp.where(ok, rz, s.rz),
      curvature=curvature,
      nonpositive=nonpositive,
      nonfinite=nonfinite,
      stalled=stalled,
      phi=phi,
      saved=saved,
    )

  with jax.named_scope("conjugate_gradient"):
    s = lax.while_loop(cond_fn, body_fn, init)
  # Non-positive curvature at the very first direction: fall back to b (steepest descent), or
  # M^{-1} b with a preconditioner (also a descent direction).
  first = s.nonpositive & (s.k == 0)
  fallback = b_in if preconditioner is None else precond(b_in)
  x = _select(first, fallback, jax.tree.map(lambda v: v * scale.astype(v.dtype), s.x))
  relative_residual = jnp.where(bb > 0, jnp.sqrt(s.rr / jnp.where(bb > 0, bb, 1)), zero)
  info = CGInfo(
    iterations=s.k,
    relative_residual=relative_residual.astype(dtype),
    curvature=s.curvature,
    nonpositive_curvature=s.nonpositive,
    nonfinite=s.nonfinite,
    converged=s.rr <= tol_rr,
  )
  iterates = None
  if save_at:
    valid = marks <= s.k
    iterates = CGIterates(
      iterates=jax.tree.map(
        lambda v: jnp.where(
          valid.reshape((-1,) + (1,) * (v.ndim - 1)), v * scale.astype(v.dtype), 0
        ),
        s.saved,
      ),
      iterations=marks,
      valid=valid,
    )
  return x, info, iterates
