# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Flax Linen: train an MLP with a ``TrainState`` on scikit-learn's digits, Shampoo and Newton-CG.

Newton-CG needs the loss on the same batch, as a function of the parameters, passed to
``tx.update`` as the extra argument ``value_fn``. Flax's ``TrainState.apply_gradients(grads=g,
value_fn=vf)`` does *not* deliver it: it calls ``tx.update(grads, opt_state, params)`` without
extra arguments and forwards its keywords to ``replace``. ``NewtonTrainState`` below is a
copy-pasteable ``TrainState`` subclass whose ``apply_gradients`` passes them on; Shampoo (any
plain optax transformation) uses the same class with no extra arguments.

The 1797 8x8 digits ship inside scikit-learn (nothing is downloaded); standardised features,
75/25 stratified train/test split, a 64-64-10 tanh MLP, cross-entropy loss. About 30 s on a
2-core CPU.

    python examples/flax_linen.py                 # Shampoo and Newton-CG, table, flax_linen.png
    python examples/flax_linen.py --smoke         # a few steps each, no plot
    python examples/flax_linen.py --steps 100 --plot /tmp/linen.png
    python examples/flax_linen.py --plot ''       # no plot

Prints a table (final full-batch training loss, test accuracy, steps, timed seconds) and saves a
plot of the training loss against steps and timed seconds. Timed seconds exclude compilation:
the first step (which compiles) is run but not timed.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

import sops


# --- The recipe: a TrainState that passes extra arguments (value_fn, ...) to the optimizer. ---
class NewtonTrainState(train_state.TrainState):
  """A ``TrainState`` whose ``apply_gradients`` forwards extra keyword arguments to ``tx.update``.

  ``state.apply_gradients(grads=g, value_fn=vf)`` calls ``tx.update(g, opt_state, params,
  value_fn=vf)``; without extra arguments it behaves like Flax's ``TrainState.apply_gradients``
  (so one class serves Newton-CG, Shampoo, SOAP and any optax optimizer). Unlike Flax's method,
  keywords are *not* fields to ``replace``: call ``state.replace(...)`` for those. (Flax's
  fp8 "overwrite with gradient" collection is not handled.)
  """

  def apply_gradients(self, *, grads, **extra_args):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, **extra_args)
    return self.replace(
      step=self.step + 1,
      params=optax.apply_updates(self.params, updates),
      opt_state=opt_state,
    )


# --- End of the recipe. ---


class MLP(nn.Module):
  """A 64-64-10 tanh multilayer perceptron."""

  hidden: int = 64
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(self.hidden)(x))
    return nn.Dense(self.classes)(x)


def load_data(seed: int):
  """Standardised digits, split 75/25 (stratified) into train and test."""
  x, y = load_digits(return_X_y=True)
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
  scaler = StandardScaler().fit(x_tr)
  f32 = functools.partial(np.asarray, dtype=np.float32)
  return f32(scaler.transform(x_tr)), y_tr, f32(scaler.transform(x_te)), y_te


def loss_fn(state: NewtonTrainState, params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the model at ``params`` on the batch ``(x, y)``."""
  logits = state.apply_fn({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(pass_value_fn: bool):
  """One jitted training step ``(state, x, y) -> (state, loss)``.

  ``pass_value_fn`` selects Newton-CG's update, which also receives the loss as ``value_fn``.
  """

  @jax.jit
  def step(state: NewtonTrainState, x: jax.Array, y: jax.Array):
    # The loss on this batch as a function of the parameters only; Newton-CG differentiates it.
    value_fn = functools.partial(loss_fn, state, x=x, y=y)
    loss, grads = jax.value_and_grad(value_fn)(state.params)
    if pass_value_fn:
      state = state.apply_gradients(grads=grads, value_fn=value_fn)  # Newton-CG
    else:
      state = state.apply_gradients(grads=grads)  # Shampoo, SOAP, any plain optax transformation
    return state, loss

  return step


@jax.jit
def evaluate(state: NewtonTrainState, x_tr, y_tr, x_te, y_te) -> tuple[jax.Array, jax.Array]:
  """Full-batch training loss and test accuracy."""
  accuracy = (jnp.argmax(state.apply_fn({"params": state.params}, x_te), -1) == y_te).mean()
  return loss_fn(state, state.params, x_tr, y_tr), accuracy


def train(
  name: str,
  tx: optax.GradientTransformation,
  pass_value_fn: bool,
  steps: int,
  batch_size: int,
  data,
  seed: int,
) -> dict[str, Any]:
  """Trains a fresh MLP (same initialisation for every optimizer) for ``steps`` steps."""
  x_tr, y_tr, x_te, y_te = data
  model = MLP()
  params = model.init(jax.random.key(seed), x_tr[:1])["params"]
  state = NewtonTrainState.create(apply_fn=model.apply, params=params, tx=tx)
  step = make_step(pass_value_fn)
  initial_loss = float(evaluate(state, x_tr, y_tr, x_te, y_te)[0])

  rng = np.random.default_rng(seed)
  n = len(x_tr)
  bs = min(batch_size, n)
  losses, seconds = [], []
  start = None
  for i in tqdm(range(steps), desc=f"{name:>10}"):
    idx = rng.choice(n, size=bs, replace=False) if bs < n else np.arange(n)
    state, loss = step(state, x_tr[idx], y_tr[idx])
    losses.append(float(loss))  # float() waits for the step
    if i == 0:  # step 1 compiles: the clock starts after it
      start = time.perf_counter()
    seconds.append(time.perf_counter() - start)
  final_loss, accuracy = (float(v) for v in evaluate(state, x_tr, y_tr, x_te, y_te))
  return {
    "optimizer": name,
    "initial_loss": initial_loss,
    "loss": final_loss,
    "accuracy": accuracy,
    "steps": int(state.step),
    "seconds": seconds[-1],
    "curve_loss": losses,
    "curve_seconds": seconds,
    "batch": "full batch" if bs == n else f"batch {bs}",
  }


def plot(runs: list[dict[str, Any]], path: str) -> None:
  """Training (batch) loss against steps and against timed seconds."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")  # no display needed
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for r in runs:
    label = f"{r['optimizer']} ({r['batch']})"
    steps = np.arange(1, len(r["curve_loss"]) + 1)
    axes[0].plot(steps, r["curve_loss"], label=label)
    axes[1].plot(r["curve_seconds"], r["curve_loss"], label=label)
  axes[0].set(xlabel="step", ylabel="training loss on the step's batch", yscale="log")
  axes[1].set(xlabel="timed seconds (no compilation)")
  axes[0].legend()
  fig.suptitle("Flax Linen TrainState MLP on digits: sops.shampoo vs sops.newton_cg")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--steps", type=int, default=300, help="Shampoo steps; Newton-CG takes a tenth (full batch)"
  )
  parser.add_argument("--smoke", action="store_true", help="a few steps each, no plot")
  parser.add_argument("--seed", type=int, default=0)
  default_plot = os.path.splitext(os.path.basename(__file__))[0] + ".png"
  parser.add_argument("--plot", default=default_plot, help="PNG path ('' for none)")
  args = parser.parse_args()
  steps = 5 if args.smoke else args.steps

  data = load_data(args.seed)
  print(
    f"sops {sops.__version__} | JAX {jax.__version__} on {jax.devices()[0].platform} | "
    f"digits: {len(data[0])} train / {len(data[2])} test"
  )
  runs = [
    # (name, transformation, pass value_fn, steps, batch size)
    train("shampoo", sops.shampoo(1e-2), False, steps, 256, data, args.seed),
    # Newton-CG: ~10 Hessian-vector products per step, so a tenth of the steps on full batches.
    train("newton_cg", sops.newton_cg(), True, max(2, steps // 10), len(data[0]), data, args.seed),
  ]

  print(f"\ninitial training loss {runs[0]['initial_loss']:.4f} (same initialisation for both)")
  header = f"{'optimizer':<12}{'final train loss':>18}{'test acc':>10}{'steps':>7}{'seconds*':>10}"
  print(header)
  print("-" * len(header))
  for r in runs:
    print(
      f"{r['optimizer']:<12}{r['loss']:>18.4e}{r['accuracy']:>10.3f}{r['steps']:>7d}"
      f"{r['seconds']:>10.2f}"
    )
  print("* timed seconds: steps 2..N, excluding compilation (step 1) and evaluation")
  if args.plot and not args.smoke:
    plot(runs, args.plot)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
  main()
