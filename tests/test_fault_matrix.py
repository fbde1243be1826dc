# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Failure behaviour of ``sops.newton_cg`` and ``sops.shampoo``, one test per fault kind.

Each test backs a row of ``docs/failure.md``. The property checked throughout: a fault inside
``jit`` never corrupts parameters or state (the step is skipped and counted, or rejected, or
flagged), and a fault known at construction or trace time raises ``ValueError`` naming the
argument or the tree path.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops
from sops import linalg

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

OPTIMIZERS = ("newton_cg", "shampoo")

# ---------------------------------------------------------------------------------------------
# Shared problem and runner: a small convex log-cosh regression on a two-leaf tree.


def problem(dtype="float32", scale=1.0):
  """Params and loss; cached so that every test on the same problem reuses one compiled step."""
  return _problem(jnp.dtype(dtype).name, float(scale))


@functools.cache
def _problem(dtype, scale, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((32, 6))
  y = x @ rng.standard_normal((6, 3))
  xs, ys = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  params = {"b": jnp.zeros(3, dtype), "w": jnp.zeros((6, 3), dtype)}

  def loss(p):
    return scale * jnp.mean(jnp.log(jnp.cosh(xs @ p["w"] + p["b"] - ys)))

  return params, loss


def make(name, **kw):
  if name == "newton_cg":
    return sops.newton_cg(**kw)
  kw.setdefault("learning_rate", 0.05)
  return sops.shampoo(start_preconditioning_step=1, precondition_every=2, **kw)


@functools.cache
def _stepper(name, loss, kw):
  tx = make(name, **dict(kw))

  @jax.jit
  def step(params, state, g):
    if name == "newton_cg":
      u, state = tx.update(g, state, params, value_fn=loss)
    else:
      u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  return tx, step


def skips(name, state):
  """The optimizer's count of skipped (non-finite) steps."""
  inner = state[0]
  return int(inner.nonfinite_count if name == "newton_cg" else inner.info.nonfinite_skips)


def all_finite(tree):
  return all(
    bool(jnp.all(jnp.isfinite(x)))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  )


def train(name, params, loss, steps, corrupt=None, **kw):
  """Runs ``steps`` jitted steps of ``make(name, **kw)``; ``corrupt(t, grads)`` may alter the
  gradient of step ``t``. Returns the params after every step (index 0 is the start) and the
  final state.
  """
  tx, step = _stepper(name, loss, tuple(sorted(kw.items())))
  state = tx.init(params)
  history = [params]
  for t in range(steps):
    g = jax.grad(loss)(params)
    if corrupt is not None:
      g = corrupt(t, g)
    params, state = step(params, state, g)
    history.append(params)
  return history, state


STEPS = {"newton_cg": 8, "shampoo": 30}
SLOW = pytest.mark.slow  # compiles a configuration of its own; run with -m slow

# ---------------------------------------------------------------------------------------------
# Non-finite and extreme values.


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_one_nonfinite_gradient_mid_training_is_skipped_and_counted(name, bad):
  params, loss = problem()
  hist, state = train(
    name,
    params,
    loss,
    STEPS[name],
    corrupt=lambda t, g: jax.tree.map(lambda x: x.at[0].set(bad), g) if t == 3 else g,
  )
  assert skips(name, state) == 1
  jax.tree.map(np.testing.assert_array_equal, hist[4], hist[3])  # the bad step changed nothing
  assert all_finite(state) and all_finite(hist[-1])
  assert float(loss(hist[-1])) < 0.5 * float(loss(params))  # training went on


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_huge_finite_gradient_is_rejected_or_skipped_never_applied(name):
  # x1e30 once: Newton-CG solves it (no overflow any more), the trial loss is inf, so the
  # Levenberg-Marquardt rule rejects the step (info.rejected, not nonfinite); Shampoo's statistics
  # overflow, so it skips and counts the step. Either way the params do not move.
  params, loss = problem()
  hist, state = train(
    name,
    params,
    loss,
    4,
    corrupt=lambda t, g: jax.tree.map(lambda x: x * 1e30, g) if t == 3 else g,
  )
  jax.tree.map(np.testing.assert_array_equal, hist[4], hist[3])
  assert all_finite(state)
  if name == "newton_cg":
    assert skips(name, state) == 0 and bool(state[0].info.rejected)
    assert not bool(state[0].info.nonfinite)
  else:
    assert skips(name, state) == 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_tiny_gradients_give_finite_nonzero_updates_without_flags(name):
  # Gradients x1e-30 every step: r^T r underflowed to 0 in float32, so Newton-CG's CG returned a
  # silent zero update. Now the update is nonzero, tiny, and flagged as stalled (it cannot lower
  # the loss measurably).
  params, loss = problem()
  hist, state = train(
    name, params, loss, 3, corrupt=lambda t, g: jax.tree.map(lambda x: x * 1e-30, g)
  )
  assert skips(name, state) == 0 and all_finite(state) and all_finite(hist[-1])
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), hist[-1], hist[-2])
  assert max(jax.tree.leaves(moved)) > 0
  if name == "newton_cg":
    assert bool(state[0].info.stalled) and int(state[0].info.cg_iterations) >= 1


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_newton_cg_is_invariant_to_loss_scale_in_float32(scale):
  # Loss x1e20 flagged every step non-finite (g.g overflowed), loss x1e-20 gave silent zero
  # updates. With the damping in the same units (it is absolute), the trajectory is the same as
  # at scale 1, up to float32 rounding.
  params, loss_1 = problem()
  _, loss_s = problem(scale=scale)

  def run(loss, c):
    kw = dict(damping=c, min_damping=1e-6 * c, max_damping=1e6 * c) if c != 1 else {}
    return train("newton_cg", params, loss, 6, **kw)

  (hist_1, _), (hist_s, state) = run(loss_1, 1.0), run(loss_s, scale)
  assert int(state[0].nonfinite_count) == 0
  assert float(loss_1(hist_s[-1])) < 1e-2 * float(loss_1(params))
  np.testing.assert_allclose(float(loss_1(hist_s[-1])), float(loss_1(hist_1[-1])), rtol=1e-2)


def test_newton_cg_tiny_loss_with_default_damping_is_flagged_stalled():
  # Loss x1e-20 against the default (absolute) damping 1: the step is ~1e-20 long and cannot
  # lower the loss measurably. It is taken, nothing is flagged non-finite, and info.stalled says so.
  params, loss = problem(scale=1e-20)
  hist, state = train("newton_cg", params, loss, 2)
  info = state[0].info
  assert bool(info.stalled) and not bool(info.nonfinite) and not bool(info.rejected)
  assert int(info.cg_iterations) >= 1 and all_finite(hist[-1])


def test_newton_cg_huge_loss_is_not_flagged_nonfinite():
  # Loss x1e30, default damping: steps that overshoot are rejected by the LM rule, never
  # reported as non-finite; the state stays finite.
  params, loss = problem(scale=1e30)
  hist, state = train("newton_cg", params, loss, 4)
  assert int(state[0].nonfinite_count) == 0 and all_finite(state) and all_finite(hist[-1])
  assert float(loss(hist[-1])) <= float(loss(params))


@pytest.mark.parametrize("case", ["nan_loss", "inf_curvature"])
def test_newton_cg_nonfinite_loss_or_curvature_is_skipped(case):
  w = jnp.array([0.0, 1.0])
  if case == "nan_loss":

    def value_fn(p):
      return jnp.sum(p**2) + jnp.nan
  else:

    def value_fn(p):  # finite value and gradient, infinite Hessian at p[0] = 0
      return jnp.sum(jnp.abs(p) ** 1.5) + jnp.sum((p - 2.0) ** 2)

  tx = sops.newton_cg()
  state = tx.init(w)
  u, state = jax.jit(lambda s: tx.update(jnp.ones(2), s, w, value_fn=value_fn))(state)
  np.testing.assert_array_equal(u, np.zeros(2))
  assert bool(state[0].info.nonfinite) and int(state[0].nonfinite_count) == 1
  assert all_finite(state)


def test_newton_cg_indefinite_hessian_stops_cg_and_still_descends():
  def loss(w):  # a saddle at 0: Hessian diag(2, -2)
    return w[0] ** 2 - w[1] ** 2 + 0.25 * w[1] ** 4

  w = jnp.array([1.0, 0.1])
  tx = sops.scale_by_newton_cg(damping=0.0, adaptive_damping=False)
  p, state = jax.jit(lambda s: tx.update(jax.grad(loss)(w), s, w, value_fn=loss))(tx.init(w))
  assert bool(state.info.nonpositive_curvature) and not bool(state.info.nonfinite)
  assert float(jnp.vdot(jax.grad(loss)(w), p)) < 0  # a descent direction
  assert float(loss(w + 0.1 * p)) < float(loss(w))


# ---------------------------------------------------------------------------------------------
# Dtypes and leaves.


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
  "dtype", [pytest.param("bfloat16", marks=SLOW), pytest.param("float16", marks=SLOW), "float32"]
)
def test_low_and_single_precision_params_train_without_skips(name, dtype):
  params, loss = problem(dtype)
  hist, state = train(name, params, loss, STEPS[name])
  assert skips(name, state) == 0 and all_finite(state)
  assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(hist[-1]))
  assert float(loss(hist[-1])) < 0.5 * float(loss(params))


def test_newton_cg_float16_squared_norms_do_not_overflow():
  # Inner products used to be taken in float16: with a loss of ~700 the squared gradient norm
  # passed 65504, and every step was flagged non-finite (20 of 20). CG now runs in float32.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float16)
  y = x @ jnp.asarray(rng.standard_normal((16, 4)), jnp.float16)

  def loss(w):
    return 10.0 * jnp.mean(jnp.sum((x @ w - y) ** 2, axis=1))

  w0 = jnp.zeros((16, 4), jnp.float16)
  hist, state = train("newton_cg", w0, loss, 6)
  assert int(state[0].nonfinite_count) == 0 and hist[-1].dtype == jnp.float16
  assert float(loss(hist[-1])) < 1e-2 * float(loss(w0))


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float64_params_keep_their_dtype(name):
  with jax.enable_x64(True):
    params, loss = problem("float64")
    hist, state = train(name, params, loss, 3)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(hist[-1]))
    assert skips(name, state) == 0 and float(loss(hist[-1])) < float(loss(params))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_integer_leaves_pass_through_unchanged(name):
  # Shampoo failed on float0 gradients ("setting an array element with a sequence") and
  # Newton-CG on any int leaf (a raw JAX error). Int/bool leaves and their float0 or int
  # gradients are now passed through unchanged, as optax.masked does; float leaves train.
  params, loss = problem()
  params = {**params, "step": jnp.arange(3, dtype=jnp.int32), "mask": jnp.ones(2, bool)}
  tx = make(name)
  state = tx.init(params)
  g = jax.grad(loss, allow_int=True)(params)
  g = {**g, "mask": jnp.zeros(2, jnp.int32)}  # an int "gradient" passes through as well
  assert g["step"].dtype == jax.dtypes.float0
  if name == "newton_cg":
    u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss))(g, state, params)
  else:
    u, state = jax.jit(tx.update)(g, state, params)
  assert u["step"].dtype == jax.dtypes.float0 and u["step"].shape == (3,)
  np.testing.assert_array_equal(u["mask"], g["mask"])
  floats = {k: params[k] for k in ("b", "w")}
  moved = optax.apply_updates(floats, {k: u[k] for k in ("b", "w")})
  assert all_finite(u) and float(loss(moved)) < float(loss(params))
  assert skips(name, state) == 0


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
  "leaves", ["empty", "scalar", "zero_size", pytest.param("large", marks=SLOW)]
)
def test_unusual_leaves_are_handled(name, leaves):
  if leaves == "empty":
    params = {}
  elif leaves == "scalar":
    params = {"a": jnp.array(0.5), "w": jnp.ones(3)}
  elif leaves == "zero_size":
    params = {"z": jnp.zeros((0, 3)), "w": jnp.ones(3)}
  else:  # longer than Shampoo's block size: blocked; one Newton-CG system of 20_000 unknowns
    params = {"w": jnp.ones(20_000)}

  def loss(p):
    return sum((jnp.sum((x - 2.0) ** 2) for x in jax.tree.leaves(p)), jnp.zeros(()))

  hist, state = train(name, params, loss, 2)
  assert jax.tree.structure(hist[-1]) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, hist[-1]) == jax.tree.map(jnp.shape, params)
  assert skips(name, state) == 0 and all_finite(state) and all_finite(hist[-1])
  if leaves != "empty" and leaves != "zero_size":
    assert float(loss(hist[-1])) < float(loss(params))


# ---------------------------------------------------------------------------------------------
# Structure errors.


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
  "case,path",
  [("missing", r"\['w'\]"), ("extra", r"\['x'\]"), ("shape", r"\['w'\]")],
)
def test_gradient_tree_mismatch_raises_naming_the_path(name, case, path):
  params, loss = problem()
  tx = make(name)
  state = tx.init(params)
  g = jax.grad(loss)(params)
  if case == "missing":
    g = {"b": g["b"]}
  elif case == "extra":
    g = {**g, "x": jnp.ones(2)}
  else:
    g = {**g, "w": jnp.ones((6, 4))}
  extra = {"value_fn": loss} if name == "newton_cg" else {}
  with pytest.raises(ValueError, match=path):
    tx.update(g, state, params, **extra)


def test_newton_cg_grads_not_matching_params_raise_naming_the_path():
  params, loss = problem()
  tx = sops.newton_cg()
  state = tx.init(params)
  g = {**jax.grad(loss)(params), "w": jnp.ones((6, 4))}
  with pytest.raises(ValueError, match=r"\['w'\].*grads leaf has shape \(6, 4\)"):
    tx.update(g, state, params, value_fn=loss)


def test_newton_cg_params_not_matching_init_raise_naming_the_path():
  params, loss = problem()
  tx = sops.newton_cg()
  state = tx.init(params)
  other = {"b": jnp.zeros(3), "v": jnp.zeros((6, 3))}
  with pytest.raises(ValueError, match=r"init.*\['v'\]"):
    tx.update(other, state, other, value_fn=lambda p: jnp.sum(p["v"]))


@pytest.mark.parametrize(
  "value_fn,match",
  [
    (lambda p: p["w"] ** 2, r"value_fn must return a scalar loss, got shape \(6, 3\)"),
    (lambda p: (jnp.sum(p["w"]), {"aux": 1}), r"\(loss, aux\).*not supported"),
    (lambda p: jnp.sum(p["w"] > 0), "value_fn must return a float loss"),
  ],
  ids=["non_scalar", "has_aux", "int_loss"],
)
def test_newton_cg_bad_value_fn_raises_value_error(value_fn, match):
  params, _ = problem()
  tx = sops.newton_cg()
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda s: tx.update(params, s, params, value_fn=value_fn))(tx.init(params))


# ---------------------------------------------------------------------------------------------
# Hyperparameters.


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
  "value", [float("inf"), float("nan"), -0.1, "0.1", jnp.array(-1.0)], ids=str
)
def test_invalid_learning_rate_raises_value_error(name, value):
  with pytest.raises(ValueError, match="learning_rate"):
    make(name, learning_rate=value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_learning_rate_is_accepted_and_does_not_move(name):
  params, loss = problem()
  hist, state = train(name, params, loss, 2, learning_rate=0.0)
  jax.tree.map(np.testing.assert_array_equal, hist[-1], params)
  assert all_finite(state)


@pytest.mark.parametrize(
  "kwargs,arg",
  [
    (dict(damping=float("inf")), "damping"),
    (dict(tol=float("inf")), "tol"),
    (dict(damping=jnp.array(-1.0)), "damping"),
    (dict(maxiter=jnp.array(2.5)), "maxiter"),
    (dict(warm_start_decay=np.float32(2.0)), "warm_start_decay"),
  ],
  ids=["damping_inf", "tol_inf", "damping_array", "maxiter_float_array", "decay_numpy"],
)
def test_newton_cg_invalid_hyperparameters_raise(kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    sops.newton_cg(**kwargs)
  with pytest.raises(ValueError, match=arg):
    sops.scale_by_newton_cg(**kwargs)


def test_newton_cg_unbounded_max_damping_is_accepted():
  assert sops.newton_cg(max_damping=float("inf")) is not None


@pytest.mark.parametrize(
  "kwargs,arg",
  [
    (dict(b1=jnp.array(1.0)), "b1"),
    (dict(b2=jnp.array(0.0)), "b2"),
    (dict(eps=float("inf")), "eps"),
    (dict(weight_decay=jnp.array(-1.0)), "weight_decay"),
    (dict(precondition_every=jnp.array(0)), "precondition_every"),
  ],
  ids=["b1_array", "b2_array", "eps_inf", "weight_decay_array", "every_array"],
)
def test_shampoo_array_hyperparameters_are_checked(kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    sops.shampoo(1e-2, **kwargs)


def test_injected_hyperparameters_are_checked_at_init_and_traced_ones_pass():
  tx = optax.inject_hyperparams(sops.shampoo)(learning_rate=1e-2, b1=1.0)
  with pytest.raises(ValueError, match="b1"):
    tx.init({"w": jnp.ones((3, 2))})
  tx = optax.inject_hyperparams(sops.newton_cg)(learning_rate=0.5, damping=2.0)
  params, loss = problem()
  state = tx.init(params)
  u, state = jax.jit(lambda s: tx.update(params, s, params, value_fn=loss))(state)
  assert all_finite(u)


# ---------------------------------------------------------------------------------------------
# State types.


def test_newton_cg_with_linesearch_compiles_once():
  # optax's line search starts with a weakly typed int that its update makes strong: the second
  # step recompiled. The state's types are now the same before and after an update.
  params, loss = problem()
  tx = sops.newton_cg(linesearch=optax.scale_by_backtracking_linesearch(15))
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))
  types = lambda s: jax.tree.map(lambda x: (x.dtype, x.weak_type), s)  # noqa: E731
  before = types(state)
  for _ in range(3):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
  assert types(state) == before
  assert step._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# Matrices for sops.linalg.inverse_pth_root.


def _matrix(kind):
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  eig = {
    "well_conditioned": np.linspace(1.0, 2.0, 8),
    "ill_conditioned": np.logspace(0, -6, 8),
    "huge_scale": 1e30 * np.linspace(1.0, 2.0, 8),
    "tiny_scale": 1e-30 * np.linspace(1.0, 2.0, 8),
    "indefinite": np.linspace(-1.0, 2.0, 8),
  }
  if kind == "zero":
    return np.zeros((8, 8))
  if kind == "nan":
    return np.full((8, 8), np.nan)
  if kind == "inf":
    return np.diag(np.r_[np.inf, np.ones(7)])
  return (q * eig[kind]) @ q.T


@pytest.mark.parametrize("method", ["coupled_newton", "eigh"])
@pytest.mark.parametrize(
  "kind",
  [
    "well_conditioned",
    "ill_conditioned",
    "huge_scale",
    "tiny_scale",
    "zero",
    "nan",
    "inf",
    "indefinite",
  ],
)
def test_inverse_pth_root_fault_matrix(kind, method):
  a = _matrix(kind)
  x, info = linalg.inverse_pth_root(jnp.asarray(a, jnp.float32), 4, method=method)
  assert bool(jnp.all(jnp.isfinite(x)))  # never NaN or Inf, whatever the input
  fails = kind in ("zero", "nan", "inf") or (kind == "indefinite" and method == "coupled_newton")
  assert bool(info.failed) == fails
  if fails:
    np.testing.assert_array_equal(x, np.eye(8))  # the fallback
  elif kind == "indefinite":  # eigh clamps the negative eigenvalues at zero, then adds the ridge
    w, v = np.linalg.eigh(a)
    ref = (v * (np.maximum(w, 0) + 1e-6 * w.max()) ** -0.25) @ v.T
    np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
  else:
    w, v = np.linalg.eigh(a / np.abs(a).max())
    ref = (v * (w + 1e-6 * w.max()) ** -0.25) @ v.T * np.abs(a).max() ** -0.25
    tol = 2e-2 if kind == "ill_conditioned" else 1e-4
    np.testing.assert_allclose(np.asarray(x), ref, rtol=tol, atol=tol * np.abs(ref).max())
