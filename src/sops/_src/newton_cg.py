# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Hessian-free Newton-CG as Optax gradient transformations.

:func:`scale_by_newton_cg` turns gradients into (damped, truncated) Newton directions by a
conjugate-gradient solve with matrix-free curvature products; :func:`newton_cg` chains it with a
learning rate or an optax line search.
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
from sops._src import utils
from sops._src.cg import conjugate_gradient

_CURVATURES = ("hessian", "gauss_newton")
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
    info: diagnostics of the last update.
  """

  count: jax.Array  # shape=(), int32
  cg_solution: Any  # pytree like params, params dtype; None without warm start
  damping: jax.Array  # shape=(), float32
  nonfinite_count: jax.Array  # shape=(), int32
  info: NewtonCGInfo


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
) -> None:
  # Numbers and concrete arrays are checked; traced values (inside jit) cannot be.
  utils.check_scalar("damping", damping, low=0.0)
  utils.check_scalar("maxiter", maxiter, low=1, integer=True)
  utils.check_scalar("tol", tol, low=0.0)
  utils.check_choice("curvature", curvature, _CURVATURES)
  utils.check_scalar("warm_start_decay", warm_start_decay, low=0.0, high=1.0)
  utils.check_scalar("min_damping", min_damping, low=0.0)
  utils.check_scalar("max_damping", max_damping, low=0.0, allow_inf=True)
  utils.check_scalar("damping_adjustment", damping_adjustment, low=1.0, low_inclusive=False)
  if isinstance(min_damping, numbers.Real) and isinstance(max_damping, numbers.Real):
    if max_damping < min_damping:
      raise ValueError(f"max_damping must be >= min_damping={min_damping}, got {max_damping}.")


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _vdot(u, v, axis_name):
  return utils.pmean_if(optax.tree.vdot(u, v), axis_name)


def _prepare(grads, params, state, value_fn, predict_fn, output_loss_fn, warm_start):
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

  if output_loss_fn is not None:
    output_loss_fn = utils.scalar_loss("output_loss_fn", output_loss_fn)
  return grads, params, on_floats(value_fn, "value_fn"), on_floats(predict_fn, None), output_loss_fn


def _make(
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
  )

  def init_fn(params):
    # Every leaf is a buffer of its own, so that the state can be donated to a jitted step.
    def zero():
      return jnp.zeros((), _F32)

    def false():
      return jnp.zeros((), jnp.bool_)

    return ScaleByNewtonCGState(
      count=jnp.zeros((), jnp.int32),
      cg_solution=optax.tree.zeros_like(utils.float_leaves(params)) if warm_start else None,
      damping=jnp.array(damping, _F32),
      nonfinite_count=jnp.zeros((), jnp.int32),
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
    )

  def update_fn(grads, state, params, value_fn, predict_fn, output_loss_fn):
    if params is None:
      raise utils.missing_argument("params", "update(grads, state, params, value_fn=loss_fn)")
    grads, params, value_fn, predict_fn, output_loss_fn = _prepare(
      grads, params, state, value_fn, predict_fn, output_loss_fn, warm_start
    )
    value, bvp, loss_fn = curv.linearize(curvature, params, value_fn, predict_fn, output_loss_fn)
    value = utils.pmean_if(value, axis_name)
    g = utils.pmean_if(grads, axis_name)
    bvp = curv.average_over(bvp, axis_name)
    lam = state.damping if adaptive_damping else damping
    # CG and the damping rule run in float32 at least: float16's range (6.5e4) is exceeded by the
    # squared norms of ordinary gradients, and its resolution stalls CG. The curvature product
    # itself stays in the params' dtype.
    up = lambda t: jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, _F32)), t)  # noqa: E731
    matvec = lambda v: up(bvp(optax.tree.cast_like(v, params)))  # noqa: E731
    g32 = up(g)
    b = jax.tree.map(jnp.negative, g32)
    x0 = None
    if warm_start:
      decay = jnp.asarray(warm_start_decay)
      x0 = jax.tree.map(lambda s: decay.astype(s.dtype) * s, up(state.cg_solution))
    p, cg = conjugate_gradient(
      curv.add_damping(matvec, lam), b, x0=x0, tol=tol, maxiter=maxiter, axis_name=axis_name
    )

    # Inner products of g and p are taken on copies scaled to max|x| = 1: with a loss times 1e20
    # (or gradients times 1e30) g.g and g.p overflow float32 although every input is finite.
    sg, gh = damping_lib.unit_scaled(g32, axis_name)
    sp, ph = damping_lib.unit_scaled(p, axis_name)
    gph = _vdot(gh, ph, axis_name)  # g.p / (sg sp)
    if descent_check:
      fallback = (gph >= 0) & (sg > 0)
      p = _select(fallback, b, p)
      sp, ph = _select(fallback, (sg, jax.tree.map(jnp.negative, gh)), (sp, ph))
      gph = jnp.where(fallback, -_vdot(gh, gh, axis_name), gph)
    else:
      fallback = jnp.asarray(False)
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
        new_value = utils.pmean_if(loss_fn(optax.tree.add(params, p_out)), axis_name)
        new_lam, rho, rejected, stalled, finite = damping_lib.levenberg_marquardt(
          gph=gph,
          curvature_term=(sp / sg) * _vdot(ph, matvec(ph), axis_name),
          change=(new_value.astype(_F32) - value32) / sg / sp,
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
      info=info,
    )
    return update, new_state, value, g, loss_fn, params

  return init_fn, update_fn


def scale_by_newton_cg(
  *,
  damping: jax.typing.ArrayLike = 1.0,
  maxiter: int = 10,
  tol: jax.typing.ArrayLike = 1e-3,
  curvature: str = "hessian",
  warm_start: bool = True,
  warm_start_decay: jax.typing.ArrayLike = 0.95,
  adaptive_damping: bool = True,
  min_damping: jax.typing.ArrayLike = 1e-6,
  max_damping: jax.typing.ArrayLike = 1e6,
  damping_adjustment: jax.typing.ArrayLike = 1.5,
  descent_check: bool = True,
  axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Turns gradients into damped, truncated Newton directions by conjugate gradients.

  At parameters :math:`\theta` with gradient :math:`g` and curvature :math:`B` (the Hessian
  :math:`\nabla^2 f`, or the Gauss-Newton matrix :math:`J^\top H_L J`), the update is the
  approximate solution of

  .. math::
    (B + \lambda I)\, p = -g

  by at most ``maxiter`` CG iterations stopped at :math:`\|r\| \le \mathrm{tol}\,\|g\|` or on
  non-positive curvature (:func:`sops.linalg.conjugate_gradient`). Curvature products are
  matrix-free: ``value_fn`` is linearized once per update (forward-over-reverse), so each CG
  iteration costs only the tangent pass. The output ``p`` is already a descent direction:
  ``optax.apply_updates(params, p)`` takes the Newton step, so scale it with
  ``optax.scale(lr)`` (not ``optax.scale_by_learning_rate``, which flips the sign), or use
  :func:`newton_cg`.

  Safeguards: if :math:`g^\top p \ge 0` the direction falls back to :math:`-g`
  (``descent_check``); a non-finite loss, gradient or curvature product gives a zero update and is
  recorded in the state. With ``adaptive_damping`` the Levenberg-Marquardt rule updates
  :math:`\lambda` from the reduction ratio of the full step,
  :math:`\rho = (f(\theta + p) - f(\theta)) / (g^\top p + \tfrac12 p^\top B p)` (one extra
  ``value_fn`` call and one curvature product): :math:`\lambda \leftarrow \omega\lambda` if
  :math:`\rho < 1/4`, :math:`\lambda \leftarrow \lambda/\omega` if :math:`\rho > 3/4`, clipped to
  ``[min_damping, max_damping]``; a step with :math:`\rho \le 0` (the full step would raise the
  loss) is rejected: the update is zero and ``info.rejected`` is set.

  Data parallel: under ``pmap`` with ``axis_name`` set, each replica passes its *local* gradient
  and a ``value_fn`` on its batch shard; the gradient, the loss, every curvature product and every
  CG inner product are ``pmean``-ed over ``axis_name``, so all replicas take the same CG path and
  the update equals single-device full-batch training (pmean-ing an already averaged gradient is
  harmless). Shards must have equal sizes and ``value_fn`` must be a mean over its shard.

  Defaults, and why:

  * ``curvature="hessian"``: needs only ``value_fn``, the optax convention, so
    ``nnx.Optimizer.update(model, grads, value_fn=...)`` works unchanged; for non-convex nets
    ``"gauss_newton"`` (PSD) is often better and costs less per product.
  * ``damping=1.0`` with ``adaptive_damping=True``: the first steps are short (at most
    ``||g||``-sized, gradient-descent-like) on any network whose loss is a mean; the LM rule shrinks
    the damping by ``1.5`` per step while the quadratic model is trusted, so convex problems reach
    Newton's fast local convergence within a few dozen steps and non-convex nets stay stable.
  * ``maxiter=10, tol=1e-3``: a truncated solve of ~10 curvature products per step, the usual
    Hessian-free budget; each product costs about two gradient evaluations.
  * ``warm_start=True, warm_start_decay=0.95`` (Martens 2010): CG restarts from the decayed last
    direction when that beats zero for the model (checked, one extra product).
  * ``min_damping=1e-6, max_damping=1e6, damping_adjustment=1.5`` (Martens & Sutskever 2012 use
    ``3/2`` and ``2/3``).

  Args:
    damping: Tikhonov damping :math:`\lambda \ge 0`; the initial value when ``adaptive_damping``.
    maxiter: maximum CG iterations per update, ``>= 1``.
    tol: relative CG tolerance on ``||r|| / ||g||``, ``>= 0``; ``0`` runs exactly ``maxiter``.
    curvature: ``"hessian"`` or ``"gauss_newton"``.
    warm_start: start CG from ``warm_start_decay`` times the previous direction.
    warm_start_decay: decay of the warm start, in ``[0, 1]``.
    adaptive_damping: adapt :math:`\lambda` by the Levenberg-Marquardt rule.
    min_damping: lower bound of the adaptive damping.
    max_damping: upper bound of the adaptive damping.
    damping_adjustment: factor :math:`\omega > 1` of the LM rule.
    descent_check: replace a non-descent direction by :math:`-g`.
    axis_name: ``pmap`` axis to average gradients, losses, products and inner products over.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    value_fn, predict_fn=None, output_loss_fn=None, **extra)`` takes the loss
    ``value_fn: params -> scalar`` (``predict_fn: params -> outputs`` and
    ``output_loss_fn: outputs -> scalar`` for ``"gauss_newton"``, where ``value_fn`` is optional);
    other extra arguments are ignored.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, sops
    >>> loss = lambda w: jnp.sum((w - 3.0) ** 2) + jnp.sum(w ** 4)
    >>> tx = sops.scale_by_newton_cg(damping=0.0, adaptive_damping=False)
    >>> w = jnp.array([1.5, -1.0]); state = tx.init(w)
    >>> for _ in range(8):
    ...   p, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, p)
    >>> print(jnp.round(w, 4), int(state.info.cg_iterations))
    [1. 1.] 1

  References:
    Reiz, Neckel, Bungartz, "Neural nets with a Newton conjugate gradient method on multiple
    GPUs", arXiv:2208.02017, 2022.

    Martens, "Deep learning via Hessian-free optimization", ICML 2010.

    Martens, Sutskever, "Training deep and recurrent networks with Hessian-free optimization",
    Neural Networks: Tricks of the Trade, 2012.

    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
  """
  init_fn, core = _make(
    damping=damping,
    maxiter=maxiter,
    tol=tol,
    curvature=curvature,
    warm_start=warm_start,
    warm_start_decay=warm_start_decay,
    adaptive_damping=adaptive_damping,
    min_damping=min_damping,
    max_damping=max_damping,
    damping_adjustment=damping_adjustment,
    descent_check=descent_check,
    axis_name=axis_name,
  )

  def update_fn(
    grads: optax.Updates,
    state: ScaleByNewtonCGState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    predict_fn: Callable[[Any], Any] | None = None,
    output_loss_fn: Callable[[Any], jax.Array] | None = None,
    **extra: Any,
  ) -> tuple[optax.Updates, ScaleByNewtonCGState]:
    del extra
    updates, state, *_ = core(grads, state, params, value_fn, predict_fn, output_loss_fn)
    return utils.restore_leaves(updates, grads), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def newton_cg(
  learning_rate: optax.ScalarOrSchedule = 1.0,
  *,
  linesearch: optax.GradientTransformation | None = None,
  damping: jax.typing.ArrayLike = 1.0,
  maxiter: int = 10,
  tol: jax.typing.ArrayLike = 1e-3,
  curvature: str = "hessian",
  warm_start: bool = True,
  warm_start_decay: jax.typing.ArrayLike = 0.95,
  adaptive_damping: bool = True,
  min_damping: jax.typing.ArrayLike = 1e-6,
  max_damping: jax.typing.ArrayLike = 1e6,
  damping_adjustment: jax.typing.ArrayLike = 1.5,
  descent_check: bool = True,
  axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Hessian-free Newton-CG: :func:`scale_by_newton_cg`, a learning rate, an optional line search.

  The step is :math:`\theta \leftarrow \theta + \eta\, p` with the Newton-CG direction
  :math:`p \approx -(B + \lambda I)^{-1} g` of :func:`scale_by_newton_cg` and :math:`\eta` the
  ``learning_rate`` (a float or an optax schedule), optionally refined by an optax line search
  such as ``optax.scale_by_backtracking_linesearch(max_backtracking_steps=15)`` (Armijo
  backtracking on ``value_fn``), which is fed the loss and gradient the Newton step already
  computed (``value``/``grad`` passed by the caller are not needed and are ignored). Under
  ``pmap`` the line search sees the replica-averaged loss.

  The state is the tuple ``(ScaleByNewtonCGState, learning-rate state, line-search state or
  optax.EmptyState())``; ``optax.tree.get(state, "NewtonCGInfo")`` finds the diagnostics.

  Args:
    learning_rate: step size :math:`\eta \ge 0` or a schedule; ``1.0`` is the Newton step
      (``0`` is accepted, as in optax, and gives zero updates).
    linesearch: an optax line search (``GradientTransformationExtraArgs`` taking ``value``,
      ``grad`` and ``value_fn``), or ``None``.
    damping: see :func:`scale_by_newton_cg`.
    maxiter: see :func:`scale_by_newton_cg`.
    tol: see :func:`scale_by_newton_cg`.
    curvature: see :func:`scale_by_newton_cg`.
    warm_start: see :func:`scale_by_newton_cg`.
    warm_start_decay: see :func:`scale_by_newton_cg`.
    adaptive_damping: see :func:`scale_by_newton_cg`.
    min_damping: see :func:`scale_by_newton_cg`.
    max_damping: see :func:`scale_by_newton_cg`.
    damping_adjustment: see :func:`scale_by_newton_cg`.
    descent_check: see :func:`scale_by_newton_cg`.
    axis_name: see :func:`scale_by_newton_cg`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` takes ``value_fn`` (and
    ``predict_fn``/``output_loss_fn`` for ``curvature="gauss_newton"``) as keyword arguments.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, sops
    >>> x = jax.random.normal(jax.random.key(0), (50, 3))
    >>> y = x @ jnp.array([1.0, -2.0, 0.5])
    >>> loss = lambda w: jnp.mean(jnp.log(jnp.cosh(x @ w - y)))
    >>> tx = sops.newton_cg(linesearch=optax.scale_by_backtracking_linesearch(15))
    >>> w = jnp.zeros(3); state = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s, w, value_fn=loss))
    >>> for _ in range(20):
    ...   p, state = step(w, state)
    ...   w = optax.apply_updates(w, p)
    >>> print(jnp.round(w, 3))
    [ 1.  -2.   0.5]

  References:
    Reiz, Neckel, Bungartz, "Neural nets with a Newton conjugate gradient method on multiple
    GPUs", arXiv:2208.02017, 2022.

    Martens, "Deep learning via Hessian-free optimization", ICML 2010.

    Nocedal, Wright, "Numerical Optimization", 2nd ed., Springer 2006, Section 7.1.
  """
  utils.check_scalar("learning_rate", learning_rate, low=0.0)  # 0 is accepted, as in optax
  if linesearch is not None and not isinstance(linesearch, optax.GradientTransformation):
    raise TypeError(
      "linesearch must be an optax line search such as "
      f"optax.scale_by_backtracking_linesearch(max_backtracking_steps=15), got {linesearch!r}."
    )
  init_ncg, core = _make(
    damping=damping,
    maxiter=maxiter,
    tol=tol,
    curvature=curvature,
    warm_start=warm_start,
    warm_start_decay=warm_start_decay,
    adaptive_damping=adaptive_damping,
    min_damping=min_damping,
    max_damping=max_damping,
    damping_adjustment=damping_adjustment,
    descent_check=descent_check,
    axis_name=axis_name,
  )
  lr_tx = optax.scale_by_learning_rate(learning_rate, flip_sign=False)
  ls_tx = None if linesearch is None else optax.with_extra_args_support(linesearch)

  def init_fn(params: optax.Params) -> tuple[Any, ...]:
    floats = utils.float_leaves(params)
    ls_state = optax.EmptyState() if ls_tx is None else ls_tx.init(floats)
    # Strong types throughout: optax's line searches start with weakly typed ints that their
    # update makes strong, which would make a jitted step compile twice.
    return utils.strong_types((init_ncg(params), lr_tx.init(floats), ls_state))

  def update_fn(
    grads: optax.Updates,
    state: tuple[Any, ...],
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    predict_fn: Callable[[Any], Any] | None = None,
    output_loss_fn: Callable[[Any], jax.Array] | None = None,
    **extra: Any,
  ) -> tuple[optax.Updates, tuple[Any, ...]]:
    del extra  # value/grad are recomputed by the Newton step; others are not ours.
    ncg_state, lr_state, ls_state = state
    updates, ncg_state, value, g, loss_fn, floats = core(
      grads, ncg_state, params, value_fn, predict_fn, output_loss_fn
    )
    updates, lr_state = lr_tx.update(updates, lr_state, floats)
    if ls_tx is not None:
      ls_value_fn = loss_fn
      if axis_name is not None:
        ls_value_fn = lambda p: lax.pmean(loss_fn(p), axis_name)  # noqa: E731
      updates, ls_state = ls_tx.update(
        updates, ls_state, floats, value=value, grad=g, value_fn=ls_value_fn
      )
    state = utils.strong_types((ncg_state, lr_state, ls_state))
    return utils.restore_leaves(updates, grads), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
