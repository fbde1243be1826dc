# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shampoo vs Adam on a deep autoencoder of scikit-learn's digits.

Model 64-256-128-32-8-32-128-256-64 (tanh, linear output), squared error, mini-batches of 256.
Adam's learning rate is tuned over {1e-3, 3e-3, 1e-2} for ``--steps`` steps; Shampoo's over a grid
of the same size. Reports the steps and wall-clock Shampoo needs to reach Adam's best final loss,
the per-step time ratio and optimizer-state bytes over parameter bytes.

    python benchmarks/shampoo_autoencoder.py           # full run (~5-10 min on a 2-core CPU)
    python benchmarks/shampoo_autoencoder.py --quick   # < 1 min: fewer steps, one learning rate
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import sops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SIZES = (64, 256, 128, 32, 8, 32, 128, 256, 64)


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


def run(tx, data, steps, batch, eval_every, seed=0):
  """Trains; returns (eval steps, full-data losses, seconds of training (no eval, no compile))."""
  params = init_params(jax.random.key(seed))
  state = tx.init(params)
  n = data.shape[0]
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n, size=(steps // eval_every, eval_every, batch))

  @jax.jit
  def chunk(params, state, idx):
    def body(carry, ix):
      p, s = carry
      g = jax.grad(loss_fn)(p, data[ix])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, state), idx)[0]

  evaluate = jax.jit(loss_fn)
  jax.block_until_ready(chunk(params, state, idx[0]))  # compile outside the timing
  losses, seconds = [float(evaluate(params, data))], 0.0
  for c in range(idx.shape[0]):
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(chunk(params, state, idx[c]))
    seconds += time.perf_counter() - t0
    losses.append(float(evaluate(params, data)))
  steps_axis = np.arange(len(losses)) * eval_every
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  return steps_axis, np.array(losses), seconds, state_bytes / param_bytes


def first_step_below(steps_axis, losses, target):
  hit = np.nonzero(losses <= target)[0]
  return int(steps_axis[hit[0]]) if hit.size else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--eval-every", type=int, default=25)
  parser.add_argument("--precondition-every", type=int, default=None, help="default: sops'")
  parser.add_argument("--statistics-every", type=int, default=1)
  parser.add_argument("--block-size", type=int, default=256)
  parser.add_argument("--inverse-root", default="auto", choices=["auto", "coupled_newton", "eigh"])
  parser.add_argument(
    "--shampoo-kw", action="append", default=[], metavar="KEY=VALUE", help="more sops.shampoo kw"
  )
  parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
  parser.add_argument("--shampoo-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
  parser.add_argument("--quick", action="store_true", help="300 steps, lr 3e-3 only (< 1 min)")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.lrs, args.shampoo_lrs = 300, [3e-3], [3e-3]

  x = load_digits().data.astype(np.float32) / 16.0
  data = jnp.asarray(x)
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; digits {x.shape}; "
    f"{args.steps} steps, batch {args.batch}; Shampoo roots: {args.inverse_root} every "
    f"{args.precondition_every} steps"
  )

  rows = []
  for lr in args.lrs:
    rows.append(("adam", lr, *run(optax.adam(lr), data, args.steps, args.batch, args.eval_every)))
  for lr in args.shampoo_lrs:
    kw = {"precondition_every": args.precondition_every} if args.precondition_every else {}
    tx = sops.shampoo(
      lr,
      block_size=args.block_size,
      inverse_root=args.inverse_root,
      statistics_every=args.statistics_every,
      **kw,
      **_common.parse_kw(args.shampoo_kw),
    )
    rows.append(("shampoo", lr, *run(tx, data, args.steps, args.batch, args.eval_every)))

  header = f"{'optimizer':<10}{'lr':>8}{'final loss':>12}{'s/step (ms)':>13}{'state/params':>14}"
  print("\n" + header + "\n" + "-" * len(header))
  for name, lr, _, losses, sec, ratio in rows:
    print(f"{name:<10}{lr:>8.0e}{losses[-1]:>12.4f}{1e3 * sec / args.steps:>13.3f}{ratio:>14.2f}")

  adam = min((r for r in rows if r[0] == "adam"), key=lambda r: r[3][-1])
  target, adam_sec = adam[3][-1], adam[4]
  best = None
  for r in rows:
    if r[0] != "shampoo":
      continue
    hit = first_step_below(r[2], r[3], target)
    if hit is not None and (best is None or hit < best[1]):
      best = (r, hit)
  sh_rows = [r for r in rows if r[0] == "shampoo"]
  sh_ms = np.mean([r[4] / args.steps for r in sh_rows])
  ad_ms = np.mean([r[4] / args.steps for r in rows if r[0] == "adam"])
  print(
    f"\nAdam best: lr {adam[1]:.0e}, final loss {target:.4f} after {args.steps} steps "
    f"({adam_sec:.2f} s)"
  )
  print(
    f"per-step time ratio Shampoo/Adam (precondition_every={args.precondition_every}): "
    f"{sh_ms / ad_ms:.2f}"
  )
  if best is None:
    print("Shampoo did not reach Adam's best final loss.")
  else:
    r, hit = best
    sec = r[4] * hit / args.steps
    print(
      f"Shampoo (lr {r[1]:.0e}) reaches it at step {hit} ({hit / args.steps:.2f}x Adam's steps), "
      f"in {sec:.2f} s ({sec / adam_sec:.2f}x Adam's wall-clock)"
    )


if __name__ == "__main__":
  main()
