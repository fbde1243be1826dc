# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of sops.linalg.inverse_pth_root against float64 numpy eigh references.

Inputs are fresh random matrices each run (the ``rng`` fixture of conftest.py); every test prints
its seed (shown by pytest on failure)
so a failure can be reproduced with SOPS_TEST_SEED=<seed>.

Errors are spectral-norm relative errors ||X - X_ref||_2 / ||X_ref||_2, where X_ref is the float64
eigh root of the *same float32 input* (cast to float64), with the same ridge.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import sops.linalg as L

# Accuracy sweeps over conditioning and scale: CI runs them (python -m pytest -m extended).
pytestmark = pytest.mark.extended

inverse_pth_root = L.inverse_pth_root
PS = (1, 2, 3, 4, 6, 8)


def _prescribed(rng, batch, n, cond):
  """float32 SPD blocks with log-spaced eigenvalues 1 .. 1/cond and random orthogonal vectors."""
  out = []
  for _ in range(batch):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    out.append((q * np.logspace(0, -np.log10(cond), n)) @ q.T)
  return np.asarray(out, np.float32)


def _gradient_stats(rng, batch, n, steps=40, decay=0.95):
  """Shampoo-like statistics: decayed sums of outer products of low-rank, heavy-tailed gradients."""
  out = []
  for _ in range(batch):
    basis = rng.standard_normal((n, n // 4)) * np.logspace(0, -2, n // 4)
    s = np.zeros((n, n))
    for _ in range(steps):
      g = basis @ rng.standard_normal((n // 4, 3))
      s = decay * s + g @ g.T
    out.append(s)
  return np.asarray(out, np.float32)


def _eigh(a):
  """Batched eigh in the input's precision (numpy would compute float32 input in float64)."""
  flat = a.reshape((-1,) + a.shape[-2:])
  ws, vs = zip(*(scipy.linalg.eigh(m) for m in flat), strict=True)
  return np.stack(ws).reshape(a.shape[:-1]), np.stack(vs).reshape(a.shape)


def _ref_root(a32, p, ridge=1e-6, relative=True, dtype=np.float64, clamp=True):
  """Root by eigh in ``dtype``: float64 is the reference, float32 the spec's baseline."""
  a = np.asarray(a32).astype(dtype)
  a = 0.5 * (a + np.swapaxes(a, -1, -2))
  w, v = _eigh(a)
  assert w.dtype == dtype
  eps = ridge * w.max(-1, keepdims=True) if relative else ridge
  w = np.maximum(w, 0.0) if clamp else w
  return (v * ((w + eps) ** (-1.0 / p))[..., None, :]) @ np.swapaxes(v, -1, -2)


def _rel_err(x, x_ref):
  x = np.asarray(x, np.float64)
  num = np.linalg.norm(x - x_ref, ord=2, axis=(-1, -2))
  return num / np.linalg.norm(x_ref, ord=2, axis=(-1, -2))


@pytest.mark.parametrize("method", ["coupled_newton", "eigh"])
@pytest.mark.parametrize("cond", [pytest.param(1e1, marks=pytest.mark.slow), 1e3])
def test_well_conditioned_roots_meet_the_float32_accuracy_targets(rng, method, cond):
  # Tier 1 of the spec: the default method reaches 1e-4 at condition <= 1e3 (measured <= 3e-5).
  # eigh is held to the bound of a backward-stable eigensolver: a backward error of n*u*||A||
  # moves the smallest eigenvalue by a relative n*u*cond, i.e. the p-th root by n*u*cond/p
  # (2.9e-3 at n=48, cond=1e3, p=1; measured median 5e-5, worst seen 3.6e-4).
  n = 48
  a = _prescribed(rng, 3, n, cond)
  for p in PS:
    x, info = jax.jit(lambda a, p=p: inverse_pth_root(a, p, method=method))(a)
    err = _rel_err(x, _ref_root(a, p))
    tol = 1e-4 if method == "coupled_newton" else max(1e-4, n * np.finfo(np.float32).eps * cond / p)
    assert np.all(err <= tol), (p, err, tol)
    assert not np.any(info.failed)
    assert np.all(np.asarray(info.error) >= err / 10), (p, err, info.error)


@pytest.mark.parametrize(
  "cond",
  [pytest.param(1e5, marks=pytest.mark.slow), 1e6, pytest.param(1e7, marks=pytest.mark.slow)],
)
def test_ill_conditioned_coupled_newton_within_2x_of_float32_eigh_and_error_is_honest(rng, cond):
  # Tier 2: no worse than 2x a float32 (LAPACK ssyevd) eigh root of the same input, and the
  # reported error is never below a tenth of the true error (for both methods).
  a = _prescribed(rng, 3, 48, cond)
  for p in (1, 2, 3, 4, 8):
    ref = _ref_root(a, p)
    eigh32 = _rel_err(_ref_root(a, p, dtype=np.float32), ref)
    for method in ("coupled_newton", "eigh"):
      x, info = inverse_pth_root(a, p, method=method, fail_threshold=np.inf)
      err = _rel_err(x, ref)
      assert np.all(np.asarray(info.error) >= err / 10), (method, p, err, info.error)
      if method == "coupled_newton":
        assert np.all(err <= 2 * eigh32), (p, err, eigh32)


def test_rank_deficient_statistics_use_the_relative_ridge(rng):
  # float32 rounding of G G^T leaves "zero" eigenvalues of about +-n*u*lambda_max, comparable to the
  # 1e-6 relative ridge. eigh clamps them at zero (its definition); coupled Newton roots the input
  # as given, so each method is compared with the float64 root of its own definition.
  n, rank = 40, 10
  g = rng.standard_normal((2, n, rank)).astype(np.float32)
  a = g @ np.swapaxes(g, -1, -2)
  for p in (2, 4):
    for method, clamp in (("coupled_newton", False), ("eigh", True)):
      ref = _ref_root(a, p, clamp=clamp)
      eigh32 = _rel_err(_ref_root(a, p, dtype=np.float32, clamp=clamp), ref)
      x, info = inverse_pth_root(a, p, method=method, fail_threshold=np.inf)
      err = _rel_err(x, ref)
      if method == "coupled_newton":  # jnp's float32 eigh differs from LAPACK's by its own noise
        assert np.all(err <= 2 * eigh32), (method, p, err, eigh32)
      assert np.all(np.asarray(info.error) >= err / 10)
    # A large absolute ridge makes the problem well conditioned again: tier-1 accuracy.
    x, info = inverse_pth_root(a, p, ridge_epsilon=1.0, relative_ridge=False)
    assert np.all(_rel_err(x, _ref_root(a, p, ridge=1.0, relative=False)) <= 1e-4)
    assert not np.any(info.failed)


def test_gradient_outer_product_statistics_match_reference(rng):
  a = _gradient_stats(rng, 3, 64)
  for p in (2, 4):
    ref = _ref_root(a, p)
    eigh32 = _rel_err(_ref_root(a, p, dtype=np.float32), ref)
    x, info = inverse_pth_root(a, p, fail_threshold=np.inf)
    err = _rel_err(x, ref)
    # These statistics are rank deficient, so both errors sit at the input-rounding floor (~1e-2)
    # and vary by ~2x from block to block with the rounding pattern; compare the worst blocks, as
    # the benchmark does. Ratio of the worst blocks over 151 seeds: median 0.72x (p=2) and 0.63x
    # (p=4), 99th percentile 1.9x, worst 2.05x (the seed that failed a 2x bound in CI).
    assert err.max() <= 3 * eigh32.max() + 1e-5, (p, err, eigh32)
    assert np.all(np.asarray(info.error) >= err / 10)
    assert np.all(np.asarray(info.iterations) >= 1)


@pytest.mark.parametrize("method", ["coupled_newton", "eigh"])
@pytest.mark.parametrize(
  "stats", [pytest.param("log_spaced", marks=pytest.mark.slow), "gradient_outer_products"]
)
def test_roots_at_condition_1e6_are_accepted_and_their_error_bound_is_honest(rng, method, stats):
  # The reported error must be an upper bound on the true relative error (against the float64
  # root of the same float32 input) and at most 10x above it or above the float32 floor
  # sqrt(n) * u (the rounding of storing X, which the bound adds). Measured ratios at this
  # condition: 1.05x-2.2x for p = 2..8 (docs/linalg.md); the bound is exact in the backward error
  # eta, so the only slack risk is the float32 evaluation of eta itself.
  # Acceptance: Shampoo's default threshold (1.0) accepts every root. inverse_pth_root's default
  # 0.1 accepts every coupled Newton root (true error <= 3e-2) but not float32 eigh roots for
  # p <= 3: syevd's own error at condition 1e6 is 5-15% there (0.1 is unattainable, honestly
  # reported), 2-7% for p >= 4, which 0.1 accepts. As in the rank-deficient test, each method is
  # compared with the float64 root of its own definition (eigh clamps negative eigenvalues).
  n = 48 if stats == "log_spaced" else 64
  a = _prescribed(rng, 3, n, 1e6) if stats == "log_spaced" else _gradient_stats(rng, 3, n)
  floor = np.sqrt(n) * np.finfo(np.float32).eps
  for p in range(2, 9):
    ref = _ref_root(a, p, clamp=method == "eigh")
    x, info = jax.jit(lambda a, p=p: inverse_pth_root(a, p, method=method, fail_threshold=1.0))(a)
    err, reported = _rel_err(x, ref), np.asarray(info.error, np.float64)
    assert not np.any(info.failed), (p, err, reported)
    assert np.all(err <= reported), (p, err, reported)
    assert np.all(reported <= 10 * np.maximum(err, floor)), (p, err, reported)
    if method == "coupled_newton" or p >= 4:
      _, info = inverse_pth_root(a, p, method=method)  # fail_threshold=0.1
      assert not np.any(info.failed), (p, err, info.error)


@pytest.mark.parametrize("method", ["coupled_newton", "eigh"])
@pytest.mark.parametrize(
  "scale",
  [
    1e-30,
    pytest.param(1e-20, marks=pytest.mark.slow),
    pytest.param(1e20, marks=pytest.mark.slow),
    1e30,
  ],
)
def test_blocks_of_extreme_scale_are_rooted_at_unit_scale(rng, method, scale):
  # Before per-block normalisation coupled Newton failed both ends (products of 1e-30 entries
  # underflow to 0, of 1e30 entries overflow). The root is (scale-invariant) tier-1 accurate:
  # 1e-4, the bound of the well-conditioned test at condition 1e2.
  a = _prescribed(rng, 2, 8, 1e2) * np.float32(scale)
  eye = np.broadcast_to(np.eye(4, dtype=np.float32) * np.float32(scale), (1, 4, 4))
  for p in (1, 2, 4, 8):
    for mats in (a, eye):
      x, info = inverse_pth_root(mats, p, method=method)
      err = _rel_err(x, _ref_root(mats, p))
      assert not np.any(info.failed), (p, info.error)
      assert np.all(err <= 1e-4), (p, err)
      assert np.all(err <= np.asarray(info.error)), (p, err, info.error)
  # An absolute ridge is scaled with the block: eps = 1e-2 * scale here.
  x, info = inverse_pth_root(a, 2, method=method, ridge_epsilon=1e-2 * scale, relative_ridge=False)
  ref = _ref_root(a, 2, ridge=1e-2 * scale, relative=False)
  assert not np.any(info.failed) and np.all(_rel_err(x, ref) <= 1e-4)


@pytest.mark.parametrize("method", ["coupled_newton", "eigh"])
def test_all_zero_block_with_relative_ridge_fails_and_with_absolute_ridge_does_not(method):
  zeros = np.zeros((2, 5, 5), np.float32)
  x, info = inverse_pth_root(zeros, 2, method=method)
  assert np.all(info.failed) and np.all(np.isinf(info.error))
  np.testing.assert_array_equal(x, np.broadcast_to(np.eye(5), x.shape))
  x, info = inverse_pth_root(zeros, 2, method=method, ridge_epsilon=4.0, relative_ridge=False)
  assert not np.any(info.failed)
  np.testing.assert_allclose(x, np.broadcast_to(0.5 * np.eye(5), x.shape), rtol=1e-6)


@pytest.mark.slow
def test_float64_precision_reaches_the_input_rounding_floor(rng):
  # Tier 3: at condition 1e6 the float64 path is within 10x of the error that rounding the input
  # to float32 causes by itself (the "floor"); float32 methods are far above it.
  n, p = 48, 4
  q, _ = np.linalg.qr(rng.standard_normal((2, n, n)))
  a64 = (q * np.logspace(0, -6, n)[None, None, :]) @ np.swapaxes(q, -1, -2)
  a32 = a64.astype(np.float32)
  x_true = _ref_root(a64, p)
  floor = _rel_err(_ref_root(a32, p), x_true)
  with jax.enable_x64(True):
    x, info = inverse_pth_root(jnp.asarray(a32), p, precision="float64")
    assert x.dtype == jnp.float32
  assert np.all(_rel_err(x, x_true) <= 10 * floor), (_rel_err(x, x_true), floor)
  assert np.all(np.asarray(info.error) < 1e-6)


@pytest.mark.slow
def test_padded_blocks_match_unpadded_computation_and_padding_is_identity(rng):
  n, sizes = 32, (5, 17, 32, 1)
  blocks = [_prescribed(rng, 1, k, 1e3)[0] * 10.0 ** rng.uniform(-4, 4) for k in sizes]
  for pad_with_identity in (False, True):
    stack = np.stack([np.eye(n, dtype=np.float32) if pad_with_identity else np.zeros((n, n))] * 4)
    stack = stack.astype(np.float32)
    for i, b in enumerate(blocks):
      stack[i, : len(b), : len(b)] = b
    for method in ("coupled_newton", "eigh"):
      fn = jax.jit(lambda s, k, method=method: inverse_pth_root(s, 4, method=method, block_sizes=k))
      x, info = fn(stack, jnp.asarray(sizes))
      x = np.asarray(x)
      for i, b in enumerate(blocks):
        k = len(b)
        x1, _ = inverse_pth_root(b, 4, method=method)
        np.testing.assert_allclose(x[i, :k, :k], x1, rtol=2e-4, atol=2e-4 * np.abs(x1).max())
        assert _rel_err(x[i, :k, :k], _ref_root(b, 4)) <= 1e-4
        np.testing.assert_array_equal(x[i, k:, :], np.eye(n)[k:, :])
        np.testing.assert_array_equal(x[i, :, k:], np.eye(n)[:, k:])
      assert not np.any(info.failed)


@pytest.mark.slow
def test_jit_vmap_and_any_batch_shape_agree_with_the_batched_call(rng):
  a = _prescribed(rng, 6, 16, 1e2).reshape(2, 3, 16, 16)
  x, info = inverse_pth_root(a, 3)
  assert x.shape == a.shape
  assert info.iterations.shape == info.error.shape == info.failed.shape == (2, 3)
  assert info.iterations.dtype == jnp.int32 and info.error.dtype == jnp.float32
  xv, infov = jax.jit(jax.vmap(lambda m: inverse_pth_root(m, 3)))(a)
  np.testing.assert_allclose(xv, x, rtol=1e-5, atol=1e-6)
  assert np.all(_rel_err(x.reshape(6, 16, 16), _ref_root(a.reshape(6, 16, 16), 3)) <= 1e-4)
  single, _ = inverse_pth_root(a[1, 2], 3)
  np.testing.assert_allclose(single, x[1, 2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [pytest.param(np.nan, marks=pytest.mark.slow), np.inf])
def test_non_finite_blocks_fail_and_return_the_fallback(rng, bad):
  a = _prescribed(rng, 3, 12, 1e2)
  a[1, 3, 4] = bad
  fallback = np.broadcast_to(2.0 * np.eye(12, dtype=np.float32), a.shape)
  for method in ("coupled_newton", "eigh"):
    x, info = jax.jit(lambda a, fb, m=method: inverse_pth_root(a, 2, method=m, fallback=fb))(
      a, fallback
    )
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(info.failed, [False, True, False])
    np.testing.assert_array_equal(x[1], fallback[1])
    assert np.all(_rel_err(np.asarray(x)[[0, 2]], _ref_root(a[[0, 2]], 2)) <= 1e-4)
    x, info = inverse_pth_root(a, 2, method=method)  # default fallback: identity
    np.testing.assert_array_equal(x[1], np.eye(12))


def test_fail_threshold_replaces_blocks_whose_error_exceeds_it(rng):
  a = _prescribed(rng, 2, 12, 1e2)
  x, info = inverse_pth_root(a, 2, fail_threshold=1e-12, fallback=jnp.zeros((12, 12)))
  assert np.all(info.failed) and np.all(np.asarray(x) == 0)


def test_non_symmetric_input_is_symmetrized(rng):
  a = _prescribed(rng, 2, 16, 1e2)
  skew = rng.standard_normal((2, 16, 16)).astype(np.float32)
  for method in ("coupled_newton", "eigh"):
    x, _ = inverse_pth_root(a + skew - np.swapaxes(skew, -1, -2), 2, method=method)
    assert np.all(_rel_err(x, _ref_root(a, 2)) <= 1e-4)


def test_tolerance_and_max_iters_control_the_iteration(rng):
  a = _prescribed(rng, 2, 16, 1e4)
  _, loose = inverse_pth_root(a, 4, tol=1e-2)
  _, tight = inverse_pth_root(a, 4)
  assert np.all(loose.iterations < tight.iterations)
  _, capped = inverse_pth_root(a, 4, max_iters=2, fail_threshold=np.inf)
  np.testing.assert_array_equal(capped.iterations, 2)
  assert np.all(capped.error > tight.error)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    ({"p": 0}, "p"),
    ({"p": -2}, "p"),
    ({"p": 2.5}, "p"),
    ({"p": 2.0}, "p"),
    ({"p": True}, "p"),
    ({"method": "newton"}, "method"),
    ({"ridge_epsilon": -1e-6}, "ridge_epsilon"),
    ({"max_iters": 0}, "max_iters"),
    ({"tol": -1.0}, "tol"),
    ({"fail_threshold": 0.0}, "fail_threshold"),
    ({"precision": "bfloat16"}, "precision"),
  ],
)
def test_invalid_static_arguments_raise_value_error_naming_them(kwargs, name):
  kwargs = {"p": 2, **kwargs}
  with pytest.raises(ValueError, match=name):
    inverse_pth_root(jnp.eye(3), **kwargs)


def test_float64_precision_without_x64_raises():
  if jax.config.jax_enable_x64:
    pytest.skip("x64 is enabled globally")
  with pytest.raises(ValueError, match="precision"):
    inverse_pth_root(jnp.eye(3), 2, precision="float64")
