# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""The Kronecker-factored Fisher preconditioner of Newton-CG (``sops._src.fisher_kronecker``):
factors against explicit chunk gradients, the inverse against a dense float64 Kronecker inverse,
the preconditioned step against the dense damped Newton step, the refresh schedule, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from test_hessian_free import exact_kwargs, mlp
from test_newton_cg import assert_pmap_equals_single_device

import sops
from sops._src import fisher_kronecker as fk


def test_factors_are_second_moments_of_scaled_chunk_gradients():
  with jax.enable_x64(True):
    params, x, y, example_loss, _ = mlp(n=12)
    got = sops.fisher_kronecker(example_loss, params, x, y, num_chunks=4)
    chunks = [
      jax.grad(lambda p, i=i: sum(example_loss(p, x[j], y[j]) for j in range(3 * i, 3 * i + 3)))(
        params
      )
      for i in range(4)
    ]
  g = {k: [np.asarray(c[k]) / np.sqrt(3) for c in chunks] for k in params}
  for k in ("w1", "w2"):
    assert isinstance(got[k], sops.KroneckerFactors)
    np.testing.assert_allclose(got[k].left, np.mean([a @ a.T for a in g[k]], 0), rtol=1e-12)
    np.testing.assert_allclose(got[k].right, np.mean([a.T @ a for a in g[k]], 0), rtol=1e-12)
  np.testing.assert_allclose(got["b1"], np.mean([a**2 for a in g["b1"]], 0), rtol=1e-12)


def test_factors_recover_a_kronecker_covariance():
  # Per-example gradients drawn from a matrix normal with row covariance A and column
  # covariance C: L (x) R / tr L estimates A (x) C (Morwani et al. 2024), to sampling error.
  rng = np.random.default_rng(1)
  a_half, c_half = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
  a, c = a_half @ a_half.T, c_half @ c_half.T
  z = rng.standard_normal((20000, 4, 3))
  samples = jnp.asarray(a_half @ z @ c_half.T)
  with jax.enable_x64(True):
    f = sops.fisher_kronecker(
      lambda w, s: jnp.sum(w * s), jnp.zeros((4, 3)), samples, num_chunks=5000
    )
  est = np.kron(f.left, f.right) / np.trace(f.left)
  ref = np.kron(a, c)
  assert np.linalg.norm(est - ref) / np.linalg.norm(ref) < 0.05  # sampling error ~1-2%


@pytest.mark.parametrize("mode", ["factored", "exact"])
@pytest.mark.parametrize("exponent", [1.0, 0.75])
def test_inverse_is_the_damped_kronecker_inverse_up_to_one_constant(exponent, mode):
  rng = np.random.default_rng(2)

  def spd(n, rank):
    b = rng.standard_normal((n, rank))
    return jnp.asarray(b @ b.T)

  factors = {
    "w": sops.KroneckerFactors(spd(5, 3), spd(4, 2)),
    "v": sops.KroneckerFactors(spd(3, 3), spd(2, 2) * 1e3),
    "b": jnp.asarray(rng.uniform(0, 2, 4)),
  }
  lam = 0.3
  with jax.enable_x64(True):
    inverse = fk.kronecker_inverse(factors, lam, exponent, mode)
    v = {"w": jnp.ones((5, 4)), "v": jnp.ones((3, 2)), "b": jnp.ones(4)}
    out = fk.apply_inverse(inverse, v)

  def dense(f):  # float64: K-FAC's factored damping, or F + lam I
    m, n = f.left.shape[0], f.right.shape[0]
    tr = np.trace(f.left)
    if mode == "exact":
      mat = np.kron(f.left, f.right) / tr + lam * np.eye(m * n)
    else:
      s, g = tr / (m * n), np.sqrt(lam * m * n / tr)
      mat = s * np.kron(f.left * m / tr + g * np.eye(m), f.right * n / tr + g * np.eye(n))
    w, q = np.linalg.eigh(mat)
    return q @ np.diag(w**-exponent) @ q.T

  ref = {
    k: (dense(f) @ np.ones(f.left.shape[0] * f.right.shape[0])).reshape(v[k].shape)
    for k, f in factors.items()
    if k != "b"
  }
  ref["b"] = (np.asarray(factors["b"]) + lam) ** -exponent
  const = float(np.asarray(out["b"])[0] / ref["b"][0])
  for k in v:  # float32 factors: within a few float32 ulps of the largest entry of the reference
    want = const * ref[k]
    np.testing.assert_allclose(np.asarray(out[k]), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_zero_or_nonfinite_factors_give_a_damped_identity_block():
  factors = {
    "w": sops.KroneckerFactors(jnp.zeros((3, 3)), jnp.zeros((2, 2))),
    "u": sops.KroneckerFactors(jnp.full((3, 3), jnp.nan), jnp.eye(2)),
    "b": jnp.array([jnp.inf, 1.0]),
  }
  inverse = fk.kronecker_inverse(factors, 2.0, 1.0)
  out = fk.apply_inverse(inverse, {"w": jnp.ones((3, 2)), "u": jnp.ones((3, 2)), "b": jnp.ones(2)})
  for leaf in jax.tree.leaves(out):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  np.testing.assert_allclose(out["w"], out["u"])
  np.testing.assert_allclose(out["w"], jnp.full((3, 2), float(out["b"][0])))


def test_preconditioned_step_is_the_dense_damped_newton_step():
  with jax.enable_x64(True):
    params, x, y, example_loss, loss = mlp()
    value_fn = functools.partial(loss, xb=x, yb=y)
    g = jax.grad(value_fn)(params)
    tx = sops.scale_by_newton_cg(**exact_kwargs(preconditioner="kronecker"))
    factors = sops.fisher_kronecker(example_loss, params, x, y, num_chunks=8)
    p, state = tx.update(g, tx.init(params), params, value_fn=value_fn, kronecker_factors=factors)
    flat, unravel = ravel_pytree(params)
    h = np.asarray(jax.hessian(lambda v: value_fn(unravel(v)))(flat))
    expected = -np.linalg.solve(h + 0.5 * np.eye(len(h)), np.asarray(ravel_pytree(g)[0]))
    np.testing.assert_allclose(np.asarray(ravel_pytree(p)[0]), expected, rtol=1e-8, atol=1e-11)
    # First refresh: the EMA is 0.05 F, and its bias-corrected inverse is the fresh one.
    np.testing.assert_allclose(state.kronecker.factors["w1"].left, 0.05 * factors["w1"].left)


def test_kronecker_preconditioner_cuts_cg_iterations_on_correlated_features():
  # Least squares with strongly correlated, badly scaled inputs: the Gauss-Newton matrix is
  # (X^T X / n) (x) I, which a diagonal cannot undo and the Kronecker factors can.
  rng = np.random.default_rng(0)
  mix = rng.standard_normal((40, 40)) @ np.diag(np.geomspace(1e-2, 1e1, 40))
  x = jnp.asarray(rng.standard_normal((512, 40)) @ mix)
  y = jnp.asarray(rng.standard_normal((512, 5)))

  def example_loss(w, xi, yi):
    return 0.5 * jnp.sum((xi @ w - yi) ** 2)

  with jax.enable_x64(True):
    w = jnp.zeros((40, 5))
    value_fn = lambda w: jnp.mean(jax.vmap(example_loss, (None, 0, 0))(w, x, y))  # noqa: E731
    extra = {
      None: {},
      "fisher": {"fisher_diagonal": sops.fisher_diagonal(example_loss, w, x, y)},
      "kronecker": {
        "kronecker_factors": sops.fisher_kronecker(example_loss, w, x, y, num_chunks=128)
      },
    }
    iters = {}
    for kind, kw in extra.items():
      tx = sops.scale_by_newton_cg(
        damping=1e-6,
        adaptive_damping=False,
        maxiter=300,
        tol=1e-8,
        preconditioner=kind,
        preconditioner_exponent=1.0,
        preconditioner_damping="exact",
      )
      _, st = tx.update(jax.grad(value_fn)(w), tx.init(w), w, value_fn=value_fn, **kw)
      iters[kind] = int(st.info.cg_iterations)
  # measured 17 against 244 (none) and 300 (the diagonal, at maxiter); K-FAC's factored
  # damping over-damps at this small damping: 148
  assert iters["kronecker"] < 0.5 * min(iters[None], iters["fisher"]), iters


def test_refresh_every_k_updates_and_callable_factors_only_on_refreshes():
  params, x, y, example_loss, loss = mlp()
  params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  x = x.astype(jnp.float32)
  tx = sops.newton_cg(maxiter=3, preconditioner="kronecker", preconditioner_every=3)
  calls = []

  def step(params, state, k):
    value_fn = functools.partial(loss, xb=x, yb=y)

    def factors():
      calls.append(1)  # traced once per compilation, as a lax.cond branch
      return sops.fisher_kronecker(example_loss, params, x, y, num_chunks=4)

    g = jax.grad(value_fn)(params)
    u, state = tx.update(g, state, params, value_fn=value_fn, kronecker_factors=factors)
    return optax.apply_updates(params, u), state

  step = jax.jit(step)
  state = tx.init(params)
  seen = []
  for k in range(7):
    params, state = step(params, state, k)
    seen.append(np.asarray(state[0].kronecker.factors["w1"].left).copy())
  changed = [not np.array_equal(seen[i], seen[i - 1]) for i in range(1, 7)]
  assert changed == [False, False, True, False, False, True]  # refreshes at updates 0, 3, 6
  assert step._cache_size() == 1 and len(calls) == 1


def test_nonfinite_factors_skip_without_corrupting_state():
  params, x, y, example_loss, loss = mlp()
  value_fn = functools.partial(loss, xb=x, yb=y)
  tx = sops.newton_cg(maxiter=3, preconditioner="kronecker")
  state = tx.init(params)
  bad = jax.tree.map(lambda a: a * jnp.nan, sops.fisher_kronecker(example_loss, params, x, y))
  g = jax.grad(value_fn)(params)
  u, new = jax.jit(lambda s: tx.update(g, s, params, value_fn=value_fn, kronecker_factors=bad))(
    state
  )
  for leaf in jax.tree.leaves((u, new)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  kron_old, kron_new = state[0].kronecker, new[0].kronecker
  for a, b in zip(jax.tree.leaves(kron_old), jax.tree.leaves(kron_new), strict=True):
    np.testing.assert_array_equal(a, b)


def test_missing_factors_raise_type_error_and_bad_options_value_error():
  params, x, y, _, loss = mlp()
  value_fn = functools.partial(loss, xb=x, yb=y)
  tx = sops.scale_by_newton_cg(preconditioner="kronecker")
  with pytest.raises(TypeError, match="kronecker_factors"):
    tx.update(jax.grad(value_fn)(params), tx.init(params), params, value_fn=value_fn)
  with pytest.raises(ValueError, match="kronecker_factors do not match"):
    other = {"w1": params["w1"], "w2": params["w2"]}
    factors = sops.fisher_kronecker(lambda p, xi, yi: 0.0 * jnp.sum(p["w1"]), other, x, y)
    g = jax.grad(value_fn)(params)
    tx.update(g, tx.init(params), params, value_fn=value_fn, kronecker_factors=factors)
  with pytest.raises(ValueError, match="preconditioner_every"):
    sops.newton_cg(preconditioner="kronecker", preconditioner_every=0)
  with pytest.raises(ValueError, match="preconditioner_damping"):
    sops.scale_by_newton_cg(preconditioner="kronecker", preconditioner_damping="split")
  with pytest.raises(ValueError, match="num_chunks"):
    sops.fisher_kronecker(
      lambda p, xi: jnp.sum(p * xi), jnp.zeros(3), jnp.ones((10, 3)), num_chunks=4
    )


@pytest.mark.extended
def test_pmap_equals_single_device(devices):
  ndev = len(devices)
  params, x, y, example_loss, loss = mlp(n=8 * ndev)
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  x = x.astype(jnp.float32)
  kw = dict(maxiter=5, damping=0.1, preconditioner="kronecker", preconditioner_every=2)

  def make_step(tx, axis_name, chunks):
    def step(params, state, xb, yb):
      value_fn = functools.partial(loss, xb=xb, yb=yb)
      factors = sops.fisher_kronecker(example_loss, params, xb, yb, num_chunks=chunks)
      grads = jax.grad(value_fn)(params)
      updates, state = tx.update(grads, state, params, value_fn=value_fn, kronecker_factors=factors)
      return optax.apply_updates(params, updates), state

    return jax.jit(step) if axis_name is None else jax.pmap(step, axis_name=axis_name)

  single_tx, multi_tx = sops.newton_cg(**kw), sops.newton_cg(axis_name="batch", **kw)
  # Two chunks per replica: the mean over replicas is the mean over all 2 * ndev chunks.
  xs, ys = x.reshape(ndev, -1, x.shape[1]), y.reshape(ndev, -1)
  assert_pmap_equals_single_device(
    (single_tx, make_step(single_tx, None, 2 * ndev), (x, y)),
    (multi_tx, make_step(multi_tx, "batch", 2), (xs, ys)),
    params,
  )
