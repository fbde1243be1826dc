# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shampoo with asynchronous inverse roots in Flax Linen and Flax NNX training loops.

``sops.async_shampoo`` returns a pure optax transform and an ``AsyncRoots`` pipeline. The loop
changes by one line: after each optimizer step, ``opt_state = roots(opt_state)`` hands a
statistics snapshot to the root device every ``precondition_every`` steps (without waiting) and
installs finished roots ``root_staleness`` steps later. The roots run on the last CPU device:
the host when training on a GPU; here, on a CPU-only machine, a second simulated CPU device.

The script trains a small MLP on scikit-learn's digits with Linen (``TrainState``) and with NNX
(``nnx.Optimizer``), and checks that both give exactly the trajectory of
``sops.shampoo(..., root_staleness=s)``, the pure-``jit`` form of the same pipeline.

    python examples/async_roots.py
    python examples/async_roots.py --steps 300 --staleness 20
"""

from __future__ import annotations

import os

if __name__ == "__main__" and "XLA_FLAGS" not in os.environ:  # before JAX is imported
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import argparse  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import sops  # noqa: E402

SHAMPOO = dict(precondition_every=20, start_preconditioning_step=5, block_size=64)


def data():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(StandardScaler().fit_transform(x), jnp.float32), jnp.asarray(y)


def batches(n, steps, size=128, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, n, size) for _ in range(steps)]


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(128)(x))
    return nn.Dense(10)(nn.tanh(nn.Dense(128)(x)))


def train_linen(tx, roots, x, y, steps):
  """A Linen ``TrainState`` loop; ``roots`` (or ``None``) runs after every step."""
  model = LinenMLP()
  params = model.init(jax.random.key(0), x[:1])
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state, idx):
    def loss_fn(p):
      logits = state.apply_fn(p, x[idx])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  for idx in batches(len(x), steps):
    state, loss = step(state, idx)
    if roots is not None:
      state = state.replace(opt_state=roots(state.opt_state))  # the one added line
  return float(loss), state.params


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.l1, self.l2 = nnx.Linear(64, 128, rngs=rngs), nnx.Linear(128, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.tanh(self.l2(nnx.tanh(self.l1(x)))))


def train_nnx(tx, roots, x, y, steps):
  """An NNX ``nnx.Optimizer`` loop; ``roots`` (or ``None``) runs after every step."""
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, idx):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x[idx]), y[idx]).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for idx in batches(len(x), steps):
    loss = step(model, optimizer, idx)
    if roots is not None:  # the added lines: the pipeline works on the plain optax state
      new = roots(nnx.as_pure(optimizer.opt_state))
      nnx.update(optimizer.opt_state, nnx.state(new))
  return float(loss), nnx.state(model, nnx.Param)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--staleness", type=int, default=10, help="root_staleness s")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--smoke", action="store_true", help="a few steps (checks that it runs)")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 2 * args.staleness
  x, y = data()
  print(f"roots computed on {jax.devices('cpu')[-1]}, training on {jax.devices()[0]}")
  for name, train in (("Linen", train_linen), ("NNX", train_nnx)):
    tx, roots = sops.async_shampoo(args.lr, root_staleness=args.staleness, **SHAMPOO)
    loss_async, p_async = train(tx, roots, x, y, args.steps)
    delayed = sops.shampoo(args.lr, root_staleness=args.staleness, **SHAMPOO)
    loss_ref, p_ref = train(delayed, None, x, y, args.steps)
    same = all(
      bool(jnp.array_equal(a, b))
      for a, b in zip(jax.tree.leaves(p_async), jax.tree.leaves(p_ref), strict=True)
    )
    print(
      f"{name}: final batch loss {loss_async:.4f} with async roots, {loss_ref:.4f} with "
      f"root_staleness={args.staleness} in the step; parameters identical: {same}"
    )


if __name__ == "__main__":
  main()
