# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Matrix-free curvature operators: Hessian- and Gauss-Newton-vector products on pytrees.

Each builder linearizes once at the current parameters and returns a linear function
``v -> B v`` whose every call pays only the linear (tangent) part of the computation, the habit of
kfac-jax's curvature blocks: multiply matrix-free, and materialise with :func:`to_dense` on small
problems so tests can compare against ``jax.hessian`` and explicit Jacobians.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sops._src import utils

Matvec = Callable[[Any], Any]


def linearize_hessian(
  value_fn: Callable[[Any], jax.Array], params: Any
) -> tuple[jax.Array, Any, Matvec]:
  r"""Loss, gradient and a Hessian-vector product linearized at ``params``.

  Forward-over-reverse (Pearlmutter): the gradient map :math:`\theta \mapsto \nabla f(\theta)` is
  linearized once with ``jax.linearize``, so the returned ``hvp`` evaluates
  :math:`v \mapsto \nabla^2 f(\theta)\, v` by replaying only the tangent computation (no new
  forward or backward pass of ``f``), which is what each CG iteration needs.

  Args:
    value_fn: the scalar loss, ``params -> scalar``.
    params: the point of linearization (any pytree of float arrays).

  Returns:
    ``(value, grad, hvp)``: :math:`f(\theta)`, :math:`\nabla f(\theta)` (shaped like ``params``)
    and the linear map ``hvp(v) = H v``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.curvature import linearize_hessian
    >>> f = lambda w: jnp.sum(w ** 3)
    >>> value, grad, hvp = linearize_hessian(f, jnp.array([1.0, 2.0]))
    >>> print(float(value), hvp(jnp.array([1.0, 1.0])))
    9.0 [ 6. 12.]

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
  """

  def grad_and_value(p):
    value, grad = jax.value_and_grad(value_fn)(p)
    return grad, value

  grad, hvp, value = jax.linearize(grad_and_value, params, has_aux=True)
  return value, grad, hvp


def linearize_gauss_newton(
  predict_fn: Callable[[Any], Any],
  output_loss_fn: Callable[[Any], jax.Array],
  params: Any,
) -> tuple[jax.Array, Matvec]:
  r"""Loss and a generalized Gauss-Newton-vector product linearized at ``params``.

  For :math:`f(\theta) = L(z(\theta))` with outputs :math:`z` = ``predict_fn(params)`` and loss
  :math:`L` = ``output_loss_fn``, the Gauss-Newton matrix drops the second derivatives of the
  network and keeps those of the loss:

  .. math::
    G = J^\top H_L J, \qquad J = \partial z / \partial \theta, \quad H_L = \nabla^2_z L.

  It is positive semi-definite whenever :math:`L` is convex in :math:`z` (squared error,
  softmax cross-entropy), the right curvature for non-convex nets (Martens 2010). ``predict_fn``
  is linearized once (``J v``), its transpose gives ``J^T u`` and ``H_L`` is a linearized HVP at
  the outputs, so each product costs one tangent-forward and one backward pass of the network.

  Args:
    predict_fn: ``params -> outputs`` (any pytree, e.g. logits of shape ``(batch, classes)``).
    output_loss_fn: ``outputs -> scalar``, the loss as a function of the outputs only.
    params: the point of linearization.

  Returns:
    ``(value, ggn_vp)``: :math:`L(z(\theta))` and the linear map ``ggn_vp(v) = G v``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.curvature import linearize_gauss_newton
    >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    >>> predict = lambda w: x @ w
    >>> loss = lambda z: 0.5 * jnp.sum(z ** 2)
    >>> value, gvp = linearize_gauss_newton(predict, loss, jnp.array([1.0, 1.0]))
    >>> print(float(value), gvp(jnp.array([1.0, 0.0])))  # x^T x e_1
    2.5 [2. 1.]

  References:
    Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
    Neural Computation 14(7), 2002.

    Martens, "Deep learning via Hessian-free optimization", ICML 2010.
  """
  outputs, jvp_fn = jax.linearize(predict_fn, params)
  vjp_fn = jax.linear_transpose(jvp_fn, params)
  value, _, hess_out = linearize_hessian(output_loss_fn, outputs)

  def ggn_vp(v):
    (out,) = vjp_fn(hess_out(jvp_fn(v)))
    return out

  return value, ggn_vp


def add_damping(matvec: Matvec, damping: jax.typing.ArrayLike) -> Matvec:
  r"""The Tikhonov-damped operator :math:`v \mapsto (B + \lambda I) v`.

  Args:
    matvec: the undamped product ``v -> B v``.
    damping: :math:`\lambda \ge 0` (scalar, may be traced).

  Returns:
    The damped linear map.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.curvature import add_damping
    >>> print(add_damping(lambda v: 2.0 * v, 0.5)(jnp.ones(2)))
    [2.5 2.5]
  """

  def damped(v):
    bv = matvec(v)
    return jax.tree.map(lambda a, b: a + jnp.asarray(damping, a.dtype) * b, bv, v)

  return damped


def average_over(matvec: Matvec, axis_name: str | None) -> Matvec:
  """``v -> pmean(B v, axis_name)``: the full-batch operator from per-replica batch shards.

  The identity wrapper when ``axis_name`` is ``None``.

  Args:
    matvec: the per-replica product.
    axis_name: mapped axis to average over, or ``None``.

  Returns:
    The replica-averaged linear map.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.curvature import average_over
    >>> print(average_over(lambda v: 3.0 * v, None)(jnp.ones(2)))
    [3. 3.]
  """
  if axis_name is None:
    return matvec
  return lambda v: utils.pmean_if(matvec(v), axis_name)


def to_dense(matvec: Matvec, params: Any) -> jax.Array:
  """Materialises a linear operator on pytrees shaped like ``params`` as an ``(n, n)`` matrix.

  Columns are ``matvec`` applied to the basis vectors of the flattened parameters
  (``jax.flatten_util.ravel_pytree`` order), batched with ``vmap``. For tests on small problems.

  Args:
    matvec: a linear map on pytrees shaped like ``params``.
    params: a pytree giving the structure, shapes and dtype.

  Returns:
    The dense matrix ``B`` with ``B @ ravel(v) == ravel(matvec(v))``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from sops._src.curvature import to_dense
    >>> print(to_dense(lambda v: {"a": 2.0 * v["a"]}, {"a": jnp.zeros(2)}))
    [[2. 0.]
     [0. 2.]]
  """
  flat, unravel = ravel_pytree(params)
  eye = jnp.eye(flat.size, dtype=flat.dtype)
  columns = jax.vmap(lambda e: ravel_pytree(matvec(unravel(e)))[0])(eye)
  return columns.T


def linearize(
  curvature: str,
  params: Any,
  value_fn: Callable | None,
  predict_fn: Callable | None,
  output_loss_fn: Callable | None,
) -> tuple[jax.Array, Callable, Callable]:
  """``(loss, curvature-vector product, loss_fn)`` at ``params`` for ``curvature``
  (``"hessian"``: ``value_fn``; ``"gauss_newton"``: ``predict_fn`` and ``output_loss_fn``, and
  ``value_fn`` if given); ``TypeError`` naming what is missing."""
  if curvature == "hessian":
    if value_fn is None:
      raise utils.missing_argument(
        "the loss as `value_fn`",
        "update(grads, state, params, value_fn=loss_fn) with loss_fn(params) -> "
        "scalar (close over the batch)",
      )
    with jax.named_scope("newton_cg_linearize"):
      value, _, bvp = linearize_hessian(value_fn, params)
    return value, bvp, value_fn
  if predict_fn is None or output_loss_fn is None:
    raise utils.missing_argument(
      "`predict_fn` and `output_loss_fn` for curvature='gauss_newton'",
      "update(grads, state, params, predict_fn=lambda p: model.apply(p, x), "
      "output_loss_fn=lambda outputs: loss(outputs, y)); value_fn is optional and "
      "defaults to output_loss_fn(predict_fn(params))",
    )
  with jax.named_scope("newton_cg_linearize"):
    value, bvp = linearize_gauss_newton(predict_fn, output_loss_fn, params)
  if value_fn is None:
    return value, bvp, lambda p: output_loss_fn(predict_fn(p))
  return value_fn(params), bvp, value_fn
