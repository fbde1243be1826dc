# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Quickstart: train one small Flax MLP on scikit-learn's digits with Adam and every sops optimizer.

Runs on a laptop CPU in about a minute; nothing is downloaded (the digits ship inside scikit-learn).
Prints a comparison table: final training loss, test accuracy, steps and wall-clock seconds.

    python examples/quickstart.py            # default settings
    python examples/quickstart.py --steps 50 # shorter run
    python examples/quickstart.py --smoke    # a few steps (checks that it runs)
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import sops


class MLP(nn.Module):
  """A 64-64-10 tanh multilayer perceptron."""

  hidden: int = 64
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def load_data(seed: int):
  """Standardized digits, split 75/25 into train and test."""
  x, y = load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
  scaler = StandardScaler().fit(x_tr)
  f32 = functools.partial(np.asarray, dtype=np.float32)
  return f32(scaler.transform(x_tr)), y_tr, f32(scaler.transform(x_te)), y_te


def make_loss(model: nn.Module) -> Callable[..., jax.Array]:
  def loss(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss


def train(
  name: str,
  tx: optax.GradientTransformationExtraArgs,
  steps: int,
  batch_size: int,
  data,
  model: nn.Module,
  seed: int,
) -> dict[str, Any]:
  """Trains ``model`` with ``tx``; every optimizer gets the same step function.

  The step passes the loss as ``value_fn`` (and ``value``/``grad``, which optax line searches use,
  and ``predict_fn``/``output_loss_fn``, which Gauss-Newton curvature uses); optimizers that need
  no extra arguments ignore them.
  """
  x_tr, y_tr, x_te, y_te = data
  loss = make_loss(model)
  params = model.init(jax.random.key(seed), x_tr[:1])["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    value_fn = functools.partial(loss, x=xb, y=yb)
    value, grad = jax.value_and_grad(value_fn)(params)
    updates, opt_state = tx.update(
      grad,
      opt_state,
      params,
      value=value,
      grad=grad,
      value_fn=value_fn,
      predict_fn=lambda p: model.apply({"params": p}, xb),
      output_loss_fn=lambda z: optax.softmax_cross_entropy_with_integer_labels(z, yb).mean(),
    )
    return optax.apply_updates(params, updates), opt_state, value

  rng = np.random.default_rng(seed)
  n = len(x_tr)
  bs = min(batch_size, n)
  # Compile outside the timed region.
  jax.block_until_ready(step(params, opt_state, x_tr[:bs], y_tr[:bs]))
  start = time.perf_counter()
  for _ in tqdm(range(steps), desc=f"{name:>12}", leave=True):
    idx = rng.choice(n, size=bs, replace=False) if bs < n else np.arange(n)
    params, opt_state, _ = step(params, opt_state, x_tr[idx], y_tr[idx])
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  final_loss = float(loss(params, x_tr, y_tr))
  acc = float((jnp.argmax(model.apply({"params": params}, x_te), -1) == y_te).mean())
  return {
    "optimizer": name,
    "loss": final_loss,
    "accuracy": acc,
    "steps": steps,
    "seconds": seconds,
  }


def optimizers(steps: int) -> list[tuple[str, optax.GradientTransformationExtraArgs, int, int]]:
  """(name, transformation, steps, batch size) for Adam and every sops optimizer."""
  extra = optax.with_extra_args_support
  return [
    ("adam", extra(optax.adam(1e-2)), steps, 256),
    ("shampoo", extra(sops.shampoo(1e-2)), steps, 256),
    ("soap", extra(sops.soap(1e-2)), steps, 256),
    # Newton-CG: ~10 curvature products per step, so a tenth of the steps on full batches.
    ("newton_cg", sops.newton_cg(), max(1, steps // 10), 2048),
    ("newton_cg (GN)", sops.newton_cg(curvature="gauss_newton"), max(1, steps // 10), 2048),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--steps", type=int, default=300, help="mini-batch steps for first-order runs"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true", help="a few steps (checks that it runs)")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 10

  data = load_data(args.seed)
  model = MLP()
  print(
    f"sops {sops.__version__} | JAX {jax.__version__} on {jax.devices()[0].platform} | "
    f"digits: {len(data[0])} train / {len(data[2])} test"
  )
  rows = [
    train(name, tx, steps, bs, data, model, args.seed)
    for name, tx, steps, bs in optimizers(args.steps)
  ]
  header = f"{'optimizer':<14}{'final loss':>12}{'test acc':>10}{'steps':>8}{'timed s':>10}"
  print(header)
  print("-" * len(header))
  for r in rows:
    print(
      f"{r['optimizer']:<14}{r['loss']:>12.2e}{r['accuracy']:>10.3f}{r['steps']:>8d}"
      f"{r['seconds']:>10.2f}"
    )
  print("timed s: all steps after a warm-up call that compiles; evaluation excluded")


if __name__ == "__main__":
  main()
