# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Hessian-free Newton-CG as Optax gradient transformations.

:func:`scale_by_newton_cg` turns gradients into (damped, truncated) Newton directions by a
conjugate-gradient solve with matrix-free curvature products; :func:`newton_cg` chains it with a
learning rate or an optax line search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from sops._src import newton_cg_step, utils
from sops._src.newton_cg_step import NewtonCGInfo, ScaleByNewtonCGState

__all__ = ["NewtonCGInfo", "ScaleByNewtonCGState", "newton_cg", "scale_by_newton_cg"]


def _fisher(preconditioner, fisher_diagonal, kronecker_factors):
  """The extra argument that feeds ``preconditioner``."""
  return kronecker_factors if preconditioner == "kronecker" else fisher_diagonal


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
  preconditioner: str | None = None,
  preconditioner_exponent: jax.typing.ArrayLike = 0.75,
  preconditioner_decay: jax.typing.ArrayLike = 0.95,
  preconditioner_every: int = 1,
  preconditioner_damping: str = "factored",
  cg_backtracking: bool = False,
  progress_tol: float | None = None,
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
    preconditioner: CG preconditioner :math:`M = (D + \lambda I)^\xi` (Martens 2010):
      ``None``; ``"ema"``, :math:`D` an EMA of squared gradients (no extra argument);
      ``"fisher"``, :math:`D` passed every update as ``fisher_diagonal`` (mean of squared
      per-example gradients, :func:`sops.fisher_diagonal`); or ``"kronecker"``, :math:`D` a
      Kronecker-factored Fisher per leaf (K-FAC's block approximation), its factors passed as
      ``kronecker_factors`` (:func:`sops.fisher_kronecker`, or a function of no arguments
      returning them, called only on refreshes) and averaged with ``preconditioner_decay``.
    preconditioner_exponent: :math:`\xi \ge 0` (Martens: 0.75; 1 for ``"kronecker"`` with
      factors from sampled targets).
    preconditioner_decay: decay of the ``"ema"`` diagonal and of the ``"kronecker"`` factors'
      EMA, in ``[0, 1)``.
    preconditioner_every: ``"kronecker"`` refreshes its factors and inverse every this many
      updates (K-FAC's amortisation; ``1``: every update).
    preconditioner_damping: how ``"kronecker"`` adds the damping to its factored Fisher:
      ``"factored"`` (K-FAC's split between the factors, which adds more damping where it is
      small against the curvature; better on the deep autoencoder benchmark) or ``"exact"``
      (``F + lambda I`` from the factors' eigendecompositions; far better on the linear
      least-squares test).
    cg_backtracking: keep the CG iterates at iterations ``ceil(1.3^j)`` and take the one with
      the lowest loss on the batch, walking back from the last (Martens 2010); costs a forward
      pass per iterate tried and needs an integer ``maxiter``.
    progress_tol: Martens' relative-progress CG stop (``5e-4`` in the paper; ``None``: off);
      see :func:`sops.linalg.conjugate_gradient`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params, *,
    value_fn, predict_fn=None, output_loss_fn=None, **extra)`` takes the loss
    ``value_fn: params -> scalar`` (``predict_fn: params -> outputs`` and
    ``output_loss_fn: outputs -> scalar`` for ``"gauss_newton"``, where ``value_fn`` is optional);
    ``curvature_value_fn`` (or ``curvature_predict_fn`` and ``curvature_output_loss_fn``), the
    same on a curvature mini-batch, build the curvature products there while the gradient and
    the loss stay on the full batch (Martens 2010); ``fisher_diagonal`` feeds
    ``preconditioner="fisher"``, ``kronecker_factors`` ``"kronecker"``; ``value``, the loss
    at ``params`` on the gradient batch (as ``jax.value_and_grad`` returns it), saves a forward
    pass when the curvature has its own batch. Other extra arguments are ignored.

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
  init_fn, core = newton_cg_step.make(
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
    preconditioner=preconditioner,
    preconditioner_exponent=preconditioner_exponent,
    preconditioner_decay=preconditioner_decay,
    preconditioner_every=preconditioner_every,
    preconditioner_damping=preconditioner_damping,
    cg_backtracking=cg_backtracking,
    progress_tol=progress_tol,
  )

  def update_fn(
    grads: optax.Updates,
    state: ScaleByNewtonCGState,
    params: optax.Params | None = None,
    *,
    value_fn: Callable[[Any], jax.Array] | None = None,
    predict_fn: Callable[[Any], Any] | None = None,
    output_loss_fn: Callable[[Any], jax.Array] | None = None,
    curvature_value_fn: Callable[[Any], jax.Array] | None = None,
    curvature_predict_fn: Callable[[Any], Any] | None = None,
    curvature_output_loss_fn: Callable[[Any], jax.Array] | None = None,
    fisher_diagonal: Any = None,
    kronecker_factors: Any = None,
    value: jax.Array | None = None,
    **extra: Any,
  ) -> tuple[optax.Updates, ScaleByNewtonCGState]:
    del extra
    fns = newton_cg_step.Fns(
      value_fn,
      predict_fn,
      output_loss_fn,
      curvature_value_fn,
      curvature_predict_fn,
      curvature_output_loss_fn,
    )
    fisher = _fisher(preconditioner, fisher_diagonal, kronecker_factors)
    updates, state, *_ = core(grads, state, params, fns, fisher, value)
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
  preconditioner: str | None = None,
  preconditioner_exponent: jax.typing.ArrayLike = 0.75,
  preconditioner_decay: jax.typing.ArrayLike = 0.95,
  preconditioner_every: int = 1,
  preconditioner_damping: str = "factored",
  cg_backtracking: bool = False,
  progress_tol: float | None = None,
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
    preconditioner: see :func:`scale_by_newton_cg`.
    preconditioner_exponent: see :func:`scale_by_newton_cg`.
    preconditioner_decay: see :func:`scale_by_newton_cg`.
    preconditioner_every: see :func:`scale_by_newton_cg`.
    preconditioner_damping: see :func:`scale_by_newton_cg`.
    cg_backtracking: see :func:`scale_by_newton_cg`.
    progress_tol: see :func:`scale_by_newton_cg`.

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
  init_ncg, core = newton_cg_step.make(
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
    preconditioner=preconditioner,
    preconditioner_exponent=preconditioner_exponent,
    preconditioner_decay=preconditioner_decay,
    preconditioner_every=preconditioner_every,
    preconditioner_damping=preconditioner_damping,
    cg_backtracking=cg_backtracking,
    progress_tol=progress_tol,
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
    curvature_value_fn: Callable[[Any], jax.Array] | None = None,
    curvature_predict_fn: Callable[[Any], Any] | None = None,
    curvature_output_loss_fn: Callable[[Any], jax.Array] | None = None,
    fisher_diagonal: Any = None,
    kronecker_factors: Any = None,
    value: jax.Array | None = None,
    **extra: Any,
  ) -> tuple[optax.Updates, tuple[Any, ...]]:
    del extra  # grad is recomputed by the Newton step; others are not ours.
    ncg_state, lr_state, ls_state = state
    fns = newton_cg_step.Fns(
      value_fn,
      predict_fn,
      output_loss_fn,
      curvature_value_fn,
      curvature_predict_fn,
      curvature_output_loss_fn,
    )
    fisher = _fisher(preconditioner, fisher_diagonal, kronecker_factors)
    updates, ncg_state, value, g, loss_fn, floats = core(
      grads, ncg_state, params, fns, fisher, value
    )
    updates, lr_state = lr_tx.update(updates, lr_state, floats)
    if ls_tx is not None:
      updates, ls_state = ls_tx.update(
        updates, ls_state, floats, value=value, grad=g, value_fn=loss_fn
      )
    state = utils.strong_types((ncg_state, lr_state, ls_state))
    return utils.restore_leaves(updates, grads), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
