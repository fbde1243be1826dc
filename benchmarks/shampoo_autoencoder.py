# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Adam vs Shampoo vs SOAP vs Muon: time to Adam's best loss on a deep autoencoder of digits.

Model 64-256-128-32-8-32-128-256-64 (tanh, linear output), squared error summed over the 64
pixels, mini-batches of 256 drawn from scikit-learn's digits (1797 images, scaled to [0, 1]); the
loss reported and targeted is the full-data training loss (the classic Hinton-Salakhutdinov /
Martens benchmark measures optimisation, not generalisation).

Protocol: ``benchmarks/_common.py`` (the same as ``transformer_lm.py``): warm-up + cosine
schedule, lr grid per optimizer, target = the baseline's best final loss, steps and mean step
time to reach it. Weight decay defaults to 0, so the ``adamw`` rows are Adam. Muon
orthogonalises every weight matrix (its AdamW branch takes the biases).

    python benchmarks/shampoo_autoencoder.py           # full run (~15 min on a 2-core CPU)
    python benchmarks/shampoo_autoencoder.py --quick   # < 1 min: 300 steps, one lr each
    python benchmarks/shampoo_autoencoder.py --optimizers adamw,shampoo \\
      --shampoo-kw statistics_every=4 --variant soap4:optimizer=soap,statistics_every=4

Output: markdown tables on stdout, ``benchmarks/results/shampoo_autoencoder.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SIZES = (64, 256, 128, 32, 8, 32, 128, 256, 64)
BATCH = 256


def init_params(key):
  params = []
  for k, (m, n) in zip(
    jax.random.split(key, len(SIZES) - 1), zip(SIZES[:-1], SIZES[1:], strict=True), strict=True
  ):
    params.append({"w": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)})
  return params


def forward(params, x):
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      x = jnp.tanh(x)
  return x


def loss_fn(params, x):
  """Squared error summed over the 64 pixels, averaged over the batch."""
  return 0.5 * jnp.mean(jnp.sum((forward(params, x) - x) ** 2, axis=-1))


def muon_dims(params):
  """Muon on every weight matrix; biases go to its AdamW branch."""
  return jax.tree.map(
    lambda x: optax.contrib.MuonDimensionNumbers() if x.ndim == 2 else None, params
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  grid = [1e-3, 3e-3, 1e-2]
  _common.add_protocol_args(
    parser,
    steps=1500,
    eval_every=25,
    lrs={"adamw": grid, "shampoo": grid, "soap": grid, "muon": [3e-3, 1e-2, 3e-2]},
    out=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "shampoo_autoencoder.json"
    ),
  )
  parser.set_defaults(weight_decay=0.0)
  parser.add_argument("--quick", action="store_true", help="300 steps, one lr each, 20 timed")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.timing_steps = 300, 20
    args.lrs_adamw = args.lrs_shampoo = args.lrs_soap = [3e-3]
    args.lrs_muon = [1e-2]

  data = jnp.asarray(load_digits().data.astype(np.float32) / 16.0)
  params = init_params(jax.random.key(args.seed))
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; digits {tuple(data.shape)}; "
    f"{args.steps} steps of batch {BATCH}, eval every {args.eval_every}"
  )

  def sample_chunk(c):
    rng = np.random.default_rng((args.seed, c))
    return rng.integers(0, data.shape[0], size=(args.eval_every, BATCH))

  def batch_loss(params, idx):
    return loss_fn(params, data[idx])

  full_loss = jax.jit(lambda p: loss_fn(p, data))

  def run_one(tx, steps):
    return _common.train(batch_loss, params, tx, sample_chunk, steps, args.eval_every, full_loss)

  def time_steps(tx, n):
    return _common.per_step_times(batch_loss, params, tx, sample_chunk, n)

  meta = {
    "benchmark": "shampoo_autoencoder",
    "model": {"sizes": SIZES, "activation": "tanh", "batch": BATCH},
    "data": {"dataset": "sklearn digits", "n": int(data.shape[0])},
    "loss": "full-data training loss: 0.5 * squared error summed over pixels, mean over images",
  }
  _common.compare(args, "shampoo_autoencoder", run_one, time_steps, meta, muon_dims, "train loss")


if __name__ == "__main__":
  main()
