# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Martens' Hessian-free ingredients of Newton-CG (``sops._src.hessian_free``): curvature
mini-batches, the diagonal CG preconditioner and CG iterate backtracking, each against a dense
float64 reference (``jax.hessian`` and ``numpy.linalg.solve``) on small problems."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from test_newton_cg import assert_pmap_equals_single_device

import sops
from sops._src import hessian_free as hf


def mlp(seed=0, n=48, d=4, h=6, k=3):
  rng = np.random.default_rng(seed)
  params = {
    "w1": jnp.asarray(rng.standard_normal((d, h))) / 2,
    "b1": jnp.asarray(rng.standard_normal(h)) / 4,
    "w2": jnp.asarray(rng.standard_normal((h, k))) / 3,
  }
  x = jnp.asarray(rng.standard_normal((n, d)))
  y = jnp.asarray(rng.integers(0, k, n))

  def example_loss(p, xi, yi):
    z = jnp.tanh(xi @ p["w1"] + p["b1"]) @ p["w2"]
    return optax.softmax_cross_entropy_with_integer_labels(z, yi)

  def loss(p, xb, yb):
    return jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))(p, xb, yb))

  return params, x, y, example_loss, loss


def dense(fn, params):
  flat, unravel = ravel_pytree(params)
  return np.asarray(jax.hessian(lambda v: fn(unravel(v)))(flat)), unravel


def predict(p, xb):
  return jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"]


def out_loss(z, yb):
  return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()


def dense_gauss_newton(params, x, y):
  flat, unravel = ravel_pytree(params)
  jac = jax.jacobian(lambda v: predict(unravel(v), x).ravel())(flat)
  z = predict(params, x).ravel()
  hz = jax.hessian(lambda z: out_loss(z.reshape(x.shape[0], -1), y))(z)
  return np.asarray(jac.T @ hz @ jac), unravel


def exact_kwargs(**kw):
  # CG run to convergence, fixed damping, no warm start: the step is the exact damped solve.
  return dict(damping=0.5, adaptive_damping=False, maxiter=60, tol=1e-13, warm_start=False) | kw


@pytest.mark.parametrize("preconditioner", ["ema", "fisher"])
def test_preconditioned_step_is_the_dense_damped_newton_step(preconditioner):
  with jax.enable_x64(True):
    params, x, y, example_loss, loss = mlp()
    value_fn = functools.partial(loss, xb=x, yb=y)
    g = jax.grad(value_fn)(params)
    tx = sops.scale_by_newton_cg(**exact_kwargs(preconditioner=preconditioner))
    extra = {}
    if preconditioner == "fisher":
      extra["fisher_diagonal"] = sops.fisher_diagonal(example_loss, params, x, y)
    p, state = tx.update(g, tx.init(params), params, value_fn=value_fn, **extra)
    h, _ = dense(value_fn, params)
    expected = -np.linalg.solve(h + 0.5 * np.eye(len(h)), np.asarray(ravel_pytree(g)[0]))
    np.testing.assert_allclose(np.asarray(ravel_pytree(p)[0]), expected, rtol=1e-8, atol=1e-11)
    if preconditioner == "ema":  # first update: 0.05 g^2
      want = 0.05 * np.asarray(g["w1"]) ** 2
      np.testing.assert_allclose(np.asarray(state.preconditioner_diagonal["w1"]), want, rtol=1e-12)


def test_fisher_diagonal_is_mean_of_squared_per_example_gradients():
  with jax.enable_x64(True):
    params, x, y, example_loss, _ = mlp(n=10)
    got = sops.fisher_diagonal(example_loss, params, x, y)
    per = [jax.grad(example_loss)(params, x[i], y[i]) for i in range(10)]
  for k in params:
    np.testing.assert_allclose(got[k], np.mean([np.square(g[k]) for g in per], axis=0), rtol=1e-12)


def test_diagonal_preconditioner_is_martens_scaling_up_to_a_constant():
  rng = np.random.default_rng(3)
  diag = {"a": jnp.asarray(rng.uniform(0, 5, 7)), "b": jnp.asarray(rng.uniform(0, 1e4, (2, 3)))}
  v = {"a": jnp.ones(7), "b": jnp.ones((2, 3))}
  with jax.enable_x64(True):
    out = hf.diagonal_preconditioner(diag, 0.1, 0.75)(v)
  ref = {k: (np.asarray(d) + 0.1) ** -0.75 for k, d in diag.items()}
  c = float(out["a"][0] / ref["a"][0])
  for k in diag:  # computed in float32 by design: within a few float32 ulps of the float64 ref
    np.testing.assert_allclose(np.asarray(out[k]), c * ref[k], rtol=1e-6)
  assert 0 < c and float(max(jnp.max(out["a"]), jnp.max(out["b"]))) == pytest.approx(1.0)


def test_preconditioning_cuts_cg_iterations_on_a_badly_scaled_problem():
  # Logistic regression on features of wildly different scales: the Fisher diagonal fixes them.
  rng = np.random.default_rng(0)
  scales = np.geomspace(1e-2, 1e2, 10)
  x = jnp.asarray(rng.standard_normal((200, 10)) * scales)
  y = jnp.asarray((rng.standard_normal(200) > 0).astype(np.float64))

  def example_loss(w, xi, yi):
    return optax.sigmoid_binary_cross_entropy(xi @ w, yi)

  with jax.enable_x64(True):
    w = jnp.zeros(10)
    value_fn = lambda w: jnp.mean(jax.vmap(example_loss, (None, 0, 0))(w, x, y))  # noqa: E731
    fisher = sops.fisher_diagonal(example_loss, w, x, y)
    iters = {}
    for kind in (None, "fisher"):
      tx = sops.scale_by_newton_cg(
        damping=1e-4, adaptive_damping=False, maxiter=200, tol=1e-8, preconditioner=kind
      )
      extra = {"fisher_diagonal": fisher} if kind else {}
      _, st = tx.update(jax.grad(value_fn)(w), tx.init(w), w, value_fn=value_fn, **extra)
      iters[kind] = int(st.info.cg_iterations)
  assert iters["fisher"] < 0.7 * iters[None], iters  # measured 11 vs 19


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_curvature_minibatch_uses_its_curvature_and_the_full_gradient(curvature):
  with jax.enable_x64(True):
    params, x, y, _, loss = mlp()
    value_fn = functools.partial(loss, xb=x, yb=y)
    xs, ys = x[:12], y[:12]
    g = jax.grad(value_fn)(params)
    if curvature == "hessian":
      extra = dict(curvature_value_fn=functools.partial(loss, xb=xs, yb=ys))
      b, _ = dense(functools.partial(loss, xb=xs, yb=ys), params)
    else:
      extra = dict(
        curvature_predict_fn=lambda p: predict(p, xs),
        curvature_output_loss_fn=lambda z: out_loss(z, ys),
      )
      b, _ = dense_gauss_newton(params, xs, ys)
    # Damping that makes the (possibly indefinite) sub-batch Hessian positive definite.
    lam = 0.5 + max(0.0, -float(np.linalg.eigvalsh(b).min()))
    tx = sops.scale_by_newton_cg(**exact_kwargs(curvature=curvature, damping=lam))
    p, state = tx.update(g, tx.init(params), params, value_fn=value_fn, **extra)
    expected = -np.linalg.solve(b + lam * np.eye(len(b)), np.asarray(ravel_pytree(g)[0]))
    np.testing.assert_allclose(np.asarray(ravel_pytree(p)[0]), expected, rtol=1e-8, atol=1e-11)
    # info.loss is float32: the loss on the gradient batch, not the curvature batch.
    assert float(state.info.loss) == pytest.approx(float(value_fn(params)), rel=1e-6)


def test_given_value_replaces_the_gradient_batch_forward_pass():
  params, x, y, _, loss = mlp()
  value_fn = functools.partial(loss, xb=x, yb=y)
  extra = dict(value_fn=value_fn, curvature_value_fn=functools.partial(loss, xb=x[:12], yb=y[:12]))
  value, g = jax.value_and_grad(value_fn)(params)
  tx = sops.newton_cg(maxiter=4, cg_backtracking=True)
  u0, s0 = tx.update(g, tx.init(params), params, **extra)
  u1, s1 = tx.update(g, tx.init(params), params, value=value, **extra)
  for a, b in zip(jax.tree.leaves((u0, s0)), jax.tree.leaves((u1, s1)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # The value is used as given: a wrong one shows up in the diagnostics.
  _, s2 = tx.update(g, tx.init(params), params, value=value + 1.0, **extra)
  assert float(s2[0].info.loss) == pytest.approx(float(value) + 1.0, rel=1e-6)


def test_cg_backtracking_takes_the_best_saved_iterate_walking_back():
  with jax.enable_x64(True):
    params, x, y, _, loss = mlp(seed=2)
    params = jax.tree.map(lambda p: 2 * p, params)  # far from quadratic: late iterates overshoot
    value_fn = functools.partial(loss, xb=x, yb=y)
    g = jax.grad(value_fn)(params)
    kw = dict(damping=1e-3, adaptive_damping=False, maxiter=20, tol=0.0, warm_start=False)
    tx = sops.scale_by_newton_cg(curvature="gauss_newton", cg_backtracking=True, **kw)
    p, _ = tx.update(
      g,
      tx.init(params),
      params,
      value_fn=value_fn,
      predict_fn=lambda q: predict(q, x),
      output_loss_fn=lambda z: out_loss(z, y),
    )
    # Reference: dense CG iterates at 1, 2, 3, 4, 5, 7, 9, 11, 14, 18, 20, Martens' walk back.
    gn, unravel = dense_gauss_newton(params, x, y)
    a = jnp.asarray(gn + 1e-3 * np.eye(len(gn)))
    b = -ravel_pytree(g)[0]
    cands = []
    for k in sops.linalg.backtracking_iterations(20):
      xk, _ = sops.linalg.conjugate_gradient(lambda v: a @ v, b, tol=0.0, maxiter=k)
      cands.append(np.asarray(xk))
    f = [float(value_fn(optax.tree.add(params, unravel(jnp.asarray(c))))) for c in cands]
    got = np.asarray(ravel_pytree(p)[0])
  best = len(f) - 1
  for j in range(len(f) - 2, -1, -1):
    if f[j] < f[best]:
      best = j
    else:
      break
  # Measured: the loss falls from iterate 1 to 2, then rises; the walk back stops at iterate 2.
  assert 0 < best < len(f) - 1, f
  np.testing.assert_allclose(got, cands[best], rtol=1e-6, atol=1e-9)


def test_recipe_options_train_under_jit_and_keep_state_types():
  params, x, y, example_loss, loss = mlp()
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  x = x.astype(jnp.float32)
  tx = sops.newton_cg(
    curvature="gauss_newton",
    maxiter=15,
    preconditioner="ema",
    cg_backtracking=True,
    progress_tol=5e-4,
  )

  @jax.jit
  def step(p, s):
    value_fn = functools.partial(loss, xb=x, yb=y)
    u, s = tx.update(
      jax.grad(value_fn)(p),
      s,
      p,
      value_fn=value_fn,
      curvature_predict_fn=lambda q: predict(q, x[:16]),
      curvature_output_loss_fn=lambda z: out_loss(z, y[:16]),
    )
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  f0 = float(loss(params, x, y))
  types = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  for _ in range(10):
    params, state = step(params, state)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == types
  assert step._cache_size() == 1
  assert float(loss(params, x, y)) < 0.75 * f0  # measured 0.65x after 10 steps


def test_missing_fisher_diagonal_raises_type_error():
  params, x, y, _, loss = mlp()
  value_fn = functools.partial(loss, xb=x, yb=y)
  tx = sops.scale_by_newton_cg(preconditioner="fisher")
  with pytest.raises(TypeError, match="fisher_diagonal"):
    tx.update(jax.grad(value_fn)(params), tx.init(params), params, value_fn=value_fn)


def test_curvature_batch_without_gradient_batch_loss_raises_type_error():
  params, x, y, _, loss = mlp()
  tx = sops.scale_by_newton_cg()
  g = jax.grad(functools.partial(loss, xb=x, yb=y))(params)
  with pytest.raises(TypeError, match="value_fn"):
    tx.update(g, tx.init(params), params, curvature_value_fn=lambda p: loss(p, x, y))


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(preconditioner="jacobi"), "preconditioner"),
    (dict(preconditioner_exponent=-1.0), "preconditioner_exponent"),
    (dict(preconditioner_decay=1.0), "preconditioner_decay"),
    (dict(cg_backtracking="yes"), "cg_backtracking"),
    (dict(progress_tol=0.0), "progress_tol"),
    (dict(cg_backtracking=True, maxiter=jnp.asarray(5)), "maxiter"),
  ],
)
def test_invalid_ingredient_options_raise_value_error_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    sops.newton_cg(**kwargs)
  with pytest.raises(ValueError, match=name):
    sops.scale_by_newton_cg(**kwargs)


@pytest.mark.extended
def test_pmap_with_ingredients_equals_single_device(devices):
  ndev = len(devices)
  params, x, y, _, loss = mlp(n=8 * ndev)
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  x = x.astype(jnp.float32)
  kw = dict(maxiter=8, damping=0.1, preconditioner="ema", cg_backtracking=True, progress_tol=1e-3)

  def make_step(tx, axis_name):
    def step(params, state, xb, yb):
      value_fn = functools.partial(loss, xb=xb, yb=yb)
      half = xb.shape[0] // 2
      curv_fn = functools.partial(loss, xb=xb[:half], yb=yb[:half])
      grads = jax.grad(value_fn)(params)
      updates, state = tx.update(
        grads, state, params, value_fn=value_fn, curvature_value_fn=curv_fn
      )
      return optax.apply_updates(params, updates), state

    return jax.jit(step) if axis_name is None else jax.pmap(step, axis_name=axis_name)

  single_tx, multi_tx = sops.newton_cg(**kw), sops.newton_cg(axis_name="batch", **kw)
  # Each replica's curvature batch is the first half of its shard: the single-device run uses
  # the same rows.
  xs, ys = x.reshape(ndev, -1, x.shape[1]), y.reshape(ndev, -1)
  half = xs.shape[1] // 2
  xc, yc = xs[:, :half].reshape(-1, x.shape[1]), ys[:, :half].reshape(-1)
  xo, yo = xs[:, half:].reshape(-1, x.shape[1]), ys[:, half:].reshape(-1)
  x_single, y_single = jnp.concatenate([xc, xo]), jnp.concatenate([yc, yo])
  assert_pmap_equals_single_device(
    (single_tx, make_step(single_tx, None), (x_single, y_single)),
    (multi_tx, make_step(multi_tx, "batch"), (xs, ys)),
    params,
  )
