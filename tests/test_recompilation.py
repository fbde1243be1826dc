# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Every optimizer, alone and in the usual optax wrappers, compiles its jitted step once.

A second trace of a jitted training step means the optimizer state changed type between steps
(a dtype, a shape, a weak type or the tree structure): on a real model that is a second
compilation of the whole step, and under ``lax.cond`` or ``lax.scan`` it is a type error. Each
configuration runs 50 steps, past several root or basis refreshes and line searches, counting
traces with a Python side effect inside the jitted function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import sops

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

STEPS = 50
MASK = {"b": False, "w": True}


def _problem():
  """Least squares on fixed data with params of a 2-D and a 1-D leaf."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((16, 6)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((16, 4)), jnp.float32)
  params = {
    "b": jnp.zeros(4, jnp.float32),
    "w": jnp.asarray(0.1 * rng.standard_normal((6, 4)), jnp.float32),
  }

  def loss(p):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  return params, loss


def _masked(tx):
  """``tx`` on ``w`` only, ``b`` frozen: the usual way to exclude leaves with optax.masked."""
  return optax.chain(
    optax.masked(tx, MASK), optax.masked(optax.set_to_zero(), {k: not v for k, v in MASK.items()})
  )


# The public aliases, each alone and in the common wrappers; shampoo's roots and SOAP's bases are
# refreshed every 5 steps (10 refreshes in 50 steps, 5 under MultiSteps).
ALIASES = {
  "newton_cg": (sops.newton_cg, dict(learning_rate=0.5)),
  "shampoo": (
    sops.shampoo,
    dict(learning_rate=1e-2, start_preconditioning_step=5, precondition_every=5),
  ),
  "soap": (sops.soap, dict(learning_rate=1e-2, precondition_every=5)),
}
WRAPPERS = {
  "plain": lambda f, kw: f(**kw),
  "inject": lambda f, kw: optax.inject_hyperparams(f)(**kw),
  "multisteps": lambda f, kw: optax.MultiSteps(f(**kw), every_k_schedule=2),
  "clip": lambda f, kw: optax.chain(optax.clip_by_global_norm(1.0), f(**kw)),
  "masked": lambda f, kw: _masked(f(**kw)),
}
# The scale_by_* transforms output the direction; a learning rate makes it a step. (factory,
# whether update takes value_fn)
OTHERS = {
  "newton_cg-linesearch": (
    lambda: sops.newton_cg(
      linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=5)
    ),
    True,
  ),
  "scale_by_newton_cg": (lambda: optax.chain(sops.scale_by_newton_cg(), optax.scale(0.5)), True),
  "scale_by_shampoo": (
    lambda: optax.chain(
      sops.scale_by_shampoo(start_preconditioning_step=5, precondition_every=5),
      optax.scale(-1e-2),
    ),
    False,
  ),
  "scale_by_soap": (
    lambda: optax.chain(sops.scale_by_soap(precondition_every=5), optax.scale(-1e-2)),
    False,
  ),
}
CASES = [
  pytest.param(lambda f=f, kw=kw, wrap=wrap: wrap(f, kw), f is sops.newton_cg, id=f"{n}-{w}")
  for n, (f, kw) in ALIASES.items()
  for w, wrap in WRAPPERS.items()
] + [pytest.param(make, takes_value_fn, id=n) for n, (make, takes_value_fn) in OTHERS.items()]


def _type(x):
  return jnp.shape(x), jnp.result_type(x), bool(getattr(x, "weak_type", False))


@pytest.mark.parametrize("make_tx,takes_value_fn", CASES)
def test_jitted_step_traces_once_and_state_types_are_stable(make_tx, takes_value_fn):
  params0, loss = _problem()
  tx = make_tx()
  traces = []

  def update(params, state):
    extra = {}
    if takes_value_fn:
      # The loss as a function of the leaves the optimizer sees (with optax.masked, w alone).
      extra["value_fn"] = lambda q: loss(
        {k: params[k] if isinstance(v, optax.MaskedNode) else v for k, v in q.items()}
      )
    return tx.update(jax.grad(loss)(params), state, params, **extra)

  @jax.jit
  def step(params, state):
    traces.append(None)  # runs once per trace, never when a compiled step runs
    updates, state = update(params, state)
    return optax.apply_updates(params, updates), state

  state0 = tx.init(params0)
  params, state = params0, state0
  for _ in range(STEPS):
    params, state = step(params, state)
  jax.block_until_ready(params)

  assert len(traces) == 1
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  assert [_type(x) for x in jax.tree.leaves(state)] == [_type(x) for x in jax.tree.leaves(state0)]
  # The steps did something: a no-op optimizer would pass the checks above trivially.
  assert float(loss(params)) < float(loss(params0))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((params, state)))
  # An update inside lax.cond, next to a branch that keeps the state, type-checks: the output
  # state has exactly the types of the state from init (traced abstractly, not compiled).
  keep_or_update = lambda c, p, s: lax.cond(c, lambda: update(p, s)[1], lambda: s)  # noqa: E731
  jax.eval_shape(keep_or_update, jnp.asarray(True), params0, state0)
