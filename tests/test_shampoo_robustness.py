# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shampoo and SOAP under hostile inputs: overflowing gradients, empty leaves, skipped steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended


@pytest.mark.parametrize("spike", [1e30, 1e20, 1e10])
def test_one_huge_finite_gradient_is_skipped_and_training_recovers(rng, spike):
  # g * 1e30 overflows g^2 in float32, g * 1e20 the sums in G G^T (entries ~1e19): the step is
  # skipped and counted, the state stays finite and training goes on. x1e10 does not overflow: it
  # is applied; like Adam's second moment, the statistics then stay dominated by it for ~1/(1-b2)
  # steps (slow progress, as with Adam), but every root still succeeds and nothing diverges.
  x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
  y = x @ jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)

  def loss(w):
    return jnp.mean((x @ w - y) ** 2)

  tx = sops.shampoo(1e-2, precondition_every=2, start_preconditioning_step=2)
  w = jnp.zeros((8, 4))
  state = tx.init(w)
  update = jax.jit(tx.update)
  for t in range(300):
    g = jax.grad(loss)(w)
    if t == 50:
      g = g * spike
    u, state = update(g, state, w)
    w = optax.apply_updates(w, u)
  inner = state[0]
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(inner))
  skipped = spike > 1e15
  assert int(inner.info.nonfinite_skips) == (1 if skipped else 0)
  assert int(inner.info.root_failures) == 0
  start = float(loss(jnp.zeros((8, 4))))
  assert float(loss(w)) < (0.05 if skipped else 1.0) * start


def test_zero_size_leaves_pass_through():
  params = {"z": jnp.zeros((0, 3)), "w": jnp.ones((4, 3)), "e": jnp.zeros((5, 0, 2))}
  tx = sops.shampoo(1e-2, start_preconditioning_step=1)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert updates["z"].shape == (0, 3) and updates["e"].shape == (5, 0, 2)
  assert bool(jnp.all(jnp.isfinite(updates["w"])))
  assert int(state[0].info.nonfinite_skips) == 0


CONFIGS = {
  "shampoo": lambda: sops.shampoo(1e-2, precondition_every=2, start_preconditioning_step=2),
  "shampoo_staggered": lambda: sops.shampoo(
    1e-2, precondition_every=2, start_preconditioning_step=2, stagger_roots=True
  ),
  "shampoo_delayed": lambda: sops.shampoo(
    1e-2, precondition_every=2, start_preconditioning_step=2, root_staleness=1
  ),
  "shampoo_compact_stats2": lambda: sops.shampoo(
    1e-2, precondition_every=2, start_preconditioning_step=2, storage="compact", statistics_every=2
  ),
  "shampoo_momentum_first": lambda: sops.shampoo(
    1e-2, precondition_every=2, start_preconditioning_step=2, precondition_momentum=True
  ),
  "soap": lambda: sops.soap(1e-2, precondition_every=2),
  "soap_stats2": lambda: sops.soap(1e-2, precondition_every=2, statistics_every=2),
  "soap_compact": lambda: sops.soap(1e-2, precondition_every=2, storage="compact"),
}


@pytest.mark.parametrize("bad_step", [3, 4])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_skipped_step_leaves_the_whole_state_bit_for_bit_unchanged(rng, name, bad_step):
  # The guard has no conditional around the step: every part of the state must be kept by the
  # step itself on a skipped step, including on steps that would refresh roots or statistics.
  params = {"w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32), "b": jnp.zeros(4)}
  x = jnp.asarray(rng.standard_normal((32, 6)), jnp.float32)

  def loss(p):
    return jnp.mean((x @ p["w"] + p["b"] - 1.0) ** 2)

  tx = CONFIGS[name]()
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = params
  for t in range(bad_step + 1):
    g = jax.grad(loss)(p)
    if t == bad_step:
      before = state
      g = jax.tree.map(lambda v: v.at[0].set(jnp.nan), g)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
  node = state[0]
  assert int(node.info.nonfinite_skips) == 1
  restored = node._replace(info=node.info._replace(nonfinite_skips=before[0].info.nonfinite_skips))
  state = (restored, *state[1:])
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(float(jnp.max(jnp.abs(v))) == 0.0 for v in jax.tree.leaves(u))
