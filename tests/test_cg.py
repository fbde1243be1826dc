# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Conjugate gradients on pytrees (``sops.linalg.conjugate_gradient``) against dense float64 NumPy.

Most tests run in float64 (``jax.enable_x64`` context) so that the comparison with
``numpy.linalg.solve`` can be tight: CG with relative tolerance ``tol`` has a relative error of at
most ``cond(A) * tol`` (the residual bound times ``||A^-1|| ||A||``), which sets each tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import sops
from sops.linalg import conjugate_gradient


def random_spd(rng: np.random.Generator, n: int, cond: float) -> np.ndarray:
  """A random symmetric positive-definite matrix with condition number ``cond``."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  eigs = np.geomspace(1.0, cond, n)
  return (q * eigs) @ q.T


@pytest.mark.parametrize("n,cond", [(5, 10.0), (30, 1e3), (80, 1e4)])
def test_cg_matches_dense_solve_on_spd_systems(n, cond, rng):
  a, b = random_spd(rng, n, cond), rng.standard_normal(n)
  expected = np.linalg.solve(a, b)
  with jax.enable_x64(True):
    x, info = conjugate_gradient(
      lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=1e-12, maxiter=10 * n
    )
    assert x.dtype == jnp.float64
  # ||x - x*|| / ||x*|| <= cond * tol = cond * 1e-12 (plus a little rounding).
  np.testing.assert_allclose(x, expected, rtol=0, atol=10 * cond * 1e-12 * np.linalg.norm(expected))
  assert bool(info.converged) and not bool(info.nonpositive_curvature)
  assert float(info.relative_residual) <= 1e-12
  assert 0 < int(info.iterations) <= 10 * n


def test_cg_solves_pytree_structured_systems(rng):
  tree = {"w": np.zeros((3, 2)), "b": np.zeros(2), "s": np.zeros(())}
  n = sum(x.size for x in tree.values())
  a = random_spd(rng, n, 100.0)
  b_flat = rng.standard_normal(n)
  expected = np.linalg.solve(a, b_flat)
  with jax.enable_x64(True):
    a_j = jnp.asarray(a)
    _, unravel = ravel_pytree(jax.tree.map(jnp.asarray, tree))

    def matvec(v):
      return unravel(a_j @ ravel_pytree(v)[0])

    x, info = conjugate_gradient(matvec, unravel(jnp.asarray(b_flat)), tol=1e-12, maxiter=100)
    x_flat = np.asarray(ravel_pytree(x)[0])
  assert jax.tree.structure(x) == jax.tree.structure(tree)
  assert jax.tree.map(jnp.shape, x) == jax.tree.map(np.shape, tree)
  np.testing.assert_allclose(x_flat, expected, atol=1e-9)
  assert bool(info.converged)


def test_cg_keeps_the_dtype_of_each_leaf_of_a_mixed_precision_pytree(rng):
  # A float64 and a float32 leaf: the scalars alpha, beta are float64, the iterates keep dtypes.
  d64, d32 = rng.uniform(1.0, 10.0, 5), rng.uniform(1.0, 10.0, 3).astype(np.float32)
  b64, b32 = rng.standard_normal(5), rng.standard_normal(3).astype(np.float32)
  with jax.enable_x64(True):
    b = {"a": jnp.asarray(b64), "c": jnp.asarray(b32)}
    matvec = lambda v: {"a": d64 * v["a"], "c": d32 * v["c"]}  # noqa: E731
    # tol 1e-9: a relative residual of 1e-6 does not bound each entry's relative error, and an
    # entry near zero missed rtol=1e-5 for 18 of 300 seeds (0 of 300 at 1e-9, all converged).
    x, info = jax.jit(lambda b: conjugate_gradient(matvec, b, tol=1e-9, maxiter=20))(b)
  assert x["a"].dtype == jnp.float64 and x["c"].dtype == jnp.float32
  assert bool(info.converged)
  np.testing.assert_allclose(x["a"], b64 / d64, rtol=1e-5)
  np.testing.assert_allclose(x["c"], b32 / d32, rtol=1e-5)


def test_cg_relative_stop_is_scale_invariant_and_honest():
  rng = np.random.default_rng(2)
  a, b = random_spd(rng, 40, 1e3), rng.standard_normal(40)
  with jax.enable_x64(True):
    # Scaling by a power of two is exact in floating point, so the iterations must coincide.
    runs = [
      conjugate_gradient(lambda v: jnp.asarray(a) @ v, s * jnp.asarray(b), tol=1e-4)
      for s in (1.0, 2.0**20)
    ]
  (x1, i1), (x2, i2) = runs
  assert int(i1.iterations) == int(i2.iterations)
  np.testing.assert_allclose(np.asarray(x2), 2.0**20 * np.asarray(x1), rtol=1e-12)
  # The recorded residual is the true residual ||b - A x|| / ||b|| and meets the tolerance.
  true_rel = np.linalg.norm(b - a @ np.asarray(x1)) / np.linalg.norm(b)
  assert true_rel <= 1e-4
  np.testing.assert_allclose(float(i1.relative_residual), true_rel, rtol=1e-6)


@pytest.mark.parametrize("maxiter", [1, 3, 7])
def test_cg_with_zero_tol_runs_exactly_maxiter_iterations(maxiter):
  rng = np.random.default_rng(3)
  a, b = random_spd(rng, 20, 100.0), rng.standard_normal(20)
  x, info = conjugate_gradient(
    lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.asarray(b, jnp.float32), tol=0.0, maxiter=maxiter
  )
  assert int(info.iterations) == maxiter
  assert not bool(info.converged)


def krylov_minimiser(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
  """argmin of 0.5 x^T A x - b^T x over span{b, Ab, ..., A^(k-1) b}: the k-th CG iterate."""
  v = np.stack([np.linalg.matrix_power(a, i) @ b for i in range(k)], axis=1)
  v, _ = np.linalg.qr(v)
  return v @ np.linalg.solve(v.T @ a @ v, v.T @ b)


def test_cg_iterates_are_krylov_minimisers(rng):
  a, b = random_spd(rng, 12, 50.0), rng.standard_normal(12)
  with jax.enable_x64(True):
    for k in (1, 2, 4):
      x, _ = conjugate_gradient(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=0.0, maxiter=k)
      np.testing.assert_allclose(x, krylov_minimiser(a, b, k), rtol=1e-8, atol=1e-10)


def test_cg_stops_on_negative_curvature_with_last_good_iterate():
  rng = np.random.default_rng(5)
  n = 10
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  eigs = np.concatenate([np.linspace(1.0, 5.0, n - 1), [-3.0]])
  a = (q * eigs) @ q.T
  b = rng.standard_normal(n)
  with jax.enable_x64(True):
    x, info = conjugate_gradient(
      lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=1e-12, maxiter=100
    )
  k = int(info.iterations)
  assert bool(info.nonpositive_curvature) and not bool(info.converged)
  assert float(info.curvature) <= 0
  assert 1 <= k < n
  # The returned point is the k-th iterate, which is the Krylov-space minimiser.
  np.testing.assert_allclose(x, krylov_minimiser(a, b, k), rtol=1e-8, atol=1e-10)


def test_cg_returns_rhs_on_negative_curvature_at_first_iteration():
  a = np.diag([2.0, -1.0, 3.0])
  b = np.array([0.1, 2.0, 0.1])  # b^T A b = 0.02 - 4 + 0.03 < 0
  x, info = conjugate_gradient(
    lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.asarray(b, jnp.float32), tol=1e-6, maxiter=10
  )
  assert bool(info.nonpositive_curvature) and int(info.iterations) == 0
  np.testing.assert_allclose(x, b, rtol=1e-7)
  np.testing.assert_allclose(float(info.curvature), b @ a @ b / (b @ b), rtol=1e-5)


def test_cg_warm_start_at_solution_needs_no_iteration():
  rng = np.random.default_rng(6)
  a, b = random_spd(rng, 15, 10.0), rng.standard_normal(15)
  with jax.enable_x64(True):
    matvec = lambda v: jnp.asarray(a) @ v  # noqa: E731
    x_star = jnp.asarray(np.linalg.solve(a, b))
    x, info = conjugate_gradient(matvec, jnp.asarray(b), x0=x_star, tol=1e-8)
  assert int(info.iterations) == 0 and bool(info.converged)
  np.testing.assert_allclose(x, x_star, rtol=1e-12)


def test_cg_discards_warm_start_worse_than_zero():
  rng = np.random.default_rng(7)
  a, b = random_spd(rng, 15, 10.0), rng.standard_normal(15)
  x_star = np.linalg.solve(a, b)
  bad = -3.0 * x_star  # q(bad) = 4.5 x*^T A x* + 3 b^T x* > 0 = q(0)
  assert 0.5 * bad @ a @ bad - b @ bad > 0
  with jax.enable_x64(True):
    matvec = lambda v: jnp.asarray(a) @ v  # noqa: E731
    cold, cold_info = conjugate_gradient(matvec, jnp.asarray(b), tol=0.0, maxiter=3)
    warm, warm_info = conjugate_gradient(
      matvec, jnp.asarray(b), x0=jnp.asarray(bad), tol=0.0, maxiter=3
    )
  np.testing.assert_allclose(warm, cold, rtol=1e-12)
  assert int(warm_info.iterations) == int(cold_info.iterations) == 3


def test_cg_flags_nonfinite_products_and_returns_finite_iterate():
  def matvec(v):
    return jnp.where(jnp.abs(v[0]) > 0.5, jnp.nan, 1.0) * v

  b = jnp.array([1.0, 0.0, 0.0])
  x, info = conjugate_gradient(matvec, b, tol=1e-6, maxiter=5)
  assert bool(info.nonfinite) and int(info.iterations) == 0
  assert bool(jnp.all(jnp.isfinite(x)))


@pytest.mark.parametrize("tol", [-1.0, -1e-8, float("nan"), np.float32(-0.5)])
def test_cg_rejects_negative_or_nan_tol(tol):
  # tol=-1 used to act like tol=1 (the stop compares tol^2 ||b||^2) and return 0 as "converged".
  with pytest.raises(ValueError, match="tol"):
    conjugate_gradient(lambda v: 2.0 * v, jnp.ones(3), tol=tol, maxiter=5)


@pytest.mark.parametrize("maxiter", [0, -3, np.int32(0)])
def test_cg_rejects_static_maxiter_below_one(maxiter):
  # maxiter=0 used to return x = 0 silently, with no iteration and converged=False.
  with pytest.raises(ValueError, match="maxiter"):
    conjugate_gradient(lambda v: 2.0 * v, jnp.ones(3), tol=1e-6, maxiter=maxiter)


@pytest.mark.parametrize("at_first_iteration", [True, False])
def test_cg_treats_exactly_zero_curvature_as_nonpositive(at_first_iteration):
  # A singular PSD operator with b partly in its null space: d^T A d is exactly 0 at the direction
  # that lies in the null space. That used to be flagged nonfinite (alpha = rr / 0) and return 0;
  # the docstring's non-positive-curvature rule applies: b at the first iteration, else the last
  # iterate with positive curvature.
  if at_first_iteration:
    a, b = np.diag([0.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.0])  # b in the null space
  else:
    a, b = np.diag([0.0, 1.0, 1.0]), np.array([1.0, 2.0, 0.0])
  x, info = conjugate_gradient(
    lambda v: jnp.asarray(a, jnp.float32) @ v, jnp.asarray(b, jnp.float32), tol=1e-6, maxiter=10
  )
  assert bool(info.nonpositive_curvature) and not bool(info.nonfinite)
  assert not bool(info.converged) and float(info.curvature) == 0.0
  if at_first_iteration:
    assert int(info.iterations) == 0
    np.testing.assert_array_equal(x, b)
  else:
    # First step along b: alpha = 5 / 4, x1 = 1.25 b; the next direction lies in the null space.
    assert int(info.iterations) == 1
    np.testing.assert_allclose(x, 1.25 * b, rtol=1e-6)


def test_cg_with_zero_rhs_returns_zero():
  x, info = conjugate_gradient(
    lambda v: {"a": 2.0 * v["a"]}, {"a": jnp.zeros(3)}, tol=1e-3, maxiter=4
  )
  np.testing.assert_array_equal(x["a"], np.zeros(3))
  assert int(info.iterations) == 0 and float(info.relative_residual) == 0.0


def test_cg_jits_with_traced_tol_and_maxiter():
  rng = np.random.default_rng(8)
  a, b = random_spd(rng, 10, 10.0), rng.standard_normal(10)
  aj, bj = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  solve = jax.jit(
    lambda b, tol, maxiter: conjugate_gradient(lambda v: aj @ v, b, tol=tol, maxiter=maxiter)
  )
  x, info = solve(bj, jnp.float32(1e-5), jnp.int32(50))
  np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-3, atol=1e-4)  # float32, cond 10
  _, info2 = solve(bj, jnp.float32(0.0), jnp.int32(2))
  assert int(info2.iterations) == 2


def test_cg_under_pmap_with_sharded_operator_matches_full_solve(devices):
  """Each replica holds A_i; the mean operator is pmean(A_i v); inner products are pmean-ed."""
  rng = np.random.default_rng(9)
  n, ndev = 12, len(devices)
  parts = np.stack([random_spd(rng, n, 10.0) for _ in range(ndev)])
  b = rng.standard_normal(n)
  expected = np.linalg.solve(parts.mean(0), b)

  def solve(a_i, b):
    matvec = lambda v: jax.lax.pmean(a_i @ v, "i")  # noqa: E731
    return conjugate_gradient(matvec, b, tol=1e-6, maxiter=50, axis_name="i")

  x, info = jax.pmap(solve, axis_name="i", in_axes=(0, None))(
    jnp.asarray(parts, jnp.float32), jnp.asarray(b, jnp.float32)
  )
  # Every replica took the same path and holds the same solution.
  assert len(set(np.asarray(info.iterations).tolist())) == 1
  np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=1e-4, atol=1e-4)


def test_cg_is_exported_from_linalg():
  assert sops.linalg.conjugate_gradient is conjugate_gradient
  assert sops.linalg.CGInfo._fields == (
    "iterations",
    "relative_residual",
    "curvature",
    "nonpositive_curvature",
    "nonfinite",
    "converged",
  )


# ---------------------------------------------------------------------------------------------
# Preconditioned CG, saved iterates and Martens' relative-progress stop.


def numpy_pcg(a, b, m_inv, iterations):
  """Textbook preconditioned CG (Nocedal & Wright, Algorithm 5.3) in float64: every iterate."""
  x = np.zeros_like(b)
  r = b.copy()
  z = m_inv @ r
  d = z.copy()
  out = []
  for _ in range(iterations):
    ad = a @ d
    alpha = (r @ z) / (d @ ad)
    x = x + alpha * d
    r_new = r - alpha * ad
    z_new = m_inv @ r_new
    d = z_new + (r_new @ z_new) / (r @ z) * d
    r, z = r_new, z_new
    out.append(x.copy())
  return out


def test_preconditioned_cg_iterates_match_numpy_reference(rng):
  n = 40
  a = random_spd(rng, n, 1e3)
  b = rng.standard_normal(n)
  diag = rng.uniform(0.1, 10.0, n)
  ref = numpy_pcg(a, b, np.diag(1 / diag), 6)
  with jax.enable_x64(True):
    aj, dj = jnp.asarray(a), jnp.asarray(diag)
    for k in (1, 3, 6):
      x, info = conjugate_gradient(
        lambda v: aj @ v, jnp.asarray(b), tol=0.0, maxiter=k, preconditioner=lambda v: v / dj
      )
      assert int(info.iterations) == k
      np.testing.assert_allclose(np.asarray(x), ref[k - 1], rtol=1e-9, atol=1e-12)


def test_preconditioned_cg_solves_in_fewer_iterations_when_diagonal_is_the_problem(rng):
  # A = D^(1/2) C D^(1/2) with a well-conditioned C and a badly scaled diagonal D: the Jacobi
  # preconditioner M = diag(A) removes the scaling and CG converges much faster.
  n = 60
  c = random_spd(rng, n, 10.0)
  s = np.sqrt(np.geomspace(1e-3, 1e3, n))
  a = s[:, None] * c * s[None, :]
  b = rng.standard_normal(n)
  expected = np.linalg.solve(a, b)
  with jax.enable_x64(True):
    aj, dj = jnp.asarray(a), jnp.asarray(np.diag(a))
    x0, i0 = conjugate_gradient(lambda v: aj @ v, jnp.asarray(b), tol=1e-10, maxiter=500)
    x1, i1 = conjugate_gradient(
      lambda v: aj @ v, jnp.asarray(b), tol=1e-10, maxiter=500, preconditioner=lambda v: v / dj
    )
  np.testing.assert_allclose(np.asarray(x1), expected, rtol=1e-5)
  assert bool(i1.converged)
  assert int(i1.iterations) < 0.5 * int(i0.iterations), (int(i1.iterations), int(i0.iterations))


def test_saved_iterates_equal_the_iterates_of_shorter_solves(rng):
  n = 30
  a = random_spd(rng, n, 1e2)
  b = rng.standard_normal(n)
  save_at = sops.linalg.backtracking_iterations(12)
  assert save_at == (1, 2, 3, 4, 5, 7, 9, 11, 12)
  with jax.enable_x64(True):
    aj, bj = jnp.asarray(a), jnp.asarray(b)
    mv = lambda v: {"w": aj @ v["w"]}  # noqa: E731
    x, info, its = sops.linalg.conjugate_gradient_iterates(
      mv, {"w": bj}, tol=0.0, maxiter=12, save_at=save_at
    )
    assert bool(its.valid.all()) and int(info.iterations) == 12
    for j, k in enumerate(save_at):
      xk, _ = conjugate_gradient(mv, {"w": bj}, tol=0.0, maxiter=k)
      np.testing.assert_allclose(its.iterates["w"][j], xk["w"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(its.iterates["w"][-1], x["w"], rtol=0, atol=0)
    # A solve that stops early marks the later entries invalid (and zero).
    _, info2, its2 = sops.linalg.conjugate_gradient_iterates(
      lambda v: aj @ v, bj, tol=0.5, maxiter=12, save_at=save_at
    )
    k2 = int(info2.iterations)
    assert 0 < k2 < 12
    np.testing.assert_array_equal(np.asarray(its2.valid), np.asarray(save_at) <= k2)
    assert float(jnp.abs(its2.iterates[~its2.valid]).max()) == 0.0


def test_relative_progress_stop_fires_where_martens_rule_says(rng):
  # A spread-out spectrum: the model value q(x_i) keeps improving, more and more slowly.
  n = 200
  a = random_spd(rng, n, 1e4)
  b = rng.standard_normal(n)
  eps = 5e-3
  # Reference: q(x_i) of plain CG iterates, and the first i where Martens' rule holds.
  xs = numpy_pcg(a, b, np.eye(n), 150)
  q = np.array([0.0] + [0.5 * x @ a @ x - b @ x for x in xs])
  expected = None
  for i in range(1, 151):
    lag = max(10, -(-i // 10))
    if i > lag and q[i] < 0 and (q[i] - q[i - lag]) / q[i] < lag * eps:
      expected = i
      break
  assert expected is not None and expected < 150
  with jax.enable_x64(True):
    aj = jnp.asarray(a)
    _, info = conjugate_gradient(
      lambda v: aj @ v, jnp.asarray(b), tol=0.0, maxiter=150, progress_tol=eps
    )
  # Within two iterations: the rule compares nearly equal numbers at the stop, and float64
  # rounding of CG on a condition-1e4 system moves q(x_i) in its last digits (seen: 69 vs 67).
  assert abs(int(info.iterations) - expected) <= 2, (int(info.iterations), expected)


def test_progress_stop_and_save_at_validation():
  a = jnp.eye(3)
  with pytest.raises(ValueError, match="progress_tol"):
    conjugate_gradient(lambda v: a @ v, jnp.ones(3), progress_tol=0.0)
  with pytest.raises(ValueError, match="progress_tol"):
    jax.jit(
      lambda m: conjugate_gradient(lambda v: a @ v, jnp.ones(3), maxiter=m, progress_tol=1e-3)
    )(3)
  with pytest.raises(ValueError, match="save_at"):
    sops.linalg.conjugate_gradient_iterates(lambda v: a @ v, jnp.ones(3), save_at=(2, 1))
  with pytest.raises(ValueError, match="ratio"):
    sops.linalg.backtracking_iterations(10, ratio=1.0)
