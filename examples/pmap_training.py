# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Data-parallel training with ``jax.pmap``: Shampoo and Newton-CG on every local device.

Each device gets one shard of every batch. Shampoo: gradients are averaged with ``lax.pmean`` and,
with ``axis_name`` set, each device computes the inverse roots of its share of the blocks and
all-gathers them. Newton-CG: with ``axis_name`` set, the gradient, the loss, every Hessian-vector
product and every CG inner product are averaged over the devices, so all replicas take the same
step as full-batch training on one device.

On a CPU-only machine the script simulates ``--devices`` devices (8 by default); on GPUs it uses
the real ones unchanged (the flag only affects the CPU platform).

    python examples/pmap_training.py
    python examples/pmap_training.py --steps 100 --devices 4
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # must happen before JAX is imported
  _n = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), None)
  if _n is None and "--devices" in sys.argv:
    _n = sys.argv[sys.argv.index("--devices") + 1]
  _flag = f"--xla_force_host_platform_device_count={_n or 8}"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sops  # noqa: E402

AXIS = "batch"


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.tanh(nn.Dense(64)(x)))


def loss_fn(params, x, y):
  logits = MLP().apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(tx, kind):
  """One pmapped training step; ``x``/``y`` are this device's shard of the batch."""

  def step(params, opt_state, x, y):
    value_fn = lambda p: loss_fn(p, x, y)  # noqa: E731
    loss, grads = jax.value_and_grad(value_fn)(params)
    if kind == "shampoo":
      grads = jax.lax.pmean(grads, AXIS)  # Shampoo expects averaged gradients
      updates, opt_state = tx.update(grads, opt_state, params)
    else:  # Newton-CG averages the gradient, products and inner products itself
      updates, opt_state = tx.update(grads, opt_state, params, value_fn=value_fn)
    return optax.apply_updates(params, updates), opt_state, jax.lax.pmean(loss, AXIS)

  return jax.pmap(step, axis_name=AXIS)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (CPU only)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch-size", type=int, default=512, help="global batch size")
  parser.add_argument("--smoke", action="store_true", help="a few steps (checks that it runs)")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 10

  n_dev = jax.local_device_count()
  x, y = load_digits(return_X_y=True)
  x = StandardScaler().fit_transform(x).astype(np.float32)
  per = args.batch_size // n_dev
  print(
    f"sops {sops.__version__} | JAX {jax.__version__} | {n_dev} x {jax.devices()[0].platform}"
    f" | global batch {per * n_dev} ({per} per device)"
  )

  runs = [
    ("shampoo", sops.shampoo(3e-3, axis_name=AXIS), args.steps),
    ("newton_cg", sops.newton_cg(axis_name=AXIS), max(1, args.steps // 10)),
  ]
  rows = []
  for name, tx, steps in runs:
    params = MLP().init(jax.random.key(0), x[:1])["params"]
    replicate = lambda t: jax.tree.map(lambda v: jnp.stack([v] * n_dev), t)  # noqa: E731
    p, s = replicate(params), jax.pmap(tx.init)(replicate(params))
    step = make_step(tx, name)
    rng = np.random.default_rng(0)
    start = None
    for i in tqdm(range(steps), desc=f"{name:>10}"):
      idx = rng.choice(len(x), per * n_dev, replace=False)
      p, s, loss = step(p, s, x[idx].reshape(n_dev, per, -1), y[idx].reshape(n_dev, per))
      if i == 0:
        jax.block_until_ready(p)
        start = time.perf_counter()  # exclude compilation
    jax.block_until_ready(p)
    seconds = time.perf_counter() - start
    spread = max(float(jnp.max(jnp.abs(a - a[0]))) for a in jax.tree.leaves(p))
    p0 = jax.tree.map(lambda a: a[0], p)
    full = float(loss_fn(p0, x, y))
    acc = float((jnp.argmax(MLP().apply({"params": p0}, x), -1) == y).mean())
    rows.append((name, steps, full, acc, spread, seconds))

  print(f"{'optimizer':<11}{'steps':>6}{'loss':>9}{'acc':>7}{'replica spread':>16}{'timed s':>9}")
  for name, steps, full, acc, spread, seconds in rows:
    print(f"{name:<11}{steps:>6}{full:>9.4f}{acc:>7.3f}{spread:>16.1e}{seconds:>9.2f}")
  print("timed s: steps after the first (which compiles); evaluation excluded")
  print("replica spread: largest difference of a parameter between devices (0: in sync)")


if __name__ == "__main__":
  main()
