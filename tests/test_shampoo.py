# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of sops.scale_by_shampoo / sops.shampoo against a float64 numpy reference and in use."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops
from sops._src import roots as roots_mod

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

# ---------------------------------------------------------------------------------------------
# Float64 numpy reference: explicit blocks (numpy slicing, no padding), eigh roots, same grafting.


def _np_root(a, p, ridge):
  w, v = np.linalg.eigh((a + a.T) / 2)
  w = np.maximum(w, 0.0)
  return (v * (w + ridge * w.max()) ** (-1.0 / p)) @ v.T


def _unfold(x, d):
  return np.moveaxis(x, d, 0).reshape(x.shape[d], -1)


def reference_shampoo(
  grads,
  *,
  shape,
  block,
  b1,
  b2,
  graft,
  eps,
  ridge,
  start,
  every,
  p=None,
  nesterov=False,
  precondition_momentum=False,
):
  """Updates of Shampoo for a sequence of gradients of one leaf, reshaped to ``shape``.

  ``precondition_momentum``: Adam's order, the bias-corrected momentum of the gradients is
  preconditioned and grafted (no momentum afterwards); the statistics stay the gradients'.
  """
  rank = len(shape)
  p = p or 2 * rank
  corners = list(itertools.product(*[range(0, d, block) for d in shape]))
  sl = [
    tuple(slice(c, min(c + block, d)) for c, d in zip(cs, shape, strict=True)) for cs in corners
  ]
  stats = {k: [np.zeros((s.stop - s.start,) * 2) for s in sls] for k, sls in enumerate(sl)}
  roots = {k: [np.eye(s.stop - s.start) for s in sls] for k, sls in enumerate(sl)}
  nu = np.zeros(shape)
  m = np.zeros(shape)
  w_new = 1.0 if b2 == 1 else 1 - b2
  outs = []
  for t, g0 in enumerate(grads, start=1):
    g = np.asarray(g0, np.float64).reshape(shape)
    x = g  # what gets preconditioned
    if precondition_momentum:
      m = b1 * m + (1 - b1) * g
      x = m / (1 - b1**t)
      if nesterov:
        x = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    if graft in ("adam", "rmsprop", "adagrad"):
      nu = (nu + g**2) if graft == "adagrad" else b2 * nu + w_new * g**2
      corr = 1 - b2**t if (graft == "adam" and b2 < 1) else 1.0
      gd = x / (np.sqrt(nu / corr) + eps)
    else:
      gd = x
    d = np.zeros(shape)
    for k, s in enumerate(sl):
      gb = g[s]
      for dim in range(rank):
        u = _unfold(gb, dim)
        stats[k][dim] = b2 * stats[k][dim] + w_new * u @ u.T
        if t >= start and (t - start) % every == 0:
          roots[k][dim] = _np_root(stats[k][dim], p, ridge)
      y = x[s]
      for dim in range(rank):
        y = np.moveaxis(np.tensordot(roots[k][dim], y, axes=(1, dim)), 0, dim)
      if graft != "none":
        y = y * np.linalg.norm(gd[s]) / np.linalg.norm(y)
      d[s] = y
    d = d if t >= start else gd
    if precondition_momentum:
      outs.append(d)
      continue
    m = b1 * m + (1 - b1) * d
    if nesterov:
      outs.append(b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * d / (1 - b1**t))
    else:
      outs.append(m / (1 - b1**t))
  return outs


def _run(tx, grads, shape):
  state = tx.init(jnp.zeros(shape))
  update = jax.jit(tx.update)
  outs = []
  for g in grads:
    u, state = update(jnp.asarray(g, jnp.float32), state)
    outs.append(np.asarray(u, np.float64))
  return outs, state


# Tolerance: float32 statistics and roots of full-rank, moderately conditioned factors (the first
# root comes after 4 steps of Gaussian gradients), relative ridge 1e-4: the float32 rounding of the
# roots (~1e-6 relative, amplified by the condition number of the -1/p power) stays below 1e-4.
RTOL = 2e-4


def _assert_close(got, want):
  for t, (a, b) in enumerate(zip(got, want, strict=True)):
    np.testing.assert_allclose(
      a.reshape(b.shape), b, rtol=RTOL, atol=RTOL * np.abs(b).max(), err_msg=f"step {t + 1}"
    )


CASES = [
  # (param shape, block_size, merge, reference shape) -- name
  pytest.param((6, 5), 8, True, (6, 5), id="matrix"),
  pytest.param((10, 7), 4, True, (10, 7), id="matrix-blocked-padded"),
  pytest.param((9,), 8, True, (9,), id="vector-graft-only"),
  pytest.param((4, 5, 6), 8, False, (4, 5, 6), id="3d"),
  pytest.param((4, 5, 6), 20, True, (20, 6), id="3d-merged"),
  pytest.param((2, 3, 4, 5), 8, False, (2, 3, 4, 5), id="4d"),
  pytest.param((3, 1, 6, 5), 6, True, (3, 6, 5), id="4d-squeezed-blocked"),
]


@pytest.mark.parametrize("shape,block,merge,ref_shape", CASES)
@pytest.mark.parametrize("inverse_root", ["eigh", "coupled_newton"])
def test_direction_matches_float64_reference(shape, block, merge, ref_shape, inverse_root, rng):
  grads = [rng.standard_normal(shape) for _ in range(9)]
  kw = dict(b1=0.9, b2=0.95, eps=1e-8, start=4, every=2)
  tx = sops.scale_by_shampoo(
    block_size=block,
    merge_small_dims=merge,
    b1=kw["b1"],
    b2=kw["b2"],
    matrix_epsilon=1e-4,
    precondition_every=2,
    stagger_roots=False,
    start_preconditioning_step=4,
    inverse_root=inverse_root,
  )
  got, state = _run(tx, grads, shape)
  if len(ref_shape) == 1:
    # Graft only: the reference with rank-1 "blocks" skipped is Adam's direction with momentum.
    want = reference_shampoo(
      grads, shape=ref_shape, block=block, graft="adam", ridge=1e-4, **{**kw, "start": 10**6}
    )
  else:
    want = reference_shampoo(grads, shape=ref_shape, block=block, graft="adam", ridge=1e-4, **kw)
  _assert_close(got, want)
  assert int(state.info.root_failures) == 0


@pytest.mark.parametrize(
  "graft,b2,nesterov,override,first",
  [
    ("rmsprop", 0.99, False, None, False),
    ("adagrad", 0.9, True, None, False),
    ("sgd", 1.0, False, None, False),
    ("none", 0.99, False, 3, False),
    ("adam", 1.0, True, 2, False),
    ("adam", 0.99, False, None, True),
    ("rmsprop", 0.9, True, None, True),
    ("sgd", 1.0, False, 2, True),
    ("none", 0.99, True, None, True),
  ],
)
def test_graft_momentum_and_exponent_options_match_reference(
  graft, b2, nesterov, override, first, rng
):
  shape = (7, 6)
  grads = [rng.standard_normal(shape) * (1 + t) for t in range(7)]
  tx = sops.scale_by_shampoo(
    block_size=4,
    b1=0.5,
    b2=b2,
    graft=graft,
    nesterov=nesterov,
    precondition_momentum=first,
    exponent_override=override,
    matrix_epsilon=1e-3,
    precondition_every=3,
    stagger_roots=False,
    start_preconditioning_step=3,
    inverse_root="eigh",
  )
  got, _ = _run(tx, grads, shape)
  want = reference_shampoo(
    grads,
    shape=shape,
    block=4,
    b1=0.5,
    b2=b2,
    graft=graft,
    eps=1e-8,
    ridge=1e-3,
    start=3,
    every=3,
    p=override,
    nesterov=nesterov,
    precondition_momentum=first,
  )
  _assert_close(got, want)


def test_roots_only_on_root_steps_and_diagnostics_count():
  rng = np.random.default_rng(3)
  tx = sops.scale_by_shampoo(
    block_size=8, precondition_every=3, start_preconditioning_step=2, stagger_roots=False
  )
  state = tx.init(jnp.zeros((5, 4)))
  update = jax.jit(tx.update)
  for t in range(1, 9):
    old = state.preconditioners[0]
    _, state = update(jnp.asarray(rng.standard_normal((5, 4)), jnp.float32), state)
    changed = not np.array_equal(np.asarray(old), np.asarray(state.preconditioners[0]))
    is_root_step = t >= 2 and (t - 2) % 3 == 0
    assert changed == is_root_step, t
    assert int(state.info.steps_since_root) == (0 if is_root_step else (t - 2) % 3 if t >= 2 else t)
  assert int(state.info.root_computations) == 3  # steps 2, 5, 8
  assert float(state.info.max_root_error) < 1e-2


def test_one_root_call_per_block_size_group(monkeypatch):
  calls = []
  orig = roots_mod._linalg.inverse_pth_root

  def counting(mats, p, **kw):
    calls.append((mats.shape, p))
    return orig(mats, p, **kw)

  monkeypatch.setattr(roots_mod._linalg, "inverse_pth_root", counting)
  params = {f"w{i}": jnp.zeros((12, 8)) for i in range(5)}  # 5 x (3x2 blocks of 4): 30+30 factors
  params["conv"] = jnp.zeros((1, 1, 8, 4))  # squeezed to (8, 4): 2x1 blocks of 4, 2+2 factors
  params["bias"] = jnp.zeros(4)  # graft only: no factor
  tx = sops.scale_by_shampoo(
    block_size=4, start_preconditioning_step=1, stagger_roots=False, inverse_root="coupled_newton"
  )
  state = tx.init(params)
  g = jax.tree.map(lambda x: jnp.ones_like(x), params)
  jax.jit(tx.update)(g, state)
  assert calls == [((5 * 6 * 2 + 4, 4, 4), 4)]


def test_failed_root_keeps_previous_preconditioner_and_counts(monkeypatch):
  orig = roots_mod._linalg.inverse_pth_root
  fail_now = {"on": False}

  def failing_first_block(mats, p, *, fallback=None, **kw):
    roots, info = orig(mats, p, fallback=fallback, **kw)
    if not fail_now["on"]:
      return roots, info
    failed = info.failed.at[0].set(True)
    roots = roots.at[0].set(fallback[0])
    return roots, info._replace(failed=failed)

  monkeypatch.setattr(roots_mod._linalg, "inverse_pth_root", failing_first_block)
  rng = np.random.default_rng(4)
  tx = sops.scale_by_shampoo(
    block_size=8, precondition_every=1, start_preconditioning_step=1, inverse_root="eigh"
  )
  state = tx.init(jnp.zeros((6, 6)))  # L and R: entries 0 and 1 of one stack
  grad = lambda: jnp.asarray(rng.standard_normal((6, 6)), jnp.float32)  # noqa: E731
  for _ in range(3):
    _, state = tx.update(grad(), state)
  fail_now["on"] = True
  before = state.preconditioners[0]
  _, state = tx.update(grad(), state)
  np.testing.assert_array_equal(np.asarray(state.preconditioners[0][0]), np.asarray(before[0]))
  assert not np.array_equal(np.asarray(state.preconditioners[0][1]), np.asarray(before[1]))
  assert int(state.info.root_failures) == 1


@pytest.mark.parametrize("method", [pytest.param("coupled_newton", marks=pytest.mark.slow), "eigh"])
def test_inverse_failure_threshold_accepts_rank_deficient_roots_and_rejects_above_it(method):
  # Statistics of rank-4 gradients in 48x48 and 40x40 factors: float32 roots are at the rounding
  # floor (eigh ~1e-1 residual), which the default threshold accepts; a tiny threshold rejects
  # every root, so the preconditioners stay the identity and every block is counted.
  rng = np.random.default_rng(7)
  basis_l, basis_r = rng.standard_normal((48, 4)), rng.standard_normal((4, 40))
  grads = [
    jnp.asarray(basis_l @ np.diag(rng.standard_normal(4)) @ basis_r, jnp.float32) for _ in range(6)
  ]
  params = jnp.zeros((48, 40))
  for thr, expect_fail in ((1.0, False), (1e-9, True)):
    tx = sops.scale_by_shampoo(
      precondition_every=3,
      stagger_roots=False,
      start_preconditioning_step=3,
      inverse_root=method,
      inverse_failure_threshold=thr,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
      _, state = update(g, state, params)
    n_blocks = sum(x.shape[0] for x in state.preconditioners)
    assert int(state.info.root_computations) == 2
    if expect_fail:
      assert int(state.info.root_failures) == 2 * n_blocks
      for x in state.preconditioners:
        np.testing.assert_array_equal(np.asarray(x), np.broadcast_to(np.eye(x.shape[-1]), x.shape))
    else:
      assert int(state.info.root_failures) == 0
      assert 0.0 < float(state.info.max_root_error) <= thr


def test_nonfinite_gradient_skips_step_and_is_recorded():
  tx = sops.shampoo(1e-2, start_preconditioning_step=1, precondition_every=1)
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  g = {"w": jnp.full((4, 3), 0.5), "b": jnp.ones(3)}
  _, state = tx.update(g, state, params)
  bad = {"w": g["w"].at[1, 2].set(jnp.inf), "b": g["b"].at[0].set(jnp.nan)}
  updates, new_state = jax.jit(tx.update)(bad, state, params)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  s_old, s_new = state[0], new_state[0]
  assert int(s_new.info.nonfinite_skips) == 1
  assert int(s_new.shampoo_count) == int(s_old.shampoo_count)
  for a, b in zip(
    jax.tree.leaves(s_old.statistics), jax.tree.leaves(s_new.statistics), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"block_size": 0}, "block_size"),
    ({"b1": 1.0}, "b1"),
    ({"b2": 0.0}, "b2"),
    ({"b2": 1.5}, "b2"),
    ({"eps": -1.0}, "eps"),
    ({"matrix_epsilon": -1e-3}, "matrix_epsilon"),
    ({"precondition_every": 0}, "precondition_every"),
    ({"start_preconditioning_step": 1.5}, "start_preconditioning_step"),
    ({"graft": "lamb"}, "graft"),
    ({"inverse_root": "svd"}, "inverse_root"),
    ({"inverse_failure_threshold": 0.0}, "inverse_failure_threshold"),
    ({"exponent_override": 0}, "exponent_override"),
    ({"max_preconditioner_dim": -1}, "max_preconditioner_dim"),
    ({"statistics_dtype": jnp.int32}, "statistics_dtype"),
    ({"nesterov": "yes"}, "nesterov"),
  ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    sops.scale_by_shampoo(**kwargs)


def test_invalid_learning_rate_and_weight_decay_raise():
  with pytest.raises(ValueError, match="learning_rate"):
    sops.shampoo(-1.0)
  with pytest.raises(ValueError, match="weight_decay"):
    sops.shampoo(1e-3, weight_decay=-0.1)


def test_mismatched_gradient_tree_names_first_bad_path():
  tx = sops.shampoo(1e-2)
  params = {"a": jnp.ones((3, 2)), "b": {"c": jnp.ones(4), "d": jnp.ones((2, 2))}}
  state = tx.init(params)
  bad_shape = {"a": jnp.ones((3, 2)), "b": {"c": jnp.ones(5), "d": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"\['b'\]\['c'\]"):
    tx.update(bad_shape, state, params)
  bad_key = {"a": jnp.ones((3, 2)), "b": {"c": jnp.ones(4), "e": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"\['b'\]\['e'\]"):
    tx.update(bad_key, state, params)
  missing = {"a": jnp.ones((3, 2)), "b": {"c": jnp.ones(4)}}
  with pytest.raises(ValueError, match=r"\['b'\]\['d'\]"):
    tx.update(missing, state, params)


# ---------------------------------------------------------------------------------------------
# In use: composition with optax, Flax, checkpointing, training, pmap.


def _mlp_problem(seed=0, n=256, d=12, h=16, c=3):
  """A small tanh MLP classification problem (inputs, labels, params, loss)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  w_true = rng.standard_normal((d, c))
  y = np.argmax(x @ w_true + 0.3 * rng.standard_normal((n, c)), axis=1)
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {
    "w1": jax.random.normal(k1, (d, h)) / np.sqrt(d),
    "b1": jnp.zeros(h),
    "w2": jax.random.normal(k2, (h, c)) / np.sqrt(h),
    "b2": jnp.zeros(c),
  }

  def loss(p, x=x, y=y):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return x, y, params, loss


def _train(tx, params, loss, steps):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize(
  "make_tx",
  [
    pytest.param(lambda: sops.shampoo(1e-2, weight_decay=1e-4), id="shampoo"),
    pytest.param(
      lambda: optax.chain(
        optax.clip_by_global_norm(1.0), sops.scale_by_shampoo(), optax.scale(-1e-2)
      ),
      id="chain",
    ),
    pytest.param(lambda: optax.inject_hyperparams(sops.shampoo)(learning_rate=1e-2), id="inject"),
    pytest.param(lambda: sops.shampoo(optax.cosine_decay_schedule(1e-2, 60)), id="schedule"),
    pytest.param(lambda: optax.MultiSteps(sops.shampoo(1e-2), every_k_schedule=2), id="multisteps"),
  ],
)
def test_trains_under_jit_in_optax_compositions(make_tx):
  # Shampoo's first 9 steps are Adam-like at lr 1e-2; 60 full-batch steps bring the loss of this
  # 3-class problem from ~1.1 to well below 0.6 (Adam itself reaches ~0.45), a random or broken
  # direction stays above it.
  _, _, params, loss = _mlp_problem()
  params, state = _train(make_tx(), params, loss, 60)
  assert float(loss(params)) < 0.6
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))


def test_inject_hyperparams_changes_learning_rate_in_state():
  _, _, params, loss = _mlp_problem()
  tx = optax.inject_hyperparams(sops.shampoo)(learning_rate=1e-2, b1=0.8)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  u, _ = jax.jit(tx.update)(jax.grad(loss)(params), state, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))


def test_masked_leaves_are_untouched_and_others_preconditioned():
  _, _, params, loss = _mlp_problem()
  mask = {"w1": True, "b1": True, "w2": False, "b2": False}
  tx = optax.chain(
    optax.masked(sops.shampoo(1e-2, start_preconditioning_step=1), mask),
    optax.masked(optax.set_to_zero(), jax.tree.map(lambda m: not m, mask)),
  )
  new, _ = _train(tx, params, loss, 3)
  np.testing.assert_array_equal(np.asarray(new["w2"]), np.asarray(params["w2"]))
  assert not np.allclose(np.asarray(new["w1"]), np.asarray(params["w1"]))


def test_init_state_can_be_donated_to_a_jitted_step():
  # Training loops donate the optimizer state (`donate_argnums`); that fails with "donate the
  # same buffer twice" if two leaves of the state returned by `init` share a buffer.
  params = {"w": jnp.ones((6, 5)), "b": jnp.ones(5)}
  tx = sops.shampoo(1e-2, start_preconditioning_step=1, precondition_every=1)
  state = tx.init(params)
  leaves = jax.tree.leaves(state)
  assert len({id(leaf) for leaf in leaves}) == len(leaves)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(2):
    params, state = step(params, state)
  assert int(state[0].info.root_computations) == 2
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))


def test_state_shapes_dtypes_fixed_and_bf16_params_keep_dtype():
  params = {"w": jnp.ones((6, 5), jnp.bfloat16), "b": jnp.ones(5, jnp.bfloat16)}
  tx = sops.shampoo(1e-2, start_preconditioning_step=2, precondition_every=2)
  state = tx.init(params)
  spec = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  update = jax.jit(tx.update)
  for t in range(4):
    g = jax.tree.map(lambda x, t=t: jnp.full_like(x, 0.1 * (t + 1)), params)
    u, state = update(g, state, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == spec
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
  assert update._cache_size() == 1  # no recompilation between steps


def test_flax_linen_train_state_and_nnx_optimizer_train():
  from flax import linen as nn
  from flax import nnx
  from flax.training import train_state

  x, y, _, _ = _mlp_problem()

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.tanh(nn.Dense(16)(x)))

  model = MLP()
  ts = train_state.TrainState.create(
    apply_fn=model.apply, params=model.init(jax.random.key(0), x)["params"], tx=sops.shampoo(1e-2)
  )

  def linen_loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(ts.apply_fn({"params": p}, x), y).mean()

  first = float(linen_loss(ts.params))
  step = jax.jit(lambda ts: ts.apply_gradients(grads=jax.grad(linen_loss)(ts.params)))
  for _ in range(40):
    ts = step(ts)
  assert float(linen_loss(ts.params)) < 0.7 * first

  class NNXMLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(12, 16, rngs=rngs)
      self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
      return self.l2(jnp.tanh(self.l1(x)))

  m = NNXMLP(nnx.Rngs(0))
  opt = nnx.Optimizer(m, sops.shampoo(1e-2), wrt=nnx.Param)

  def nnx_loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

  @nnx.jit
  def nnx_step(m, opt):
    grads = nnx.grad(nnx_loss)(m)
    opt.update(m, grads)

  first = float(nnx_loss(m))
  for _ in range(40):
    nnx_step(m, opt)
  assert float(nnx_loss(m)) < 0.7 * first


def test_orbax_checkpoint_round_trip_resumes_identically(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  _, _, params, loss = _mlp_problem()
  tx = sops.shampoo(1e-2, start_preconditioning_step=2, precondition_every=2)
  params, state = _train(tx, params, loss, 5)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "state", state)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  g = jax.grad(loss)(params)
  u1, _ = tx.update(g, state, params)
  u2, _ = tx.update(g, restored, params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_trains_mlp_classifier_below_threshold():
  # 4-class tanh MLP, full batch, default hyperparameters except the learning rate. The initial
  # loss is ~1.4 (log 4 = 1.39); Adam(1e-2) reaches ~0.03 in 100 steps. Shampoo must reach < 0.1:
  # a direction that is wrong by a rotation or a mis-scaled graft stalls well above it.
  _, _, params, loss = _mlp_problem(seed=1, n=512, d=20, h=32, c=4)
  p_sh, state = _train(sops.shampoo(1e-2), params, loss, 100)
  assert float(loss(p_sh)) < 0.1
  assert int(state[0].info.root_failures) == 0
  assert int(state[0].info.root_computations) == 2  # steps 10 and 60


@pytest.mark.parametrize(
  "root_kw",
  [
    pytest.param(
      dict(stagger_roots=False, inverse_root="coupled_newton"),
      id="sync-newton",
      marks=pytest.mark.slow,
    ),
    pytest.param(
      dict(stagger_roots=True, inverse_root=sops.RootConfig("eigh", True)),
      id="staggered-tracked-eigh",
    ),
  ],
)
def test_pmap_split_roots_equal_single_device_in_float64(devices, root_kw):
  # 8 devices each compute the roots of their share of the stacks (padded to a multiple of 8) and
  # all-gather them. In float64 the trajectory equals single-device training to ~1e-10: only the
  # batch shape of the root computation differs (see issue 6 on why not float32).
  n_dev = len(devices)
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    params = {
      "w": jnp.asarray(rng.standard_normal((10, 7))),
      "v": jnp.asarray(rng.standard_normal((5, 3))),
      "b": jnp.zeros(7),
    }
    kw = dict(
      block_size=4,
      start_preconditioning_step=2,
      precondition_every=2,
      statistics_dtype="float64",
      **root_kw,
    )
    single = sops.shampoo(1e-2, **kw)
    multi = sops.shampoo(1e-2, axis_name="dev", **kw)
    grads = [
      jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((n_dev, *p.shape))), params)
      for _ in range(6)
    ]

    def pstep(p, s, g):
      g = jax.lax.pmean(g, "dev")
      u, s = multi.update(g, s, p)
      return optax.apply_updates(p, u), s

    pstep = jax.pmap(pstep, axis_name="dev", devices=devices)
    rep = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n_dev, *x.shape)), t)  # noqa: E731
    p_m, s_m = rep(params), rep(multi.init(params))
    p_s, s_s = params, single.init(params)
    for g in grads:
      p_m, s_m = pstep(p_m, s_m, g)
      u, s_s = single.update(jax.tree.map(lambda x: x.mean(0), g), s_s, p_s)
      p_s = optax.apply_updates(p_s, u)
    for a, b in zip(jax.tree.leaves(p_m), jax.tree.leaves(p_s), strict=True):
      assert a.dtype == jnp.float64
      for d in range(n_dev):
        np.testing.assert_allclose(np.asarray(a[d]), np.asarray(b), rtol=1e-9, atol=1e-10)
    # Synchronous: steps 2, 4, 6. Staggered: a chunk on every step from step 2.
    assert int(s_m[0].info.root_computations[0]) == (5 if root_kw["stagger_roots"] else 3)


_EIGH_SCAN_PROGRAM = """
import jax, jax.numpy as jnp, numpy as np, optax, sops
sizes = (64, 256, 128, 32, 8, 32, 128, 256, 64)  # five stacks of different block sizes
keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
params = [jax.random.normal(k, (m, n)) / np.sqrt(m) for k, m, n in zip(keys, sizes, sizes[1:])]
data = jax.random.uniform(jax.random.key(1), (256, 64))

def loss(ps):
  x = data
  for w in ps[:-1]:
    x = jnp.tanh(x @ w)
  return jnp.mean((x @ ps[-1] - data) ** 2)

kw = dict(precondition_every=5, start_preconditioning_step=5)
for name, tx in [
  ("roots", sops.shampoo(3e-3, inverse_root="eigh", stagger_roots=False, **kw)),
  ("tracked", sops.shampoo(3e-3, inverse_root=sops.RootConfig("eigh", True), stagger_roots=True,
                           **kw)),
]:
  @jax.jit
  def chunk(ps, s):
    def body(carry, _):
      ps, s = carry
      u, s = tx.update(jax.grad(loss)(ps), s, ps)
      return (optax.apply_updates(ps, u), s), None
    return jax.lax.scan(body, (ps, s), None, length=20)[0]

  ps, s = params, tx.init(params)
  for _ in range(3):
    ps, s = jax.block_until_ready(chunk(ps, s))
  assert all(bool(jnp.all(jnp.isfinite(p))) for p in ps)
  print(name, int(s[0].info.root_computations))
"""


def test_eigh_roots_of_many_stacks_inside_scan_finish():
  # Regression: jaxlib's CPU eigh blocks on the intra-op thread pool, and two eigh calls (or
  # eigh with the power iteration's qr/eigvalsh) running at once deadlocked a 2-core machine
  # inside a scanned Shampoo step. Run in a subprocess so a hang fails the test, not the suite.
  # The hang needs the default (one device) thread pool, so the simulated devices are dropped.
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", _EIGH_SCAN_PROGRAM],
    capture_output=True,
    text=True,
    timeout=180,
    env=env,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert "roots 12" in out.stdout, out.stdout
  # Staggered: a chunk on every step from step 5, except the 11 steps of phase 4 (no stack has
  # more than 4 factors, so 4 phases cover every stack).
  assert "tracked 45" in out.stdout, out.stdout
