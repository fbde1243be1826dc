# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of Shampoo's root schedule (staggered, synchronous, statistics_every) and RootConfig.

Schedule semantics are checked exactly: every stack entry's root must be the root of the
statistics *at the step recorded in ``root_steps``* (float64 eigh roots, compared with a float64
numpy root of the recorded statistics).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops
from sops._src import roots as roots_mod


def _np_root(a, p, ridge):
  w, v = np.linalg.eigh((a + a.T) / 2)
  w = np.maximum(w, 0.0)
  return (v * (w + ridge * w.max()) ** (-1.0 / p)) @ v.T


# Block size 4: "a" is 3x2 blocks (6 + 6 factors of size 4), "b" 2x2 (4 + 4), "c" 2x1 blocks of
# 4x3 (two 4-factors and two 3-factors, the last block padded): stacks (4, p=4) and (3, p=4).
PARAMS = {"a": (12, 8), "b": (8, 8), "c": (5, 3), "bias": (8,)}


def _grads(rng, n):
  return [{k: jnp.asarray(rng.standard_normal(s)) for k, s in PARAMS.items()} for _ in range(n)]


def _record(tx, grads):
  """Runs the updates; returns the final state and the statistics after every step (1-based)."""
  params = {k: jnp.zeros(s, jnp.float64) for k, s in PARAMS.items()}
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = {0: [np.asarray(s) for s in state.statistics]}
  for t, g in enumerate(grads, start=1):
    _, state = update(g, state, params)
    history[t] = [np.asarray(s) for s in state.statistics]
  return state, history


@pytest.mark.parametrize("every", [1, 3, 4])
@pytest.mark.parametrize("stagger", [True, False])
def test_every_root_is_the_root_of_the_statistics_at_its_recorded_step(rng, every, stagger):
  with jax.enable_x64(True):
    tx = sops.scale_by_shampoo(
      block_size=4,
      precondition_every=every,
      start_preconditioning_step=2,
      stagger_roots=stagger,
      inverse_root="eigh",
      matrix_epsilon=1e-4,
      statistics_dtype="float64",
    )
    state, history = _record(tx, _grads(rng, 11))
    part = _partition()
    for i, (_, p) in enumerate(part.stack_keys):
      steps = np.asarray(state.root_steps[i])
      roots = np.asarray(state.preconditioners[i])
      for j, t in enumerate(steps):
        if t == 0:
          np.testing.assert_array_equal(roots[j], np.eye(roots.shape[-1]))
          continue
        k = part.real_sizes[i][j]  # a padded block's root is the identity past its real size
        ref = np.eye(roots.shape[-1])
        ref[:k, :k] = _np_root(history[int(t)][i][j][:k, :k], p, 1e-4)
        np.testing.assert_allclose(roots[j], ref, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
      # The schedule: synchronous roots all come from the last root step; staggered ones from
      # the last `every` steps, and every entry has one once a full cycle has run.
      assert steps.min() > 0
      if stagger:
        assert steps.max() - steps.min() < every
      else:
        assert np.all(steps == 11 - (11 - 2) % every)


def _partition():
  """The partition sops.shampoo uses for PARAMS at block size 4."""
  from sops._src import shampoo as shampoo_mod  # noqa: PLC0415

  shapes = tuple(tuple(s) for s in PARAMS.values())
  return shampoo_mod._partition(shapes, 4, 4096, True, None, 1)


def test_staggering_spreads_root_work_evenly_over_steps(rng):
  # 22 entries in the 4x4 stack (and 2 in the 3x3 one) refreshed over precondition_every=5 steps:
  # chunks of ceil(22/5)=5, each step refreshes at most 5 + 1 entries, and all are refreshed within
  # every window of 5 steps.
  with jax.enable_x64(True):
    tx = sops.scale_by_shampoo(
      block_size=4,
      precondition_every=5,
      start_preconditioning_step=1,
      stagger_roots=True,
      statistics_dtype="float64",
    )
    params = {k: jnp.zeros(s, jnp.float64) for k, s in PARAMS.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    prev = [np.asarray(s) for s in state.root_steps]
    for t, g in enumerate(_grads(rng, 10), start=1):
      _, state = update(g, state, params)
      now = [np.asarray(s) for s in state.root_steps]
      refreshed = sum(int(np.sum(a != b)) for a, b in zip(now, prev, strict=True))
      assert 0 < refreshed <= 6, (t, refreshed)
      prev = now
    assert all(np.all(s >= 6) for s in prev)  # every entry refreshed during steps 6..10


@pytest.mark.extended
def test_staggered_with_every_1_equals_synchronous(rng):
  grads = _grads(rng, 6)
  outs = []
  for stagger in (True, False):
    tx = sops.scale_by_shampoo(
      block_size=4, precondition_every=1, start_preconditioning_step=2, stagger_roots=stagger
    )
    params = {k: jnp.zeros(s) for k, s in PARAMS.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    us = []
    for g in grads:
      u, state = update(jax.tree.map(lambda x: x.astype(jnp.float32), g), state, params)
      us.append(u)
    outs.append(us)
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.extended
def test_blocks_use_the_graft_direction_until_all_their_factors_have_roots(rng):
  # Staggered over 50 steps, the 4x4 stack's entries get their first roots one by one: a block's
  # output equals Adam's (graft-only) update until both of its factors have a root.
  tx = sops.scale_by_shampoo(
    block_size=4, precondition_every=50, start_preconditioning_step=1, stagger_roots=True
  )
  graft_only = sops.scale_by_shampoo(block_size=4, start_preconditioning_step=10**6)
  params = {k: jnp.zeros(s) for k, s in PARAMS.items()}
  s1, s2 = tx.init(params), graft_only.init(params)
  g = {k: jnp.asarray(v, jnp.float32) for k, v in _grads(rng, 1)[0].items()}
  u1, s1 = tx.update(g, s1, params)
  u2, _ = graft_only.update(g, s2, params)
  # Step 1 refreshed entry 0 of each stack only: no block of "a" (factors 0..5 and 6..11) is ready.
  np.testing.assert_allclose(np.asarray(u1["a"]), np.asarray(u2["a"]), rtol=1e-6)
  assert int(np.sum(np.asarray(s1.root_steps[0]) > 0)) == 1


def test_statistics_every_k_updates_statistics_on_steps_1_k_plus_1_(rng):
  tx = sops.scale_by_shampoo(block_size=4, statistics_every=3, b2=0.9)
  params = {k: jnp.zeros(s) for k, s in PARAMS.items()}
  state = tx.init(params)
  grads = [{k: jnp.asarray(v, jnp.float32) for k, v in g.items()} for g in _grads(rng, 7)]
  ref = None
  update = jax.jit(tx.update)
  for t, g in enumerate(grads, start=1):
    before = [np.asarray(s) for s in state.statistics]
    _, state = update(g, state, params)
    after = [np.asarray(s) for s in state.statistics]
    changed = any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == (t % 3 == 1), t
    if t == 1:
      ref = after
  # Step 1's statistics: 0.1 * G^T G of the first gradient's first 4x3 block of the 5x3 leaf
  # (entry 0 of the (3, p) stack).
  gc = np.asarray(grads[0]["c"], np.float64)[:4]
  np.testing.assert_allclose(ref[1][0], 0.1 * gc.T @ gc, rtol=1e-5, atol=1e-6)


def test_statistics_every_trains_and_keeps_the_state_finite(rng):
  x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
  y = x @ w_true

  def loss(w):
    return jnp.mean((x @ w - y) ** 2)

  tx = sops.shampoo(3e-2, statistics_every=4, precondition_every=5, start_preconditioning_step=5)
  w = jnp.zeros((8, 4))
  state = tx.init(w)
  step = jax.jit(
    lambda w, s: (lambda u, s: (optax.apply_updates(w, u), s))(*tx.update(jax.grad(loss)(w), s, w))
  )
  for _ in range(200):
    w, state = step(w, state)
  assert float(loss(w)) < 1e-2 * float(loss(jnp.zeros((8, 4))))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def test_root_config_validates_and_auto_picks_eigh_on_cpu():
  assert jax.default_backend() == "cpu"
  cfg = roots_mod.as_root_config("auto")
  assert cfg.method == "eigh" and not cfg.warm_start
  assert roots_mod.as_root_config("eigh").warm_start is False
  assert roots_mod.as_root_config(sops.RootConfig("coupled_newton")).method == "coupled_newton"
  for kw, name in [
    (dict(method="qr"), "method"),
    (dict(warm_start_tol=0.0), "warm_start_tol"),
    (dict(max_iters=0), "max_iters"),
    (dict(warm_start="yes"), "warm_start"),
  ]:
    with pytest.raises(ValueError, match=name):
      sops.RootConfig(**kw)
  with pytest.raises(ValueError, match="inverse_root"):
    sops.shampoo(1e-3, inverse_root="qr")
  with pytest.raises(ValueError, match="statistics_every"):
    sops.shampoo(1e-3, statistics_every=0)
  with pytest.raises(ValueError, match="stagger_roots"):
    sops.shampoo(1e-3, stagger_roots="yes")


@pytest.mark.extended
def test_warm_started_roots_stay_close_to_exact_roots_during_training(rng):
  # The tracked basis (one QR step per refresh, cold eigh above 1% off-diagonal mass) gives roots
  # within a few percent of exact float64 roots of the same statistics, on a slowly drifting
  # least-squares problem.
  x = jnp.asarray(rng.standard_normal((256, 16)) * np.logspace(0, -1, 16), jnp.float32)
  w_true = jnp.asarray(rng.standard_normal((16, 12)), jnp.float32)
  y = x @ w_true

  def loss(w, idx):
    return jnp.mean((x[idx] @ w - y[idx]) ** 2)

  tx = sops.scale_by_shampoo(
    precondition_every=2,
    start_preconditioning_step=2,
    stagger_roots=True,
    merge_small_dims=False,  # a 16x12 matrix: factors 16 and 12, p = 4
    inverse_root=sops.RootConfig("eigh", True),
  )
  w = jnp.zeros((16, 12))
  state = tx.init(w)
  update = jax.jit(lambda g, s: tx.update(g, s))
  for _ in range(60):
    idx = rng.integers(0, 256, 32)
    _, state = update(jax.grad(loss)(w, idx), state)
    w = w - 1e-2 * jax.grad(loss)(w, idx)
  errs = []
  # Each root is from at most one step before the last (staggered over 2 steps): compare it with
  # the exact root of the current statistics, which one step of b2 = 0.999 barely moves.
  for st, roots in zip(state.statistics, state.preconditioners, strict=True):
    ref = _np_root(np.asarray(st[0], np.float64), 4, 1e-6)
    got = np.asarray(roots[0], np.float64)
    errs.append(np.linalg.norm(got - ref, 2) / np.linalg.norm(ref, 2))
  assert max(errs) < 0.05, errs
  assert float(state.info.max_root_error) <= 1e-2
