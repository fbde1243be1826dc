# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Data-parallel training with ``jax.jit`` and shardings: no ``axis_name``, no ``pmap``.

The batch is split over a one-axis device mesh; parameters are replicated. Shampoo's stacked
statistics and preconditioners are split over the same axis with ``sops.shampoo_state_sharding``,
so XLA partitions the root computation: each device computes the roots of ``1/N`` of the blocks.
Newton-CG needs nothing special: its loss is a mean over the sharded batch, and XLA inserts the
cross-device reductions in every gradient, Hessian-vector product and inner product.

On a CPU-only machine the script simulates ``--devices`` devices (8 by default); on GPUs it uses
the real ones unchanged.

    python examples/sharded_training.py
    python examples/sharded_training.py --steps 100 --devices 4
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
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sops  # noqa: E402


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.tanh(nn.Dense(64)(x)))


def loss_fn(params, x, y):
  logits = MLP().apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (CPU only)")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch-size", type=int, default=512, help="global batch size")
  parser.add_argument("--smoke", action="store_true", help="a few steps (checks that it runs)")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 10

  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
  n_dev = mesh.shape["data"]
  replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  x, y = load_digits(return_X_y=True)
  x = StandardScaler().fit_transform(x).astype(np.float32)
  bs = args.batch_size // n_dev * n_dev
  print(
    f"sops {sops.__version__} | JAX {jax.__version__} | mesh {dict(mesh.shape)} of "
    f"{jax.devices()[0].platform} | global batch {bs}"
  )

  runs = [
    ("shampoo", sops.shampoo(3e-3, num_shards=n_dev), args.steps),
    ("newton_cg", sops.newton_cg(), max(1, args.steps // 10)),
  ]
  rows = []
  for name, tx, steps in runs:
    params = jax.device_put(MLP().init(jax.random.key(0), x[:1])["params"], replicated)
    state = tx.init(params)
    if name == "shampoo":
      state_sharding = sops.shampoo_state_sharding(state, mesh, "data")
    else:
      state_sharding = jax.tree.map(lambda _: replicated, state)
    state = jax.device_put(state, state_sharding)

    def train_step(params, state, xb, yb, tx=tx):
      value_fn = lambda p: loss_fn(p, xb, yb)  # noqa: E731
      loss, grads = jax.value_and_grad(value_fn)(params)
      updates, state = tx.update(grads, state, params, value_fn=value_fn)
      return optax.apply_updates(params, updates), state, loss

    step = jax.jit(
      train_step,
      in_shardings=(replicated, state_sharding, batch_sharded, batch_sharded),
      out_shardings=(replicated, state_sharding, replicated),
    )
    rng = np.random.default_rng(0)
    start = None
    for i in tqdm(range(steps), desc=f"{name:>10}"):
      idx = rng.choice(len(x), bs, replace=False)
      params, state, loss = step(params, state, x[idx], y[idx])
      if i == 0:
        jax.block_until_ready(params)
        start = time.perf_counter()  # exclude compilation
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    full = float(loss_fn(params, x, y))
    acc = float((jnp.argmax(MLP().apply({"params": params}, x), -1) == y).mean())
    if name == "shampoo":
      stats = state[0].statistics
      per_dev = [s.addressable_shards[0].data.shape[0] for s in stats]
      layout = f"{[s.shape[0] for s in stats]} blocks -> {per_dev} per device"
    else:
      layout = "replicated state"
    rows.append((name, steps, full, acc, seconds, layout))

  print(f"{'optimizer':<11}{'steps':>6}{'loss':>9}{'acc':>7}{'timed s':>9}  state layout")
  for name, steps, full, acc, seconds, layout in rows:
    print(f"{name:<11}{steps:>6}{full:>9.4f}{acc:>7.3f}{seconds:>9.2f}  {layout}")
  print("timed s: steps after the first (which compiles); evaluation excluded")


if __name__ == "__main__":
  main()
