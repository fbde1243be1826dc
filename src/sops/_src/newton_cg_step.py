# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""The Newton-CG step shared by :func:`sops.scale_by_newton_cg` and :func:`sops.newton_cg`.

One update, in the order it runs: the user's functions on the float leaves (:func:`_prepare`), the
curvature operator on the gradient or curvature batch
(:func:`sops._src.hessian_free.curvature_operator`), the CG preconditioner
(:func:`_preconditioner`), the damped solve with CG backtracking (``solve`` in :func:`make`), the
descent check, and the Levenberg-Marquardt damping update (:mod:`sops._src.damping`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sops._src import curvature as curv
from sops._src import damping as damping_lib
from sops._src import fisher_kronecker as fk
from sops._src import hessian_free as hf
from sops._src import utils
from sops._src.cg import backtracking_iterations, conjugate_gradient_iterates

CURVATURES = ("hessian", "gauss_newton")
_F32 = jnp.float32


class NewtonCGInfo(NamedTuple):
  """Diagnostics of the last Newton-CG update (all zero before the first update).

  Attributes:
    loss: the loss at the parameters the update started from (replica-averaged; 0 if non-finite).
    cg_iterations: CG iterations used.
    relative_residual: final ``||r|| / ||g||`` of the damped Newton system.
    curvature: Rayleigh quotient ``d^T (B + damping I) d / d^T d`` of the last CG search
      direction; ``<= 0`` when CG stopped on non-positive curvature.
    nonpositive_curvature: whether CG stopped on non-positive curvature.
    fallback: whether the descent check fired (``g . p >= 0``) and the direction became ``-g``.
    reduction_ratio: actual over predicted decrease ``rho`` of the full step (0 when not adaptive
      or not measurable; the most negative float32 when the trial loss was not finite).
    rejected: whether ``adaptive_damping`` rejected the step (``rho <= 0``: the full step did not
      lower the loss), so the update was zero and the damping grew.
    nonfinite: whether the loss, gradient or a curvature product was not finite, so the update
      was zero and the state kept. Huge or tiny but finite values are not flagged: CG and the
      damping rule work on rescaled copies.
    stalled: whether the step cannot lower the loss measurably: its predicted decrease (the
      quadratic model with ``adaptive_damping``, else ``g . p``) is below ``100 eps |loss|`` in
      the loss's dtype. Expected at convergence; on every step it means the damping dominates the
      curvature (for example a loss scaled by ``1e-20`` against ``min_damping``): rescale the loss
      or lower the damping. The damping is not adapted on such steps.
  """

  loss: jax.Array  # shape=(), float32
  cg_iterations: jax.Array  # shape=(), int32
  relative_residual: jax.Array  # shape=(), float32
  curvature: jax.Array  # shape=(), float32
  nonpositive_curvature: jax.Array  # shape=(), bool
  fallback: jax.Array  # shape=(), bool
  reduction_ratio: jax.Array  # shape=(), float32
  rejected: jax.Array  # shape=(), bool
  nonfinite: jax.Array  # shape=(), bool
  stalled: jax.Array  # shape=(), bool


class ScaleByNewtonCGState(NamedTuple):
  """State of :func:`scale_by_newton_cg`.

  Attributes:
    count: number of updates so far (saturating).
    cg_solution: the last Newton direction, the warm start of the next solve (``None`` when
      ``warm_start=False``).
    damping: the Tikhonov damping used by the next update.
    nonfinite_count: number of updates skipped because of non-finite values (saturating).
    preconditioner_diagonal: the EMA of squared gradients behind ``preconditioner="ema"``
      (``None`` otherwise).
    info: diagnostics of the last update.
    kronecker: the EMA of the Kronecker factors and the inverse built from them at the last
      refresh, behind ``preconditioner="kronecker"`` (``None`` otherwise).
  """

  count: jax.Array  # shape=(), int32
  cg_solution: Any  # pytree like params, params dtype; None without warm start
  damping: jax.Array  # shape=(), float32
  nonfinite_count: jax.Array  # shape=(), int32
  preconditioner_diagonal: Any  # pytree like params, float32 (>= params dtype): EMA of squared
  #   gradients for preconditioner="ema"; None otherwise
  info: NewtonCGInfo
  kronecker: Any = None  # fisher_kronecker.KroneckerState for preconditioner="kronecker"


def _validate(
  *,
  damping,
  maxiter,
  tol,
  curvature,
  warm_start_decay,
  min_damping,
  max_damping,
  damping_adjustment,
  preconditioner,
  preconditioner_exponent,
  preconditioner_decay,
  preconditioner_every,
  preconditioner_damping,
  cg_backtracking,
  progress_tol,
) -> None:
  # Numbers and concrete arrays are checked; traced values (inside jit) cannot be.
  utils.check_scalar("damping", damping, low=0.0)
  utils.check_scalar("maxiter", maxiter, low=1, integer=True)
  utils.check_scalar("tol", tol, low=0.0)
  utils.check_choice("curvature", curvature, CURVATURES)
  utils.check_scalar("warm_start_decay", warm_start_decay, low=0.0, high=1.0)
  utils.check_scalar("min_damping", min_damping, low=0.0)
  utils.check_scalar("max_damping", max_damping, low=0.0, allow_inf=True)
  utils.check_scalar("damping_adjustment", damping_adjustment, low=1.0, low_inclusive=False)
  if isinstance(min_damping, numbers.Real) and isinstance(max_damping, numbers.Real):
    if max_damping < min_damping:
      raise ValueError(f"max_damping must be >= min_damping={min_damping}, got {max_damping}.")
  utils.check_choice("preconditioner", preconditioner, hf.PRECONDITIONERS)
  utils.check_scalar("preconditioner_exponent", preconditioner_exponent, low=0.0)
  utils.check_scalar(
    "preconditioner_decay", preconditioner_decay, low=0.0, high=1.0, high_inclusive=False
  )
  utils.check_scalar("preconditioner_every", preconditioner_every, low=1, integer=True)
  utils.check_choice("preconditioner_damping", preconditioner_damping, fk.DAMPINGS)
  utils.check_choice("cg_backtracking", cg_backtracking, (True, False))
  if progress_tol is not None:
    utils.check_scalar("progress_tol", progress_tol, low=0.0, low_inclusive=False)
  if (cg_backtracking or progress_tol is not None) and not isinstance(maxiter, numbers.Integral):
    raise ValueError(
      "cg_backtracking and progress_tol need a Python int maxiter (they keep per-iteration "
      f"buffers of static size), got {maxiter!r}."
    )


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _vdot(u, v, axis_name):
  return utils.pmean_if(optax.tree.vdot(u, v), axis_name)


def _up(tree):
  """Float leaves promoted to float32 at least (CG and the damping rule run there)."""
  return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, _F32)), tree)


class Fns(NamedTuple):
  """The user's functions, on the float leaves of the parameters."""

  value_fn: Callable | None
  predict_fn: Callable | None
  output_loss_fn: Callable | None
  curvature_value_fn: Callable | None = None
  curvature_predict_fn: Callable | None = None
  curvature_output_loss_fn: Callable | None = None


def _prepare(grads, params, state, fns: Fns, warm_start):
  """Float leaves of ``grads`` and ``params`` (checked against each other and ``init``) and the
  user's functions on them. Int, bool and float0 leaves take no part: the functions close over
  their values and the callers pass their gradients through unchanged."""
  full = params
  grads, params = utils.float_leaves(grads), utils.float_leaves(params)
  utils.check_grad_tree(
    grads,
    params,
    what="grads",
    against="params",
    context="newton_cg: the gradient tree does not match the params",
  )
  if warm_start:
    utils.check_grad_tree(
      params,
      state.cg_solution,
      what="params",
      against="init params",
      context="newton_cg: params do not match the params given to init",
    )

  def on_floats(fn, name):
    if fn is None:
      return None
    f = lambda p: fn(utils.restore_leaves(p, full))  # noqa: E731
    return f if name is None else utils.scalar_loss(name, f)

  def output_loss(fn, name):
    return None if fn is None else utils.scalar_loss(name, fn)

  return (
    grads,
    params,
    Fns(
      on_floats(fns.value_fn, "value_fn"),
      on_floats(fns.predict_fn, None),
      output_loss(fns.output_loss_fn, "output_loss_fn"),
      on_floats(fns.curvature_value_fn, "curvature_value_fn"),
      on_floats(fns.curvature_predict_fn, None),
      output_loss(fns.curvature_output_loss_fn, "curvature_output_loss_fn"),
    ),
  )


def _preconditioner(kind, state, g32, fisher, lam, options, axis_name):
  """``(apply M^{-1} or None, new EMA diagonal, new Kronecker state)`` for ``preconditioner=kind``;
  ``options`` is ``(exponent, decay, every, damping mode)``."""
  exponent, decay, every, mode = options
  if kind is None:
    return None, state.preconditioner_diagonal, state.kronecker
  if kind == "ema":
    diag = hf.update_ema_diagonal(state.preconditioner_diagonal, g32, decay)
    return hf.diagonal_preconditioner(diag, lam, exponent), diag, state.kronecker
  if fisher is None:
    name = "kronecker_factors" if kind == "kronecker" else "fisher_diagonal"
    helper = "fisher_kronecker" if kind == "kronecker" else "fisher_diagonal"
    raise utils.missing_argument(
      f"`{name}` for preconditioner={kind!r}",
      f"update(grads, state, params, value_fn=..., {name}=sops.{helper}("
      "per_example_loss, params, x, y))",
    )
  if kind == "kronecker":
    kron = fk.update(
      state.kronecker,
      fisher,
      refresh=state.count % every == 0,
      num_refreshes=state.count // every + 1,
      decay=decay,
      damping=lam,
      exponent=exponent,
      mode=mode,
      axis_name=axis_name,
    )
    return (lambda v: fk.apply_inverse(kron.inverse, v)), state.preconditioner_diagonal, kron
  fisher = utils.pmean_if(_up(utils.float_leaves(fisher)), axis_name)
  diag = state.preconditioner_diagonal
  return hf.diagonal_preconditioner(fisher, lam, exponent), diag, state.kronecker


def _descent_check(p, g32, enabled, axis_name):
  """``p``, or ``-g`` where ``g . p >= 0`` (when ``enabled``), with the scaled quantities the
  damping rule needs: ``(p, (sg, sp, p / sp, g.p / (sg sp)), fallback)``.

  Inner products of g and p are taken on copies scaled to max|x| = 1: with a loss times 1e20 (or
  gradients times 1e30) g.g and g.p overflow float32 although every input is finite.
  """
  sg, gh = damping_lib.unit_scaled(g32, axis_name)
  sp, ph = damping_lib.unit_scaled(p, axis_name)
  gph = _vdot(gh, ph, axis_name)  # g.p / (sg sp)
  if not enabled:
    return p, (sg, sp, ph, gph), jnp.asarray(False)
  fallback = (gph >= 0) & (sg > 0)
  p = _select(fallback, jax.tree.map(jnp.negative, g32), p)
  sp, ph = _select(fallback, (sg, jax.tree.map(jnp.negative, gh)), (sp, ph))
  gph = jnp.where(fallback, -_vdot(gh, gh, axis_name), gph)
  return p, (sg, sp, ph, gph), fallback


def _trial_loss(loss_fn, params, p_out, known):
  """``loss_fn(params + p_out)`` in float32, or ``known`` (backtracking's value) unless NaN."""

  def evaluate():
    return loss_fn(optax.tree.add(params, p_out)).astype(_F32)

  if known is None:
    return evaluate()
  return lax.cond(jnp.isnan(known), evaluate, lambda: known)


def make(
  *,
  damping,
  maxiter,
  tol,
  curvature,
  warm_start,
  warm_start_decay,
  adaptive_damping,
  min_damping,
  max_damping,
  damping_adjustment,
  descent_check,
  axis_name,
  preconditioner=None,
  preconditioner_exponent=0.75,
  preconditioner_decay=0.95,
  preconditioner_every=1,
  preconditioner_damping="factored",
  cg_backtracking=False,
  progress_tol=None,
):
  """Shared core: ``init_fn`` and an update that also returns the loss, gradient and loss_fn."""
  _validate(
    damping=damping,
    maxiter=maxiter,
    tol=tol,
    curvature=curvature,
    warm_start_decay=warm_start_decay,
    min_damping=min_damping,
    max_damping=max_damping,
    damping_adjustment=damping_adjustment,
    preconditioner=preconditioner,
    preconditioner_exponent=preconditioner_exponent,
    preconditioner_decay=preconditioner_decay,
    preconditioner_every=preconditioner_every,
    preconditioner_damping=preconditioner_damping,
    cg_backtracking=cg_backtracking,
    progress_tol=progress_tol,
  )
  save_at = backtracking_iterations(maxiter) if cg_backtracking else ()

  def init_fn(params):
    # Every leaf is a buffer of its own, so that the state can be donated to a jitted step.
    def zero():
      return jnp.zeros((), _F32)

    def false():
      return jnp.zeros((), jnp.bool_)

    floats = utils.float_leaves(params)
    return ScaleByNewtonCGState(
      count=jnp.zeros((), jnp.int32),
      cg_solution=optax.tree.zeros_like(floats) if warm_start else None,
      damping=jnp.array(damping, _F32),
      nonfinite_count=jnp.zeros((), jnp.int32),
      preconditioner_diagonal=_up(optax.tree.zeros_like(floats))
      if preconditioner == "ema"
      else None,
      info=NewtonCGInfo(
        zero(),
        jnp.zeros((), jnp.int32),
        zero(),
        zero(),
        false(),
        false(),
        zero(),
        false(),
        false(),
        false(),
      ),
      kronecker=fk.init(floats, preconditioner_damping) if preconditioner == "kronecker" else None,
    )

  def solve(matvec, g32, state, lam, fisher, params, loss_fn):
    """The damped Newton system by (preconditioned) CG, and Martens' backtracking over its
    iterates: ``(p, cg info, loss at params + p or None, new EMA diagonal)``."""
    b = jax.tree.map(jnp.negative, g32)
    x0 = None
    if warm_start:
      decay = jnp.asarray(warm_start_decay)
      x0 = jax.tree.map(lambda s: decay.astype(s.dtype) * s, _up(state.cg_solution))
    precond, diag, kron = _preconditioner(
      preconditioner,
      state,
      g32,
      fisher,
      lam,
      (
        preconditioner_exponent,
        preconditioner_decay,
        preconditioner_every,
        preconditioner_damping,
      ),
      axis_name,
    )
    p, cg, iterates = conjugate_gradient_iterates(
      curv.add_damping(matvec, lam),
      b,
      x0=x0,
      tol=tol,
      maxiter=maxiter,
      axis_name=axis_name,
      preconditioner=precond,
      progress_tol=progress_tol,
      save_at=save_at,
    )
    value_at_p = None
    if cg_backtracking:
      with jax.named_scope("newton_cg_backtracking"):
        p, value_at_p = hf.backtrack(loss_fn, params, p, iterates, cg.iterations)
    return p, cg, value_at_p, (diag, kron)

  def update_fn(grads, state, params, fns: Fns, fisher=None, value=None):
    if params is None:
      raise utils.missing_argument("params", "update(grads, state, params, value_fn=loss_fn)")
    grads, params, fns = _prepare(grads, params, state, fns, warm_start)
    value, bvp, loss_fn = hf.curvature_operator(curvature, params, fns[:3], fns[3:], value)
    if axis_name is not None:
      local_loss = loss_fn
      loss_fn = lambda p: lax.pmean(local_loss(p), axis_name)  # noqa: E731
    value = utils.pmean_if(value, axis_name)
    g = utils.pmean_if(grads, axis_name)
    bvp = curv.average_over(bvp, axis_name)
    lam = state.damping if adaptive_damping else damping
    # CG and the damping rule run in float32 at least: float16's range (6.5e4) is exceeded by the
    # squared norms of ordinary gradients, and its resolution stalls CG. The curvature product
    # itself stays in the params' dtype.
    matvec = lambda v: _up(bvp(optax.tree.cast_like(v, params)))  # noqa: E731
    g32 = _up(g)
    p, cg, value_at_p, (diag, kron) = solve(matvec, g32, state, lam, fisher, params, loss_fn)
    p, (sg, sp, ph, gph), fallback = _descent_check(p, g32, descent_check, axis_name)
    if value_at_p is not None:
      value_at_p = jnp.where(fallback, jnp.nan, value_at_p)  # p changed: recomputed if needed
    p_out = optax.tree.cast_like(p, params)

    value32 = value.astype(_F32)
    eps = jnp.finfo(jnp.result_type(value)).eps  # the resolution of the loss as computed
    # Predicted decreases are compared with 100 eps |f| in the same scaled units.
    resolution = 100 * eps * jnp.abs(value32) / sg / sp
    finite = (
      jnp.isfinite(value32)
      & utils.tree_all_finite(g32)
      & utils.tree_all_finite(p_out)
      & ~cg.nonfinite
      & jnp.isfinite(gph)
    )
    # A step whose first-order decrease g.p is below the loss's resolution cannot lower it
    # measurably (a loss times 1e-20 against an absolute damping of 1, or a converged problem).
    stalled = finite & ~(gph < -resolution)
    new_lam, rho, rejected = jnp.asarray(lam, _F32), jnp.zeros((), _F32), jnp.asarray(False)
    if adaptive_damping:
      with jax.named_scope("newton_cg_damping"):
        new_value = _trial_loss(loss_fn, params, p_out, value_at_p)
        new_lam, rho, rejected, stalled, finite = damping_lib.levenberg_marquardt(
          gph=gph,
          curvature_term=(sp / sg) * _vdot(ph, matvec(ph), axis_name),
          change=(new_value - value32) / sg / sp,
          resolution=resolution,
          damping=lam,
          finite=finite,
          min_damping=min_damping,
          max_damping=max_damping,
          adjustment=damping_adjustment,
        )

    take = finite & ~rejected
    update = _select(take, p_out, optax.tree.zeros_like(p_out))
    cg_solution = _select(take, p_out, state.cg_solution) if warm_start else None
    if diag is not None:
      diag = _select(finite, diag, state.preconditioner_diagonal)
    if kron is not None:
      kron = _select(finite, kron, state.kronecker)

    def clean(x, dtype=_F32):
      return jnp.where(finite & jnp.isfinite(x), x, 0).astype(dtype)

    info = NewtonCGInfo(
      loss=clean(value),
      cg_iterations=jnp.where(finite, cg.iterations, 0).astype(jnp.int32),
      relative_residual=clean(cg.relative_residual),
      curvature=clean(cg.curvature),
      nonpositive_curvature=finite & cg.nonpositive_curvature,
      fallback=finite & fallback,
      reduction_ratio=clean(rho),
      rejected=rejected,
      nonfinite=~finite,
      stalled=stalled,
    )
    new_state = ScaleByNewtonCGState(
      count=utils.safe_increment(state.count),
      cg_solution=cg_solution,
      damping=new_lam,
      nonfinite_count=jnp.where(
        finite, state.nonfinite_count, utils.safe_increment(state.nonfinite_count)
      ),
      preconditioner_diagonal=diag,
      info=info,
      kronecker=kron,
    )
    return update, new_state, value, g, loss_fn, params

  return init_fn, update_fn
