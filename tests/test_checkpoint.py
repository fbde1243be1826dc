# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Orbax checkpoints of every optimizer resume bit-for-bit in a fresh Python process.

The test trains each configuration for 6 jitted steps and checkpoints params and optimizer state
after step 3 (all configurations in one checkpoint). A second Python process (this file run as a
script: ``python test_checkpoint.py CKPT OUT``) restores it against an abstract target built by
``tx.init`` and trains 3 more steps; its final params must equal the uninterrupted run's exactly.
A fresh process rules out any state that survives in memory (jit caches, Python objects) rather
than in the checkpoint; exact equality holds because both processes run the same XLA program on
the same inputs.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

TOTAL_STEPS = 6
SAVE_AFTER = 3


# Each optimizer with a learning rate and refresh frequencies that put a root or basis refresh
# after the save point. Shampoo: roots at steps 1, 4 and 7, so the resumed run first reuses the
# restored step-1 roots, then computes new ones from the restored statistics. SOAP: bases at steps
# 1 and 4.
FACTORIES = {"newton_cg": sops.newton_cg, "shampoo": sops.shampoo, "soap": sops.soap}
KWARGS = {
  "newton_cg": dict(learning_rate=0.5),
  "shampoo": dict(learning_rate=1e-2, start_preconditioning_step=1, precondition_every=3),
  "soap": dict(learning_rate=1e-2, precondition_every=3),
}
WRAPPERS = {
  "plain": lambda n: FACTORIES[n](**KWARGS[n]),
  "inject": lambda n: optax.inject_hyperparams(FACTORIES[n])(**KWARGS[n]),
  # The save point falls between the two mini-steps of the second update: the accumulated
  # gradients must survive the checkpoint.
  "multisteps": lambda n: optax.MultiSteps(FACTORIES[n](**KWARGS[n]), every_k_schedule=2),
}
CONFIGS = {f"{name}-{wrap}": (name, make) for name in FACTORIES for wrap, make in WRAPPERS.items()}
# Compact storage: int8/int16 values with float32 scales in a NamedTuple inside the state.
CONFIGS["shampoo-compact"] = ("shampoo", lambda n: sops.shampoo(**KWARGS[n], storage="compact"))


def _problem():
  """A 2-layer tanh MLP regression on fixed data: params of 2-D and 1-D leaves."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((32, 5)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((32, 3)), jnp.float32)
  params = {
    "w1": jnp.asarray(rng.standard_normal((5, 8)) / np.sqrt(5), jnp.float32),
    "b1": jnp.zeros(8, jnp.float32),
    "w2": jnp.asarray(rng.standard_normal((8, 3)) / np.sqrt(8), jnp.float32),
    "b2": jnp.zeros(3, jnp.float32),
  }

  def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

  return params, loss


def _make_step(name, tx, loss):
  extra = {"value_fn": loss} if name == "newton_cg" else {}

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def _resume_all(ckpt_path: Path, out_root: Path) -> None:
  """Runs in the fresh process: restores every configuration and trains the remaining steps."""
  import orbax.checkpoint as ocp

  params0, loss = _problem()
  txs = {key: make(name) for key, (name, make) in CONFIGS.items()}
  target = {key: {"params": params0, "opt_state": tx.init(params0)} for key, tx in txs.items()}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = ocp.StandardCheckpointer().restore(ckpt_path, abstract)
  # The NamedTuple state types come back from the target, not as dicts or lists.
  if jax.tree.structure(restored) != jax.tree.structure(target):
    raise AssertionError(f"{jax.tree.structure(restored)} != {jax.tree.structure(target)}")
  for key, (name, _) in CONFIGS.items():
    params, state = restored[key]["params"], restored[key]["opt_state"]
    step = _make_step(name, txs[key], loss)
    for _ in range(TOTAL_STEPS - SAVE_AFTER):
      params, state = step(params, state)
    np.savez(out_root / f"{key}.npz", **{k: np.asarray(v) for k, v in params.items()})


@pytest.mark.slow  # ~70 s (18 compilations); tests/test_shampoo.py has a fast in-process one
def test_orbax_checkpoint_resumes_bit_for_bit_in_a_fresh_process(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  ckpt_path, out_root = tmp_path / "ckpt", tmp_path / "out"
  out_root.mkdir()
  params0, loss = _problem()
  saved, expected = {}, {}
  for key, (name, make) in CONFIGS.items():
    tx = make(name)
    step = _make_step(name, tx, loss)
    params, state = params0, tx.init(params0)
    for t in range(1, TOTAL_STEPS + 1):
      params, state = step(params, state)
      if t == SAVE_AFTER:
        saved[key] = {"params": params, "opt_state": state}
    expected[key] = params
    # The steps after the save point must move the params, or equal params would prove nothing.
    assert not np.array_equal(np.asarray(params["w1"]), np.asarray(saved[key]["params"]["w1"]))
  # One checkpoint holds every configuration, so each process pays orbax's overhead once.
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(ckpt_path, saved)
  ckpt.wait_until_finished()

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flag = "--xla_force_host_platform_device_count=8"  # as tests/conftest.py
  if flag not in env.get("XLA_FLAGS", ""):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  proc = subprocess.run(
    [sys.executable, __file__, str(ckpt_path), str(out_root)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-5000:]

  for key, params in expected.items():
    with np.load(out_root / f"{key}.npz") as got:
      assert sorted(got.files) == sorted(params)
      for k, v in params.items():
        np.testing.assert_array_equal(got[k], np.asarray(v), err_msg=f"{key}: {k}")


if __name__ == "__main__":
  _resume_all(Path(sys.argv[1]), Path(sys.argv[2]))
