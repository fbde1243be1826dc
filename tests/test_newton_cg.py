# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""``sops.newton_cg`` / ``sops.scale_by_newton_cg`` against references and in user setups.

References: scipy's Newton-CG on an independent NumPy implementation of the same objective, exact
damped Newton steps from ``jax.hessian`` + ``numpy.linalg.solve``, ``numpy.linalg.lstsq``, and a
hand-computed CG iteration. Float64 tests use the ``jax.enable_x64`` context only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from flax import nnx
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

import sops

# ---------------------------------------------------------------------------------------------
# Problems.


@functools.lru_cache(maxsize=1)
def breast_cancer():
  x, y = load_breast_cancer(return_X_y=True)
  return StandardScaler().fit_transform(x), 2.0 * y - 1.0


def logreg_loss(w, x, y):
  """(1/n) sum log(1 + exp(-y (x.w + b))) + ||w||^2 / (2n): sklearn's C=1 objective over n."""
  n = x.shape[0]
  z = x @ w[:-1] + w[-1]
  return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 / n * jnp.sum(w[:-1] ** 2)


def scipy_logreg_optimum(x, y):
  """scipy Newton-CG on a NumPy implementation (independent of JAX) of ``logreg_loss``."""
  n = x.shape[0]

  def f(w):
    z = x @ w[:-1] + w[-1]
    return np.mean(np.logaddexp(0.0, -y * z)) + 0.5 / n * w[:-1] @ w[:-1]

  def grad(w):
    z = x @ w[:-1] + w[-1]
    s = -y * scipy.special.expit(-y * z) / n
    return np.concatenate([x.T @ s + w[:-1] / n, [s.sum()]])

  def hessp(w, v):
    z = x @ w[:-1] + w[-1]
    d = scipy.special.expit(z) * scipy.special.expit(-z) / n
    u = d * (x @ v[:-1] + v[-1])
    return np.concatenate([x.T @ u + v[:-1] / n, [u.sum()]])

  res = scipy.optimize.minimize(
    f,
    np.zeros(x.shape[1] + 1),
    jac=grad,
    hessp=hessp,
    method="Newton-CG",
    options={"xtol": 1e-14, "maxiter": 200},
  )
  assert res.success
  return res.x, res.fun


def mlp_problem(seed=0, n=64, d=4, h=8, k=3):
  rng = np.random.default_rng(seed)
  params = {
    "w1": jnp.asarray(rng.standard_normal((d, h)), jnp.float32) / 2,
    "b1": jnp.zeros(h),
    "w2": jnp.asarray(rng.standard_normal((h, k)), jnp.float32) / 3,
  }
  x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  y = jnp.asarray(rng.integers(0, k, n))

  def predict(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

  def out_loss(z, y):
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

  return params, x, y, predict, out_loss


def run(tx, params, value_fn, steps, *, jit=True, **kw):
  state = tx.init(params)

  def step(params, state):
    updates, state = tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn, **kw)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step) if jit else step
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


# ---------------------------------------------------------------------------------------------
# Numerics against references.


@pytest.mark.parametrize("linesearch", [None, "backtracking"])
def test_newton_cg_reaches_scipy_optimum_on_logistic_regression(linesearch):
  x, y = breast_cancer()
  w_ref, f_ref = scipy_logreg_optimum(x, y)
  ls = None if linesearch is None else optax.scale_by_backtracking_linesearch(15)
  tx = sops.newton_cg(linesearch=ls, damping=0.0, adaptive_damping=False, maxiter=100, tol=1e-3)
  with jax.enable_x64(True):
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    value_fn = functools.partial(logreg_loss, x=xj, y=yj)
    w = jnp.zeros(x.shape[1] + 1)
    state = tx.init(w)
    step = jax.jit(lambda w, s: tx.update(jax.grad(value_fn)(w), s, w, value_fn=value_fn))
    gaps = []
    for _ in range(15):
      p, state = step(w, state)
      w = optax.apply_updates(w, p)
      gaps.append(float(value_fn(w)) - f_ref)
      if abs(gaps[-1]) <= 1e-9:
        break
    grad_max = float(jnp.abs(jax.grad(value_fn)(w)).max())
  assert abs(gaps[-1]) <= 1e-9, gaps  # within 1e-9 of scipy's optimal value in <= 15 steps
  # scipy's own answer has gradient ~1e-7; ours is at least as stationary.
  assert grad_max <= 1e-7
  # ||w - w*|| <= ||grad|| / lambda_min(H) with lambda_min >= 1/n: agreement to ~1e-4.
  np.testing.assert_allclose(np.asarray(w), w_ref, atol=1e-4)


def test_first_step_is_the_exact_damped_newton_step():
  x, y = breast_cancer()
  x, y = x[:100, :6], y[:100]
  with jax.enable_x64(True):
    value_fn = functools.partial(logreg_loss, x=jnp.asarray(x), y=jnp.asarray(y))
    w = jnp.asarray(np.random.default_rng(0).standard_normal(7)) / 3
    tx = sops.scale_by_newton_cg(
      damping=0.3, adaptive_damping=False, maxiter=50, tol=1e-12, warm_start=False
    )
    g = jax.grad(value_fn)(w)
    p, state = tx.update(g, tx.init(w), w, value_fn=value_fn)
    h = np.asarray(jax.hessian(value_fn)(w))
  expected = -np.linalg.solve(h + 0.3 * np.eye(7), np.asarray(g))
  np.testing.assert_allclose(np.asarray(p), expected, rtol=1e-9, atol=1e-12)
  assert float(state.info.relative_residual) <= 1e-12 and int(state.info.cg_iterations) <= 7


def test_gauss_newton_solves_linear_least_squares_in_one_step():
  rng = np.random.default_rng(1)
  a, t = rng.standard_normal((30, 4)), rng.standard_normal(30)
  expected = np.linalg.lstsq(a, t, rcond=None)[0]
  with jax.enable_x64(True):
    aj, tj = jnp.asarray(a), jnp.asarray(t)
    predict = lambda w: aj @ w["w"]  # noqa: E731
    out_loss = lambda z: 0.5 * jnp.mean((z - tj) ** 2)  # noqa: E731
    tx = sops.newton_cg(curvature="gauss_newton", damping=0.0, adaptive_damping=False, tol=1e-12)
    w = {"w": jnp.zeros(4)}
    g = jax.grad(lambda w: out_loss(predict(w)))(w)
    # value_fn is optional for Gauss-Newton: it defaults to output_loss_fn(predict_fn(params)).
    p, _ = tx.update(g, tx.init(w), w, predict_fn=predict, output_loss_fn=out_loss)
    w1 = np.asarray(optax.apply_updates(w, p)["w"])
  np.testing.assert_allclose(w1, expected, rtol=1e-10)


def test_warm_start_begins_cg_at_the_decayed_previous_direction():
  """maxiter=1, learning rate 0.5: the second direction is one CG step from 0.9 * p1, by hand.

  (With a full step the new gradient is orthogonal to p1 and the warm start could not beat zero.)
  """
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
  a = (q * np.geomspace(1.0, 20.0, 5)) @ q.T
  c = rng.standard_normal(5)
  with jax.enable_x64(True):
    value_fn = lambda w: 0.5 * w @ jnp.asarray(a) @ w + jnp.asarray(c) @ w  # noqa: E731
    tx = sops.scale_by_newton_cg(
      damping=0.0, adaptive_damping=False, maxiter=1, tol=0.0, warm_start_decay=0.9
    )
    w0 = jnp.zeros(5)
    p1, state = tx.update(jax.grad(value_fn)(w0), tx.init(w0), w0, value_fn=value_fn)
    w1 = w0 + 0.5 * p1
    p2, _ = tx.update(jax.grad(value_fn)(w1), state, w1, value_fn=value_fn)
  p1, w1 = np.asarray(p1), np.asarray(w1)
  b = -(a @ w1 + c)
  x0 = 0.9 * p1
  r0 = b - a @ x0
  assert 0.5 * x0 @ a @ x0 - b @ x0 < 0  # the warm start beats zero, so it is kept
  expected = x0 + (r0 @ r0) / (r0 @ a @ r0) * r0
  np.testing.assert_allclose(np.asarray(p2), expected, rtol=1e-10)
  cold = (b @ b) / (b @ a @ b) * b  # what warm_start=False would give
  assert np.abs(expected - cold).max() > 1e-3


def test_descent_check_replaces_an_ascent_direction_by_minus_gradient():
  """Indefinite quadratic + a warm start that CG keeps: one CG step lands on an ascent direction."""
  g0 = np.array([1.6, 0.3])
  x0 = np.array([-2.8, 1.3])  # q(x0) < 0 and its CG step x1 has g.x1 > 0 (checked below)
  a = np.diag([1.0, -1.0])
  value_fn = lambda w: 0.5 * (w[0] ** 2 - w[1] ** 2) + jnp.asarray(g0, jnp.float32) @ w  # noqa: E731
  w = jnp.zeros(2)
  results = {}
  for check in (True, False):
    tx = sops.scale_by_newton_cg(
      damping=0.0,
      adaptive_damping=False,
      maxiter=1,
      tol=0.0,
      warm_start_decay=1.0,
      descent_check=check,
    )
    state = tx.init(w)._replace(cg_solution=jnp.asarray(x0, jnp.float32))
    results[check] = tx.update(jax.grad(value_fn)(w), state, w, value_fn=value_fn)
  r0 = -g0 - a @ x0
  x1 = x0 + (r0 @ r0) / (r0 @ a @ r0) * r0
  assert g0 @ x1 > 0
  np.testing.assert_allclose(results[False][0], x1, rtol=1e-5)
  assert not bool(results[False][1].info.fallback)
  np.testing.assert_allclose(results[True][0], -g0, rtol=1e-6)
  assert bool(results[True][1].info.fallback)


def test_adaptive_damping_shrinks_on_a_quadratic_down_to_its_floor():
  """On a quadratic the model is exact (rho = 1): damping / 1.5 per step, clipped at min_damping."""
  rng = np.random.default_rng(3)
  a = np.diag(np.geomspace(1.0, 10.0, 4))
  value_fn = lambda w: 0.5 * w @ jnp.asarray(a, jnp.float32) @ w - jnp.sum(w)  # noqa: E731
  tx = sops.scale_by_newton_cg(damping=1.0, min_damping=0.2, maxiter=10, tol=1e-6)
  w, state = jnp.asarray(rng.standard_normal(4), jnp.float32), None
  state = tx.init(w)
  dampings, ratios = [], []
  for _ in range(5):
    p, state = tx.update(jax.grad(value_fn)(w), state, w, value_fn=value_fn)
    w = optax.apply_updates(w, p)
    dampings.append(float(state.damping))
    ratios.append(float(state.info.reduction_ratio))
  np.testing.assert_allclose(dampings[:3], [1 / 1.5, 1 / 1.5**2, 1 / 1.5**3], rtol=1e-6)
  assert dampings[-1] == pytest.approx(0.2)
  np.testing.assert_allclose(ratios[:3], 1.0, atol=1e-3)


def test_adaptive_damping_rejects_a_step_that_raises_the_loss_and_grows():
  """Pseudo-Huber far from 0: the Newton step overshoots (rho < 0), so it is rejected."""
  value_fn = lambda w: jnp.sum(jnp.sqrt(1.0 + w**2))  # noqa: E731
  tx = sops.scale_by_newton_cg(damping=1e-3, max_damping=1.2e-3, damping_adjustment=2.0)
  w = jnp.array([3.0])
  p, state = tx.update(jax.grad(value_fn)(w), tx.init(w), w, value_fn=value_fn)
  assert bool(state.info.rejected) and float(state.info.reduction_ratio) < 0
  np.testing.assert_array_equal(p, np.zeros(1))
  assert float(state.damping) == pytest.approx(1.2e-3)  # 2e-3 clipped at max_damping
  # Fixed damping never rejects: the overshooting step is returned.
  fixed = sops.scale_by_newton_cg(damping=1e-3, adaptive_damping=False)
  p_fixed, fixed_state = fixed.update(jax.grad(value_fn)(w), fixed.init(w), w, value_fn=value_fn)
  assert float(value_fn(w + p_fixed)) > float(value_fn(w))
  assert not bool(fixed_state.info.rejected)


def test_linesearch_decreases_loss_where_full_newton_steps_diverge():
  value_fn = lambda w: jnp.sum(jnp.log(jnp.cosh(w)))  # noqa: E731
  w0 = jnp.array([1.5])  # Newton on log cosh diverges from |w| > 1.09
  plain = sops.newton_cg(damping=0.0, adaptive_damping=False)
  w_plain, _ = run(plain, w0, value_fn, 3)
  assert abs(float(w_plain[0])) > 10
  tx = sops.newton_cg(
    damping=0.0, adaptive_damping=False, linesearch=optax.scale_by_backtracking_linesearch(30)
  )
  state, w, losses = tx.init(w0), w0, [float(value_fn(w0))]
  for _ in range(8):
    p, state = tx.update(jax.grad(value_fn)(w), state, w, value_fn=value_fn)
    w = optax.apply_updates(w, p)
    losses.append(float(value_fn(w)))
  assert all(b < a for a, b in zip(losses[:5], losses[1:6], strict=True))
  assert abs(float(w[0])) < 1e-5


def test_learning_rate_schedule_scales_the_newton_direction():
  params, x, y, predict, out_loss = mlp_problem()
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  schedule = optax.linear_schedule(1.0, 0.25, transition_steps=2)
  kw = dict(warm_start=False, adaptive_damping=False)
  tx, base = sops.newton_cg(learning_rate=schedule, **kw), sops.scale_by_newton_cg(**kw)
  state, base_state = tx.init(params), base.init(params)
  g = jax.grad(value_fn)(params)
  tx_step = jax.jit(lambda s: tx.update(g, s, params, value_fn=value_fn))
  base_step = jax.jit(lambda s: base.update(g, s, params, value_fn=value_fn))
  for k in range(3):
    u, state = tx_step(state)
    d, base_state = base_step(base_state)
    scale = float(schedule(k))
    jax.tree.map(
      lambda a, b, s=scale: np.testing.assert_allclose(a, s * b, rtol=1e-5, atol=1e-7), u, d
    )


# ---------------------------------------------------------------------------------------------
# The public API the way users run it.


@pytest.mark.slow
def test_jit_and_no_jit_agree():
  params, x, y, predict, out_loss = mlp_problem()
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  tx = sops.newton_cg()
  pj, sj = run(tx, params, value_fn, 3, jit=True)
  pn, sn = run(tx, params, value_fn, 3, jit=False)
  # float32 op-by-op vs fused kernels differ in rounding (~1e-6), amplified a little by CG.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), pj, pn)
  assert int(sj[0].info.cg_iterations) == int(sn[0].info.cg_iterations)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
@pytest.mark.extended
def test_pmap_over_eight_devices_equals_single_device_full_batch(devices, curvature):
  ndev = len(devices)
  params, x, y, predict, out_loss = mlp_problem(n=8 * ndev)
  kw = dict(curvature=curvature, maxiter=8, damping=0.1)

  def make_step(tx, axis_name):
    def step(params, state, xb, yb):
      value_fn = lambda p: out_loss(predict(p, xb), yb)  # noqa: E731
      grads = jax.grad(value_fn)(params)  # local: scale_by_newton_cg pmean-s it
      extra = {}
      if curvature == "gauss_newton":
        extra = dict(predict_fn=lambda p: predict(p, xb), output_loss_fn=lambda z: out_loss(z, yb))
      updates, state = tx.update(grads, state, params, value_fn=value_fn, **extra)
      return optax.apply_updates(params, updates), state

    if axis_name is None:
      return jax.jit(step)
    return jax.pmap(step, axis_name=axis_name)

  single_tx = sops.newton_cg(**kw)
  multi_tx = sops.newton_cg(axis_name="batch", **kw)
  xs, ys = x.reshape(ndev, -1, x.shape[1]), y.reshape(ndev, -1)
  ss, sm = assert_pmap_equals_single_device(
    (single_tx, make_step(single_tx, None), (x, y)),
    (multi_tx, make_step(multi_tx, "batch"), (xs, ys)),
    params,
  )
  assert int(sm[0].info.cg_iterations[0]) == int(ss[0].info.cg_iterations)


def assert_pmap_equals_single_device(single, multi, params, steps=3):
  """Trains ``params`` for ``steps`` steps on one device and under ``pmap``, each given as
  ``(tx, step(params, state, *batch), batch)`` (the pmapped batch split over devices), and checks
  that every replica holds the same parameters, equal to the single device's up to float32
  reduction order (~1e-6, amplified by CG). Returns both final states."""
  (single_tx, single_step, single_batch), (multi_tx, multi_step, multi_batch) = single, multi
  ndev = jax.tree.leaves(multi_batch)[0].shape[0]
  ps, ss = params, single_tx.init(params)
  pm = jax.tree.map(lambda a: jnp.stack([a] * ndev), params)
  sm = jax.pmap(multi_tx.init)(pm)
  for _ in range(steps):
    ps, ss = single_step(ps, ss, *single_batch)
    pm, sm = multi_step(pm, sm, *multi_batch)
  for a, b in zip(jax.tree.leaves(ps), jax.tree.leaves(pm), strict=True):
    for replica in range(ndev):
      np.testing.assert_allclose(b[replica], b[0], rtol=0, atol=0)
    np.testing.assert_allclose(b[0], a, rtol=1e-4, atol=1e-5)
  return ss, sm


@pytest.mark.extended
def test_works_inside_optax_chain():
  params, x, y, predict, out_loss = mlp_problem()
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  g = jax.grad(value_fn)(params)
  tx = optax.chain(optax.clip_by_global_norm(1e6), sops.scale_by_newton_cg(), optax.scale(0.5))
  u, state = jax.jit(lambda s: tx.update(g, s, params, value_fn=value_fn))(tx.init(params))
  d, _ = sops.scale_by_newton_cg().update(
    g, sops.scale_by_newton_cg().init(params), params, value_fn=value_fn
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 0.5 * b, rtol=1e-5, atol=1e-7), u, d)
  assert int(optax.tree.get(state, "NewtonCGInfo").cg_iterations) > 0


def test_inject_hyperparams_makes_damping_and_learning_rate_arrays():
  params, x, y, predict, out_loss = mlp_problem()
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  g = jax.grad(value_fn)(params)
  tx = optax.inject_hyperparams(sops.newton_cg)(
    learning_rate=0.5, damping=2.0, adaptive_damping=False, warm_start=False
  )
  state = tx.init(params)
  step = jax.jit(lambda s: tx.update(g, s, params, value_fn=value_fn))
  u1, _ = step(state)
  state.hyperparams["damping"] = jnp.asarray(10.0)
  u2, state2 = step(state)
  for damping, u in ((2.0, u1), (10.0, u2)):
    ref_tx = sops.newton_cg(
      learning_rate=0.5, damping=damping, adaptive_damping=False, warm_start=False
    )
    ref, _ = ref_tx.update(g, ref_tx.init(params), params, value_fn=value_fn)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u, ref)
  assert float(optax.tree.get(state2, "ScaleByNewtonCGState").damping) == 10.0


def test_trains_with_flax_nnx_optimizer():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  _, x, y, _, out_loss = mlp_problem()
  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, sops.newton_cg(), wrt=nnx.Param)

  def loss(model):
    return out_loss(model(x), y)

  @nnx.jit
  def step(model, optimizer):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    value_fn = lambda p: loss(nnx.merge(graphdef, p, rest))  # noqa: E731
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads, value_fn=value_fn)
    return value

  losses = [float(step(model, optimizer)) for _ in range(15)]
  assert losses[-1] < 0.7 * losses[0]
  assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:], strict=False))  # full batch + LM


def test_state_keeps_types_and_does_not_recompile():
  params, x, y, predict, out_loss = mlp_problem()
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  tx = sops.newton_cg()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(value_fn)(params), state, params, value_fn=value_fn)
    return optax.apply_updates(params, updates), state

  types = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  for _ in range(3):
    params, state = step(params, state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state) == types
  assert step._cache_size() == 1
  ncg = state[0]
  assert ncg.count.dtype == jnp.int32 and ncg.damping.dtype == jnp.float32
  # A lax.cond around update type-checks because both branches return the same state type.
  jax.jit(
    lambda s: jax.lax.cond(
      True,
      lambda s: tx.update(jax.grad(value_fn)(params), s, params, value_fn=value_fn)[1],
      lambda s: s,
      s,
    )
  )(state)


@pytest.mark.parametrize("kwargs", [{}, {"curvature": "gauss_newton", "adaptive_damping": False}])
def test_init_state_can_be_donated_to_a_jitted_step(kwargs):
  # Training loops donate the optimizer state (`donate_argnums`); that fails with "donate the
  # same buffer twice" if two leaves of the state returned by `init` share a buffer.
  params, x, y, predict, out_loss = mlp_problem()
  fns = dict(
    value_fn=lambda p: out_loss(predict(p, x), y),
    predict_fn=lambda p: predict(p, x),
    output_loss_fn=lambda z: out_loss(z, y),
  )
  tx = sops.newton_cg(**kwargs)
  state = tx.init(params)
  leaves = jax.tree.leaves(state)
  assert len({id(leaf) for leaf in leaves}) == len(leaves)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    grads = jax.grad(fns["value_fn"])(params)
    updates, state = tx.update(grads, state, params, **fns)
    return optax.apply_updates(params, updates), state

  for _ in range(2):
    params, state = step(params, state)
  assert int(state[0].count) == 2
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_missing_value_fn_raises_type_error_showing_the_call():
  w = jnp.ones(2)
  tx = sops.newton_cg()
  call = r"update\(grads, state, params, value_fn=loss_fn\)"
  with pytest.raises(TypeError, match=r"value_fn.*" + call):
    tx.update(w, tx.init(w), w)
  with pytest.raises(TypeError, match="params"):
    tx.update(w, tx.init(w), None, value_fn=jnp.sum)


def test_linen_train_state_error_points_at_the_recipe_and_the_recipe_trains():
  from flax.training import train_state  # noqa: PLC0415

  params = {"w": jnp.ones(2)}
  loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)  # noqa: E731
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=sops.newton_cg())
  grads = jax.grad(loss)(params)
  # Flax forwards apply_gradients' keywords to replace(), not to tx.update.
  with pytest.raises(TypeError, match="TrainState.*docs/newton_cg.md"):
    state.apply_gradients(grads=grads, value_fn=loss)

  # The recipe from docs/newton_cg.md: call tx.update with the extra argument, then replace().
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value_fn=loss)
  state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  assert int(state.step) == 1
  assert float(loss(state.params)) < 0.5 * float(loss(params))


def test_missing_gauss_newton_pair_raises_type_error():
  w = jnp.ones(2)
  tx = sops.scale_by_newton_cg(curvature="gauss_newton")
  with pytest.raises(TypeError, match="predict_fn=.*output_loss_fn="):
    tx.update(w, tx.init(w), w, value_fn=jnp.sum, predict_fn=lambda p: p)


@pytest.mark.parametrize(
  "kwargs,name",
  [
    (dict(damping=-1.0), "damping"),
    (dict(maxiter=0), "maxiter"),
    (dict(maxiter=2.5), "maxiter"),
    (dict(tol=-1e-3), "tol"),
    (dict(curvature="newton"), "curvature"),
    (dict(warm_start_decay=1.5), "warm_start_decay"),
    (dict(min_damping=1.0, max_damping=0.5), "max_damping"),
    (dict(damping_adjustment=1.0), "damping_adjustment"),
    (dict(learning_rate=-1.0), "learning_rate"),
  ],
)
def test_invalid_hyperparameters_raise_value_error_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    sops.newton_cg(**kwargs)
  if "learning_rate" not in kwargs:
    with pytest.raises(ValueError, match=name):
      sops.scale_by_newton_cg(**kwargs)


def test_linesearch_of_wrong_type_raises_type_error():
  with pytest.raises(TypeError, match="linesearch"):
    sops.newton_cg(linesearch="armijo")


def _pow15(w):
  """Finite value and gradient everywhere, but an infinite Hessian at w[0] = 0."""
  return jnp.sum(jnp.abs(w) ** 1.5) + jnp.sum((w - 2.0) ** 2)


@pytest.mark.parametrize("case", ["loss", "grad", "hvp"])
def test_nonfinite_loss_grad_or_hvp_gives_zero_update_and_is_recorded(case):
  w = jnp.array([0.0, 1.0])
  value_fn, grads = _pow15, jax.grad(_pow15)(w)
  if case == "loss":
    value_fn = lambda p: _pow15(p) + jnp.nan  # noqa: E731
  elif case == "grad":
    grads = grads.at[1].set(jnp.inf)
  assert bool(jnp.all(jnp.isfinite(jax.grad(_pow15)(w))))
  tx = sops.newton_cg()
  state = tx.init(w)
  step = jax.jit(lambda g, s, f=value_fn: tx.update(g, s, w, value_fn=f))
  u, state = step(grads, state)
  np.testing.assert_array_equal(u, np.zeros(2))
  ncg = state[0]
  assert bool(ncg.info.nonfinite) and int(ncg.nonfinite_count) == 1
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state))
  assert float(ncg.damping) == 1.0  # unchanged
  # A finite step afterwards proceeds normally and keeps the count.
  w2 = jnp.array([0.5, 1.0])
  u2, state2 = tx.update(jax.grad(_pow15)(w2), state, w2, value_fn=_pow15)
  assert not bool(state2[0].info.nonfinite) and int(state2[0].nonfinite_count) == 1
  assert float(_pow15(w2 + u2)) < float(_pow15(w2))


def test_scale_by_newton_cg_output_is_a_descent_direction_for_apply_updates():
  params, x, y, predict, out_loss = mlp_problem(seed=5)
  value_fn = lambda p: out_loss(predict(p, x), y)  # noqa: E731
  g = jax.grad(value_fn)(params)
  tx = sops.scale_by_newton_cg()
  p, _ = tx.update(g, tx.init(params), params, value_fn=value_fn)
  assert float(ravel_pytree(g)[0] @ ravel_pytree(p)[0]) < 0
  assert float(value_fn(optax.apply_updates(params, p))) < float(value_fn(params))
