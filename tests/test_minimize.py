# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""``sops.newton_cg_minimize`` against independent references and in user setups.

References, all float64 and independent of JAX: the closed-form ridge solution
(``numpy.linalg.solve``), scipy's L-BFGS-B run to a gradient of ~1e-10 on NumPy implementations of
logistic and softmax regression, scipy's Newton-CG, and the known minimiser of Rosenbrock's
function. A gradient of 1e-10 on problems whose Hessian eigenvalues are >= ~1e-2 puts the
references within ~1e-8 of the minimiser, so solutions are compared to 1e-6 relative. Float64 tests
use the ``jax.enable_x64`` context only.
"""

import doctest
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.special
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.preprocessing import StandardScaler

import sops

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

LAM = 1e-2  # L2 strength of the convex problems; the bias is not regularised
RTOL = 1e-6  # relative distance of the solution to the reference (see the module docstring)

# ---------------------------------------------------------------------------------------------
# Problems: objective (JAX), data, and a float64 NumPy reference solution as (w, b).


@functools.cache
def dataset(name):
  load = {"breast_cancer": load_breast_cancer, "wine": load_wine, "diabetes": load_diabetes}[name]
  x, y = load(return_X_y=True)
  x = StandardScaler().fit_transform(x)
  if name == "breast_cancer":
    y = 2.0 * y - 1.0
  return x, y


def logistic(params, x, y, lam):
  z = x @ params["w"] + params["b"]
  return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def softmax(params, x, y, lam):
  z = x @ params["w"] + params["b"]
  nll = jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
  return jnp.mean(nll) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def ridge(params, x, y, lam):
  r = x @ params["w"] + params["b"] - y
  return 0.5 * jnp.mean(r**2) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def ridge_reference(x, y, lam):
  """Closed form: center x and y, solve (xc^T xc / n + lam I) w = xc^T yc / n."""
  xm, ym = x.mean(0), y.mean()
  xc, yc = x - xm, y - ym
  w = np.linalg.solve(xc.T @ xc / len(y) + lam * np.eye(x.shape[1]), xc.T @ yc / len(y))
  return w, ym - xm @ w


def lbfgs_reference(value_and_grad, shape_w, n_b):
  """scipy L-BFGS-B to a gradient of ~1e-10 on a NumPy objective of the flat (w, b)."""
  size_w = int(np.prod(shape_w))
  res = scipy.optimize.minimize(
    value_and_grad,
    np.zeros(size_w + n_b),
    jac=True,
    method="L-BFGS-B",
    options={"gtol": 1e-14, "ftol": 0.0, "maxiter": 10_000, "maxcor": 50},
  )
  assert np.max(np.abs(value_and_grad(res.x)[1])) < 1e-9, res
  return res.x[:size_w].reshape(shape_w), res.x[size_w:].reshape((n_b,) if n_b > 1 else ())


def logistic_reference(x, y, lam):
  n = len(y)

  def value_and_grad(v):
    w, b = v[:-1], v[-1]
    m = -y * (x @ w + b)
    s = -y * scipy.special.expit(m) / n
    value = np.mean(np.logaddexp(0.0, m)) + 0.5 * lam * w @ w
    return value, np.concatenate([x.T @ s + lam * w, [s.sum()]])

  return lbfgs_reference(value_and_grad, (x.shape[1],), 1)


def softmax_reference(x, y, lam):
  n, d = x.shape
  k = int(y.max()) + 1
  onehot = np.eye(k)[y]

  def value_and_grad(v):
    w, b = v[: d * k].reshape(d, k), v[d * k :]
    z = x @ w + b
    lse = scipy.special.logsumexp(z, axis=1)
    value = np.mean(lse - z[np.arange(n), y]) + 0.5 * lam * np.sum(w**2)
    r = (np.exp(z - lse[:, None]) - onehot) / n
    return value, np.concatenate([(x.T @ r + lam * w).ravel(), r.sum(0)])

  return lbfgs_reference(value_and_grad, (d, k), k)


PROBLEMS = {
  "logistic-breast_cancer": (logistic, "breast_cancer", logistic_reference),
  "softmax-wine": (softmax, "wine", softmax_reference),
  "ridge-diabetes": (ridge, "diabetes", ridge_reference),
}


def problem(name):
  fun, data, reference = PROBLEMS[name]
  x, y = dataset(data)
  w_ref, b_ref = reference(x, y, LAM)
  return fun, x, y, w_ref, b_ref


def rel_err(a, b):
  return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


def rosenbrock(x):
  return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


# ---------------------------------------------------------------------------------------------
# Numerics against references.


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_solution_matches_reference_on_convex_problems_from_random_starts(name, rng):
  with jax.enable_x64(True):
    fun, x, y, w_ref, b_ref = problem(name)
    p0 = {
      "w": jnp.asarray(rng.standard_normal(w_ref.shape)),
      "b": jnp.asarray(rng.standard_normal(b_ref.shape)),
    }
    params, info = sops.newton_cg_minimize(fun, p0, jnp.asarray(x), jnp.asarray(y), LAM, gtol=1e-9)
    value = float(fun(params, x, y, LAM))
  assert bool(info.converged) and float(info.grad_norm) <= 1e-9, info
  assert not bool(info.nonfinite) and not bool(info.linesearch_failed)
  assert 1 <= int(info.iterations) <= 20, info  # from N(0, 1) starts; <= 12 from zero, below
  assert int(info.cg_iterations) >= int(info.iterations)
  assert int(info.function_evaluations) >= int(info.iterations) + 1
  b = np.asarray(params["b"])
  if name.startswith("softmax"):  # the loss is invariant to b + c: compare the centred biases
    b, b_ref = b - b.mean(), b_ref - b_ref.mean()
  np.testing.assert_allclose(float(info.value), value, rtol=1e-12)
  assert rel_err(params["w"], w_ref) <= RTOL
  assert np.max(np.abs(b - b_ref)) <= RTOL * max(1.0, np.max(np.abs(b_ref)))


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_at_gtol_1e_6_converges_in_at_most_12_iterations_from_zero(name):
  with jax.enable_x64(True):
    fun, x, y, w_ref, b_ref = problem(name)
    p0 = {"w": jnp.zeros(w_ref.shape), "b": jnp.zeros(b_ref.shape)}
    params, info = sops.newton_cg_minimize(fun, p0, x, y, LAM, gtol=1e-6)
  assert bool(info.converged) and float(info.grad_norm) <= 1e-6
  assert int(info.iterations) <= 12, info
  assert rel_err(params["w"], w_ref) <= 1e-3  # gradient 1e-6 / curvature ~1e-2 scale


@pytest.mark.parametrize("n,d", [(50, 5), (30, 40)])
def test_ridge_on_random_data_matches_closed_form(n, d, rng):
  x, y = rng.standard_normal((n, d)), rng.standard_normal(n) * 3.0 + 1.0
  w_ref, b_ref = ridge_reference(x, y, LAM)
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    params, info = sops.newton_cg_minimize(ridge, p0, x, y, LAM, gtol=1e-10)
  assert bool(info.converged), info
  assert rel_err(params["w"], w_ref) <= RTOL
  np.testing.assert_allclose(params["b"], b_ref, rtol=RTOL, atol=RTOL)


def test_matches_scipy_newton_cg_on_logistic_regression():
  x, y = dataset("breast_cancer")
  n = len(y)

  def f(v):
    return np.mean(np.logaddexp(0.0, -y * (x @ v[:-1] + v[-1]))) + 0.5 * LAM * v[:-1] @ v[:-1]

  def grad(v):
    s = -y * scipy.special.expit(-y * (x @ v[:-1] + v[-1])) / n
    return np.concatenate([x.T @ s + LAM * v[:-1], [s.sum()]])

  def hessp(v, u):
    z = x @ v[:-1] + v[-1]
    t = scipy.special.expit(z) * scipy.special.expit(-z) / n * (x @ u[:-1] + u[-1])
    return np.concatenate([x.T @ t + LAM * u[:-1], [t.sum()]])

  options = {"xtol": 1e-14, "maxiter": 200}
  ref = scipy.optimize.minimize(
    f, np.zeros(31), jac=grad, hessp=hessp, method="Newton-CG", options=options
  )
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(30), "b": jnp.zeros(())}
    params, info = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-10)
  got = np.concatenate([params["w"], params["b"][None]])
  # scipy stops on the step size (xtol) with a gradient of ~2e-8 left, ~2e-6 relative from the
  # minimiser; the 1e-6 comparison against L-BFGS-B at a gradient of 1e-10 is the test above.
  assert np.max(np.abs(grad(ref.x))) < 1e-7 and rel_err(got, ref.x) <= 1e-5
  assert int(info.iterations) <= ref.nit  # Newton-CG, same forcing rule: no more steps than scipy
  np.testing.assert_allclose(float(info.value), ref.fun, rtol=1e-10)


def test_converges_when_newton_steps_decrease_f_below_its_rounding_noise():
  """Regression (seed 2072378066 of the random-ridge test): from |g| ~ 1e-9 a Newton step lowers f
  (~4.7) by ~1e-19, below the rounding noise of the mean; the exact Armijo test rejected such steps
  on noise and stalled at |g| = 6e-10 until maxiter. The rounding allowance lets them through."""
  rng = np.random.default_rng(2072378066)
  x, y = rng.standard_normal((50, 5)), rng.standard_normal(50) * 3.0 + 1.0
  w_ref, _ = ridge_reference(x, y, LAM)
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    params, info = sops.newton_cg_minimize(ridge, p0, x, y, LAM, gtol=1e-12)
  assert bool(info.converged) and not bool(info.linesearch_failed), info
  assert int(info.iterations) <= 8
  assert rel_err(params["w"], w_ref) <= 1e-12


@pytest.mark.parametrize("x0", [(-1.2, 1.0), (0.0, 1.0), (2.0, -1.0)])
def test_rosenbrock_converges_to_ones_from_convex_and_indefinite_starts(x0):
  with jax.enable_x64(True):
    x, info = sops.newton_cg_minimize(rosenbrock, jnp.asarray(x0), gtol=1e-10, maxiter=200)
  assert bool(info.converged), info
  np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-8)
  assert float(info.value) < 1e-16


def test_one_newton_step_solves_a_quadratic_with_identity_hessian():
  """Counters: one evaluation at the start, one trial (the unit step, accepted, converged)."""
  c = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}

  def fun(p, c):
    return 0.5 * sum(jnp.sum((p[k] - c[k]) ** 2) for k in p)

  params, info = sops.newton_cg_minimize(fun, jax.tree.map(jnp.zeros_like, c), c)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, c)
  assert (int(info.iterations), int(info.cg_iterations)) == (1, 1)
  assert int(info.function_evaluations) == 2
  assert float(info.grad_norm) == 0.0 and float(info.value) == 0.0


# ---------------------------------------------------------------------------------------------
# Transformations: vmap, jit, pytrees, recompilation.


def test_vmap_over_regularisation_equals_separate_solves():
  x, y = dataset("breast_cancer")
  lams = np.array([1e-3, 1e-2, 1e-1])
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(30), "b": jnp.zeros(())}

    def solve(lam):
      return sops.newton_cg_minimize(logistic, p0, x, y, lam, gtol=1e-10)

    batched, batched_info = jax.vmap(solve)(jnp.asarray(lams))
    for i, lam in enumerate(lams):
      params, info = solve(float(lam))
      # Batched matmuls round differently; both stop at |g| <= 1e-10 with curvature >= 1e-3.
      np.testing.assert_allclose(batched["w"][i], params["w"], rtol=RTOL, atol=1e-9)
      np.testing.assert_allclose(batched["b"][i], params["b"], rtol=RTOL, atol=1e-9)
      # Each problem keeps its own loop: the counters are per problem, not the batch maximum (a
      # CG solve may stop one iteration apart under the different rounding).
      assert batched_info.iterations[i] == info.iterations and batched_info.converged[i]
      for field in ("cg_iterations", "function_evaluations"):
        assert abs(int(getattr(batched_info, field)[i]) - int(getattr(info, field))) <= 2, field
  assert len(set(np.asarray(batched_info.iterations).tolist())) > 1  # the problems differ


def test_vmap_over_initial_params_reaches_the_same_minimum(rng):
  x, y = dataset("diabetes")
  w_ref, b_ref = ridge_reference(x, y, LAM)
  with jax.enable_x64(True):
    p0 = {"w": jnp.asarray(rng.standard_normal((4, 10))), "b": jnp.asarray(rng.standard_normal(4))}
    params, info = jax.vmap(lambda p: sops.newton_cg_minimize(ridge, p, x, y, LAM, gtol=1e-9))(p0)
  assert np.all(info.converged)
  for i in range(4):
    assert rel_err(params["w"][i], w_ref) <= RTOL
  np.testing.assert_allclose(params["b"], np.full(4, b_ref), rtol=RTOL)


def test_inside_jit_with_traced_data_closure_and_hyperparameters_equals_eager():
  x, y = dataset("breast_cancer")
  x = x.astype(np.float32)
  p0 = {"w": jnp.zeros(30, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  eager, eager_info = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-5)

  @jax.jit
  def solve(x, y, gtol):
    return sops.newton_cg_minimize(lambda p: logistic(p, x, y, LAM), p0, gtol=gtol)

  params, info = solve(x, y, 1e-5)
  assert bool(info.converged) and int(info.iterations) == int(eager_info.iterations)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, eager)
  # And jax.jit of the function itself, with fun static.
  jitted = jax.jit(sops.newton_cg_minimize, static_argnums=0)
  params2, _ = jitted(logistic, p0, x, y, LAM, gtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params2, eager)


def test_pytree_structure_and_float32_dtypes_are_kept():
  x, y = dataset("breast_cancer")
  p0 = {"w": jnp.zeros(30, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  params, info = sops.newton_cg_minimize(logistic, p0, x.astype(np.float32), y, LAM, gtol=1e-5)
  assert jax.tree.structure(params) == jax.tree.structure(p0)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert params["w"].shape == (30,) and params["b"].shape == ()
  assert isinstance(info, sops.NewtonCGMinimizeInfo)
  assert info.value.dtype == info.grad_norm.dtype == jnp.float32
  assert info.iterations.dtype == info.cg_iterations.dtype == jnp.int32
  assert info.converged.dtype == jnp.bool_ and bool(info.converged)


def test_mixed_dtype_leaves_keep_their_dtypes_and_match_the_float64_solve():
  # Each leaf keeps its dtype through CG, line search and the returned solution.
  x, y = dataset("breast_cancer")
  with jax.enable_x64(True):
    p64 = {"w": jnp.zeros(30), "b": jnp.zeros(())}
    ref, _ = sops.newton_cg_minimize(logistic, p64, x, y, LAM)
    p0 = {"w": jnp.zeros(30), "b": jnp.zeros((), jnp.float32)}
    params, info = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-6)
    assert params["w"].dtype == jnp.float64 and params["b"].dtype == jnp.float32
    assert bool(info.converged)
  # |g| <= 1e-6 and Hessian eigenvalues >= LAM = 1e-2 put both within 1e-4 of the minimiser.
  np.testing.assert_allclose(params["w"], ref["w"], atol=2e-4)
  np.testing.assert_allclose(params["b"], ref["b"], atol=2e-4)


def test_new_data_initial_point_and_tolerances_do_not_recompile():
  traces = []

  def fun(w, a):
    traces.append(None)  # runs only while tracing
    return 0.5 * jnp.sum((w - a) ** 2) + 0.25 * jnp.sum(w**4)

  sops.newton_cg_minimize(fun, jnp.zeros(3), jnp.ones(3))
  n = len(traces)
  sops.newton_cg_minimize(fun, jnp.ones(3), 2 * jnp.ones(3), gtol=1e-3, damping=0.5, maxiter=7)
  assert len(traces) == n


# ---------------------------------------------------------------------------------------------
# Options: each has a visible effect.


def test_damping_changes_the_steps_not_the_minimiser():
  x, y = dataset("breast_cancer")
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(30), "b": jnp.zeros(())}
    exact, exact_info = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-9)
    damped, damped_info = sops.newton_cg_minimize(
      logistic, p0, x, y, LAM, gtol=1e-9, damping=0.1, maxiter=200
    )
  assert bool(damped_info.converged)
  assert int(damped_info.iterations) > int(exact_info.iterations)
  assert rel_err(damped["w"], exact["w"]) <= RTOL


def test_cg_maxiter_truncates_each_solve():
  x, y = dataset("breast_cancer")
  with jax.enable_x64(True):
    p0 = {"w": jnp.zeros(30), "b": jnp.zeros(())}
    _, full = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-6)
    _, one = sops.newton_cg_minimize(logistic, p0, x, y, LAM, gtol=1e-6, cg_maxiter=1, maxiter=500)
  assert int(one.cg_iterations) <= int(one.iterations)
  assert int(one.iterations) > int(full.iterations)


@pytest.mark.parametrize("maxiter", [0, 2])
def test_maxiter_bounds_the_newton_steps(maxiter):
  p0 = jnp.array([-1.2, 1.0])
  x, info = sops.newton_cg_minimize(rosenbrock, p0, maxiter=maxiter)
  assert int(info.iterations) == maxiter and not bool(info.converged)
  np.testing.assert_allclose(float(info.value), float(rosenbrock(x)), rtol=1e-6)
  if maxiter == 0:
    np.testing.assert_array_equal(x, p0)
    assert int(info.function_evaluations) == 1


def test_linesearch_failure_is_flagged_and_more_trials_fix_it():
  def pseudo_huber(w):  # the full Newton step from 2 lands at -8, where f is larger
    return jnp.sum(jnp.sqrt(1.0 + w**2))

  x, info = sops.newton_cg_minimize(pseudo_huber, jnp.array([2.0]), max_linesearch_steps=1)
  assert bool(info.linesearch_failed) and not bool(info.converged)
  assert int(info.iterations) == 0 and float(x[0]) == 2.0
  x, info = sops.newton_cg_minimize(pseudo_huber, jnp.array([2.0]))
  assert bool(info.converged) and not bool(info.linesearch_failed)
  assert abs(float(x[0])) < 1e-5


# ---------------------------------------------------------------------------------------------
# Non-finite values: finite parameters always, and a flag.


def test_nonfinite_initial_value_returns_initial_params_flagged():
  x, y = dataset("breast_cancer")
  x = x.copy()
  x[3, 4] = np.nan
  p0 = {"w": jnp.zeros(30), "b": jnp.zeros(())}
  params, info = sops.newton_cg_minimize(logistic, p0, x, y, LAM)
  assert bool(info.nonfinite) and not bool(info.converged)
  assert int(info.iterations) == 0 and not np.isfinite(float(info.value))
  jax.tree.map(np.testing.assert_array_equal, params, p0)


def test_nonfinite_gradient_midway_stops_at_the_last_finite_iterate():
  def fun(w):  # finite everywhere; the gradient is NaN where w > 2 (0 * d sqrt(0))
    return 0.5 * jnp.sum((w - 3.0) ** 2) + 0.0 * jnp.sum(jnp.sqrt(jnp.maximum(2.0 - w, 0.0)))

  w, info = sops.newton_cg_minimize(fun, jnp.zeros(2))
  assert bool(info.nonfinite) and not bool(info.converged)
  assert int(info.iterations) == 1  # the Newton step to w = 3 was accepted, then g = NaN there
  assert np.all(np.isfinite(w)) and np.isfinite(float(info.value))
  np.testing.assert_allclose(w, [3.0, 3.0], rtol=1e-6)


def test_nan_region_is_backtracked_out_of_and_never_entered():
  def fun(w):  # the unconstrained minimiser w = 3 lies where f is NaN
    return 0.5 * jnp.sum((w - 3.0) ** 2) + jnp.where(jnp.any(w > 2.0), jnp.nan, 0.0)

  w, info = sops.newton_cg_minimize(fun, jnp.zeros(2), maxiter=20)
  assert np.all(np.isfinite(w)) and np.all(np.asarray(w) <= 2.0)
  assert np.isfinite(float(info.value)) and float(info.value) < float(fun(jnp.zeros(2)))
  assert not bool(info.converged) and not bool(info.nonfinite)
  assert int(info.iterations) >= 1


# ---------------------------------------------------------------------------------------------
# Validation and documentation.


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"gtol": -1.0}, "gtol"),
    ({"gtol": float("nan")}, "gtol"),
    ({"maxiter": -1}, "maxiter"),
    ({"maxiter": 2.5}, "maxiter"),
    ({"cg_maxiter": 0}, "cg_maxiter"),
    ({"damping": -0.1}, "damping"),
    ({"damping": float("inf")}, "damping"),
    ({"max_linesearch_steps": 0}, "max_linesearch_steps"),
  ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=rf"^{name} must"):
    sops.newton_cg_minimize(rosenbrock, jnp.zeros(2), **kwargs)


def test_invalid_params_and_objective_raise():
  with pytest.raises(ValueError, match="params must be"):
    sops.newton_cg_minimize(lambda w: jnp.sum(w**2.0), jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="fun must return a scalar"):
    sops.newton_cg_minimize(lambda w: w**2, jnp.ones(2))
  with pytest.raises(TypeError, match="fun must be callable"):
    sops.newton_cg_minimize(None, jnp.ones(2))


def test_docstring_has_required_sections_and_its_example_runs():
  fn = sops.newton_cg_minimize
  doc = inspect.getdoc(fn)
  for section in ("Args:", "Returns:", "Examples:", "References:"):
    assert section in doc
  globs = {"jax": jax, "jnp": jnp, "np": np, "sops": sops}
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  (test,) = doctest.DocTestFinder(recurse=False).find(fn, "newton_cg_minimize", globs=globs)
  assert test.examples
  runner.run(test)
  assert runner.summarize(verbose=False).failed == 0
