# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Matrix-free curvature operators against ``jax.hessian`` and explicit Jacobians.

All comparisons run in float64 on small problems; the operators and the references are exact
formulas for the same matrix evaluated in different orders, so they agree to ~1e-10 (rounding of a
few hundred flops on O(1) entries).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sops._src import curvature as curv

ATOL = 1e-10


def mlp_problem(rng, n: int = 7, d: int = 3, h: int = 4, k: int = 3):
  """A tiny tanh MLP with pytree parameters, a softmax cross-entropy output loss and data."""
  params = {
    "w1": jnp.asarray(rng.standard_normal((d, h))),
    "b1": jnp.asarray(rng.standard_normal(h)),
    "w2": jnp.asarray(rng.standard_normal((h, k))),
  }
  x = jnp.asarray(rng.standard_normal((n, d)))
  y = jax.nn.one_hot(rng.integers(0, k, n), k)

  def predict(p):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

  def output_loss(z):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z), -1))

  return params, predict, output_loss


def dense_hessian(f, params) -> np.ndarray:
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda v: f(unravel(v)))(flat))


@pytest.mark.parametrize(
  "n,d,h,k",
  [
    (7, 3, 4, 3),
    pytest.param(5, 2, 3, 2, marks=pytest.mark.slow),
    pytest.param(9, 4, 2, 4, marks=pytest.mark.slow),
  ],
)
def test_hvp_matches_jax_hessian_on_pytree_params(n, d, h, k, rng):
  with jax.enable_x64(True):
    params, predict, output_loss = mlp_problem(rng, n, d, h, k)
    f = lambda p: output_loss(predict(p)) + 0.1 * jnp.sum(p["w1"] ** 4)  # noqa: E731
    value, grad, hvp = curv.linearize_hessian(f, params)
    dense = np.asarray(curv.to_dense(hvp, params))
    reference = dense_hessian(f, params)
    ref_value, ref_grad = jax.value_and_grad(f)(params)
    # A single product on a random pytree too (not only basis vectors).
    v = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
    hv = np.asarray(ravel_pytree(hvp(v))[0])
    v_flat = np.asarray(ravel_pytree(v)[0])
    g_flat, ref_g_flat = ravel_pytree(grad)[0], ravel_pytree(ref_grad)[0]
  np.testing.assert_allclose(dense, reference, atol=ATOL)
  np.testing.assert_allclose(hv, reference @ v_flat, atol=ATOL)
  np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-14)
  np.testing.assert_allclose(g_flat, ref_g_flat, atol=ATOL)


@pytest.mark.parametrize("n,d,h,k", [(7, 3, 4, 3), (9, 4, 2, 4)])
def test_ggn_vp_matches_explicit_jacobians(n, d, h, k, rng):
  with jax.enable_x64(True):
    params, predict, output_loss = mlp_problem(rng, n, d, h, k)
    value, gvp = curv.linearize_gauss_newton(predict, output_loss, params)
    dense = np.asarray(curv.to_dense(gvp, params))
    flat, unravel = ravel_pytree(params)
    z = predict(params)
    jac = np.asarray(jax.jacfwd(lambda v: predict(unravel(v)).ravel())(flat))  # (n*k, P)
    h_out = np.asarray(jax.hessian(lambda zf: output_loss(zf.reshape(z.shape)))(z.ravel()))
    ref_value = float(output_loss(z))
    full_hessian = dense_hessian(lambda p: output_loss(predict(p)), params)
  np.testing.assert_allclose(dense, jac.T @ h_out @ jac, atol=ATOL)
  np.testing.assert_allclose(float(value), ref_value, rtol=1e-14)
  # Positive semi-definite (softmax cross-entropy is convex in the logits) ...
  assert np.linalg.eigvalsh(dense).min() > -1e-10
  # ... while the Hessian of the same non-convex net is not the same matrix.
  assert np.abs(full_hessian - dense).max() > 1e-3


def test_ggn_equals_hessian_for_linear_least_squares(rng):
  with jax.enable_x64(True):
    a = jnp.asarray(rng.standard_normal((20, 5)))
    y = jnp.asarray(rng.standard_normal(20))
    params = {"w": jnp.asarray(rng.standard_normal(4)), "b": jnp.asarray(rng.standard_normal(1))}
    predict = lambda p: a @ jnp.concatenate([p["w"], p["b"]])  # noqa: E731
    output_loss = lambda z: 0.5 * jnp.mean((z - y) ** 2)  # noqa: E731
    _, gvp = curv.linearize_gauss_newton(predict, output_loss, params)
    _, _, hvp = curv.linearize_hessian(lambda p: output_loss(predict(p)), params)
    ggn, hess = np.asarray(curv.to_dense(gvp, params)), np.asarray(curv.to_dense(hvp, params))
  # Both equal A^T A / n, up to the column order of ravel_pytree ({"b", "w"}: b first).
  a = np.asarray(a)
  ata = a.T @ a / 20
  perm = [4, 0, 1, 2, 3]
  np.testing.assert_allclose(ggn, hess, atol=ATOL)
  np.testing.assert_allclose(ggn, ata[np.ix_(perm, perm)], atol=ATOL)


def test_add_damping_adds_a_multiple_of_identity(rng):
  with jax.enable_x64(True):
    params, predict, output_loss = mlp_problem(rng)
    _, gvp = curv.linearize_gauss_newton(predict, output_loss, params)
    dense = np.asarray(curv.to_dense(gvp, params))
    damped = np.asarray(curv.to_dense(curv.add_damping(gvp, 0.25), params))
  np.testing.assert_allclose(damped - dense, 0.25 * np.eye(len(dense)), atol=ATOL)


def test_to_dense_recovers_a_nonsymmetric_matrix_column_order():
  m = np.arange(12.0).reshape(3, 4)[:, :3]  # 3x3, not symmetric
  dense = curv.to_dense(lambda v: jnp.asarray(m, jnp.float32) @ v, jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(dense), m)


def test_average_over_pmeans_products_across_replicas(devices):
  scales = jnp.arange(1.0, len(devices) + 1.0)

  def per_replica(s):
    return curv.average_over(lambda v: s * v, "i")(jnp.ones(2))

  out = jax.pmap(per_replica, axis_name="i")(scales)
  np.testing.assert_allclose(out, np.full((len(devices), 2), np.mean(np.asarray(scales))))
