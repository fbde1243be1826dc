# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Long runs: thousands of steps stay finite, skip nothing and keep the loss down (slow).

Run with ``python -m pytest -m slow tests/test_long_runs.py``. Each run is one ``lax.scan`` per
chunk of steps, compiled once, so the cost is the steps themselves (a few seconds on a laptop).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import sops

pytestmark = pytest.mark.slow


def _train(tx, params, loss, batches, steps, chunk, value_fn=False):
  """``steps`` jitted steps in chunks of ``lax.scan``; returns params, state and every loss."""

  def step(carry, t):
    params, state = carry
    batch = jax.tree.map(lambda a: a[t % len(a)], batches)
    f = lambda p: loss(p, batch)  # noqa: E731
    value, grads = jax.value_and_grad(f)(params)
    extra = {"value_fn": f} if value_fn else {}
    updates, state = tx.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state), value

  @jax.jit
  def run(params, state, start):
    return lax.scan(step, (params, state), start + jnp.arange(chunk))

  state = tx.init(params)
  losses = []
  for start in range(0, steps, chunk):
    (params, state), values = run(params, state, start)
    losses.append(np.asarray(values))
  return params, state, np.concatenate(losses)


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(tree))


def test_shampoo_bfloat16_statistics_stay_finite_over_10000_steps():
  # A tanh MLP regression on 16 fixed minibatches of a noisy teacher: stochastic gradients, so
  # the statistics keep moving, and bfloat16 statistics (8 bits of mantissa) accumulate 10,000
  # rounded EMA updates. Roots every 50 steps from step 10: 200 root computations.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 32, 8)).astype(np.float32)
  teacher = rng.standard_normal((8, 2)).astype(np.float32)
  y = np.tanh(x @ teacher) + 0.1 * rng.standard_normal((16, 32, 2)).astype(np.float32)
  batches = (jnp.asarray(x), jnp.asarray(y))
  params = {
    "w1": jnp.asarray(rng.standard_normal((8, 16)) / np.sqrt(8), jnp.float32),
    "b1": jnp.zeros(16, jnp.float32),
    "w2": jnp.asarray(rng.standard_normal((16, 2)) / np.sqrt(16), jnp.float32),
    "b2": jnp.zeros(2, jnp.float32),
  }

  def loss(p, batch):
    xb, yb = batch
    return jnp.mean((jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"] - yb) ** 2)

  tx = sops.shampoo(1e-3, statistics_dtype="bfloat16")
  full = lambda p: np.mean([float(loss(p, (x[i], y[i]))) for i in range(16)])  # noqa: E731
  new, state, losses = _train(tx, params, loss, batches, 10_000, 2_500)
  info = state[0].info

  assert _all_finite(new) and _all_finite(losses)
  assert int(info.nonfinite_skips) == 0
  assert int(info.root_computations) == 200
  assert all(s.dtype == jnp.bfloat16 for s in state[0].statistics)
  assert full(new) < 0.5 * full(params)
  # No late divergence: the last 1,000 steps are as good as the 1,000 before them.
  assert losses[-1000:].mean() <= 1.1 * losses[-2000:-1000].mean()


def test_newton_cg_stays_finite_at_convergence_over_2000_steps():
  # L2-regularised logistic regression (strictly convex): Newton-CG converges in tens of steps,
  # then runs ~2,000 steps at the minimum, where gradients, CG residuals and predicted decreases
  # are at rounding level: the regime where 0/0 and damping runaway would show.
  rng = np.random.default_rng(1)
  x = rng.standard_normal((256, 10)).astype(np.float32)
  w_true = rng.standard_normal(10).astype(np.float32)
  y = np.where(x @ w_true + 0.5 * rng.standard_normal(256) > 0, 1.0, -1.0).astype(np.float32)
  batches = (jnp.asarray(x)[None], jnp.asarray(y)[None])  # one full batch
  params = {"w": jnp.zeros(10, jnp.float32), "b": jnp.zeros((), jnp.float32)}

  def loss(p, batch):
    xb, yb = batch
    margin = yb * (xb @ p["w"] + p["b"])
    return jnp.mean(jax.nn.softplus(-margin)) + 1e-3 * jnp.sum(p["w"] ** 2)

  tx = sops.newton_cg()
  new, state, losses = _train(tx, params, loss, batches, 2_000, 500, value_fn=True)
  ncg = state[0]

  assert _all_finite(new) and _all_finite(losses) and _all_finite(ncg)
  assert int(ncg.nonfinite_count) == 0
  final = float(loss(new, (x, y)))
  assert final < losses[0]
  # Converged and stayed there: a tiny gradient, and no step after the first 100 raised the loss
  # above the best by more than float32 resolution.
  grad = jax.grad(loss)(new, (x, y))
  assert float(optax.tree.norm(grad)) < 1e-4
  assert losses[100:].max() <= losses.min() + 1e-5 * abs(losses.min())
  assert 1e-6 <= float(ncg.damping) <= 1e6
