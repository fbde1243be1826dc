# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Martens' Hessian-free ingredients of Newton-CG: curvature mini-batches, a diagonal CG
preconditioner and CG iterate backtracking.

Each is a small function used by :mod:`sops._src.newton_cg_step`: :func:`curvature_operator`
picks the batch the curvature products are built on, :func:`diagonal_preconditioner` builds
Martens' ``(diag + lambda)^-xi`` scaling, and :func:`backtrack` picks the CG iterate with the
lowest loss.

References:
  Martens, "Deep learning via Hessian-free optimization", ICML 2010, Sections 4.3-4.7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sops._src import curvature as curv
from sops._src import utils
from sops._src.cg import CGIterates

PRECONDITIONERS = (None, "ema", "fisher", "kronecker")


def curvature_operator(
  curvature: str,
  params: Any,
  fns: tuple[Callable | None, Callable | None, Callable | None],
  curvature_fns: tuple[Callable | None, Callable | None, Callable | None],
  value: jax.Array | None = None,
) -> tuple[jax.Array, Callable, Callable]:
  """``(loss, curvature-vector product, loss_fn)`` at ``params``.

  ``fns`` are the gradient batch's ``(value_fn, predict_fn, output_loss_fn)``. When any of
  ``curvature_fns`` (the same three on a curvature mini-batch) is given, the product is built on
  that batch (Martens 2010, Section 4.3: the curvature changes slowly and tolerates a smaller
  batch than the gradient) and the loss on the gradient batch is one forward pass, or ``value``
  when the caller has it (from ``jax.value_and_grad``); otherwise both come from ``fns`` (one
  linearization).
  """
  if all(f is None for f in curvature_fns):
    return curv.linearize(curvature, params, *fns)
  _, bvp, _ = curv.linearize(curvature, params, *curvature_fns)
  value_fn, predict_fn, output_loss_fn = fns
  if value_fn is None:
    if predict_fn is None or output_loss_fn is None:
      raise utils.missing_argument(
        "the gradient batch's loss (`value_fn`, or `predict_fn` and `output_loss_fn`) next to "
        "the curvature batch's functions",
        "update(grads, state, params, value_fn=loss_on_batch, "
        "curvature_value_fn=loss_on_curvature_batch)",
      )
    value_fn = lambda p: output_loss_fn(predict_fn(p))  # noqa: E731
  return (value_fn(params) if value is None else value), bvp, value_fn


def update_ema_diagonal(acc: Any, grads: Any, decay: jax.typing.ArrayLike) -> Any:
  """``decay * acc + (1 - decay) * g^2``: the cheap diagonal of :func:`diagonal_preconditioner`."""
  d = jnp.asarray(decay)
  return jax.tree.map(lambda a, g: (d * a + (1 - d) * jnp.square(g)).astype(a.dtype), acc, grads)


def diagonal_preconditioner(
  diagonal: Any, damping: jax.typing.ArrayLike, exponent: jax.typing.ArrayLike
) -> Callable[[Any], Any]:
  r"""``v -> v / (diag + lambda)^xi``: Martens' CG preconditioner :math:`M = (D + \lambda I)^\xi`.

  Args:
    diagonal: pytree of non-negative arrays shaped like ``v``: Martens uses the mean of squared
      per-example gradients (:func:`sops.fisher_diagonal`), a cheaper stand-in is an EMA of
      squared mini-batch gradients.
    damping: the Tikhonov damping :math:`\lambda` of the system being solved.
    exponent: :math:`\xi` (Martens: 0.75); 0 gives the identity.

  Returns:
    The linear map ``v -> M^{-1} v`` for :func:`sops.linalg.conjugate_gradient`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.hessian_free import diagonal_preconditioner
    >>> apply = diagonal_preconditioner(jnp.array([3.0, 15.0]), 1.0, 0.5)
    >>> print(apply(jnp.array([2.0, 4.0])))
    [1. 1.]

  References:
    Martens, "Deep learning via Hessian-free optimization", ICML 2010, Section 4.7.
  """
  lam = jnp.asarray(damping, jnp.float32)
  xi = jnp.asarray(exponent, jnp.float32)
  # Scaled by its largest entry so that float32 never under- or overflows; v / (c m) with a
  # positive constant c is the same preconditioner up to scale, which CG does not see.
  inv = jax.tree.map(lambda d: (jnp.maximum(d.astype(jnp.float32), 0) + lam) ** -xi, diagonal)
  top = utils.max_abs(inv)
  top = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
  inv = jax.tree.map(lambda m: jnp.where(jnp.isfinite(m), m / top, 1.0), inv)
  return lambda v: jax.tree.map(lambda x, m: x * m.astype(x.dtype), v, inv)


def fisher_diagonal(per_example_loss: Callable[..., jax.Array], params: Any, *batch: Any) -> Any:
  r"""Mean of squared per-example gradients, :math:`\frac1n \sum_i (\nabla \ell_i)^2`.

  The diagonal of the empirical Fisher, which Martens' preconditioner raises to ``-0.75``: pass
  it to a Newton-CG update with ``preconditioner="fisher"`` as ``fisher_diagonal=...``. Costs one
  ``vmap`` of the gradient over the batch.

  Args:
    per_example_loss: ``(params, *example) -> scalar`` for one example (no batch axis).
    params: the parameters.
    *batch: arrays with a leading batch axis, one per argument of ``per_example_loss``.

  Returns:
    A pytree shaped like ``params``.

  Examples:
    >>> import jax.numpy as jnp, sops
    >>> loss = lambda w, x, y: (x @ w - y) ** 2
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])
    >>> print(sops.fisher_diagonal(loss, jnp.zeros(2), x, y))
    [2. 0.]

  References:
    Martens, "Deep learning via Hessian-free optimization", ICML 2010, Section 4.7.
  """
  grads = jax.vmap(jax.grad(per_example_loss), in_axes=(None, *([0] * len(batch))))(params, *batch)
  return jax.tree.map(lambda g: jnp.mean(jnp.square(g), axis=0), grads)


def backtrack(
  loss_fn: Callable[[Any], jax.Array],
  params: Any,
  p_final: Any,
  iterates: CGIterates,
  iterations: jax.Array,
) -> tuple[Any, jax.Array]:
  """Martens' CG backtracking: the iterate with the lowest ``loss_fn(params + p)``.

  Starting from the last CG iterate, walks back through the saved earlier ones (geometrically
  spaced, :func:`sops._src.cg.backtracking_iterations`) while the loss keeps decreasing; CG
  minimises the quadratic model, which on a non-quadratic loss (and a mini-batch) over-fits with
  more iterations, so an earlier iterate is often better.

  Args:
    loss_fn: ``params -> scalar`` on the gradient batch (replica-averaged when data parallel).
    params: the current parameters.
    p_final: the last CG iterate.
    iterates: the saved iterates.
    iterations: the number of completed CG iterations (the last iterate's index).

  Returns:
    ``(p, loss)``: the chosen direction and ``loss_fn(params + p)``.
  """

  def value(p):
    return loss_fn(optax.tree.add(params, optax.tree.cast_like(p, params))).astype(jnp.float32)

  def pick(j):
    return jax.tree.map(lambda x: x[j], iterates.iterates)

  n = iterates.iterations.shape[0]
  usable = iterates.valid & (iterates.iterations < iterations)

  def cond_fn(c):
    j, _, _, done = c
    return (j >= 0) & ~done

  def body_fn(c):
    j, best, best_j, _ = c
    f = lax.cond(usable[j], lambda: value(pick(j)), lambda: jnp.asarray(jnp.inf, jnp.float32))
    better = f < best
    done = usable[j] & ~better
    return j - 1, jnp.where(better, f, best), jnp.where(better, j, best_j), done

  f_last = value(p_final)
  f_last = jnp.where(jnp.isfinite(f_last), f_last, jnp.inf)
  init = (jnp.asarray(n - 1), f_last, jnp.asarray(-1), jnp.asarray(False))
  _, best, best_j, _ = lax.while_loop(cond_fn, body_fn, init)
  chosen = pick(jnp.maximum(best_j, 0))
  p = jax.tree.map(lambda a, b: jnp.where(best_j >= 0, a, b), chosen, p_final)
  return p, best
