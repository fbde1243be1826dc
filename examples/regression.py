# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Regression: a small MLP on scikit-learn's diabetes data, every optimizer side by side.

The Newton-CG poster's first scenario (life expectancy, Boston housing) on the regression data
that ships with scikit-learn: 442 patients, 10 features, a disease-progression target. A
10-64-64-1 tanh MLP, mean squared error on standardised targets, 80/20 train/validation split.

    python examples/regression.py            # every optimizer (~1 min on a 2-core CPU)
    python examples/regression.py --smoke    # a few steps each, no plot
    python examples/regression.py --steps 0.5 --optimizers adamw,newton_cg

Prints a table (final losses, steps and timed seconds to AdamW's final validation loss) and saves
``regression.png`` (validation loss against steps and seconds).
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


class MLP(nn.Module):
  """Two tanh hidden layers, one linear output."""

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(64)(x))
    x = nn.tanh(nn.Dense(64)(x))
    return nn.Dense(1)(x)[..., 0]


def _data():
  x, y = load_diabetes(return_X_y=True)
  x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0)
  mx, sx, my, sy = x_tr.mean(0), x_tr.std(0), y_tr.mean(), y_tr.std()
  f32 = np.float32
  return (
    ((x_tr - mx) / sx).astype(f32),
    ((y_tr - my) / sy).astype(f32),
    (
      ((x_va - mx) / sx).astype(f32),
      ((y_va - my) / sy).astype(f32),
    ),
  )


def scenario() -> _harness.Scenario:
  """The diabetes regression scenario."""
  x_tr, y_tr, (x_va, y_va) = _data()
  model = MLP()

  def mse(params, x, y):
    return jnp.mean((model.apply(params, x) - y) ** 2)

  def sample(rng, batch_size):
    idx = rng.choice(len(x_tr), size=min(batch_size, len(x_tr)), replace=False)
    return {"x": x_tr[idx], "y": y_tr[idx]}

  return _harness.Scenario(
    name="regression",
    title="Regression: MLP on diabetes (MSE, standardised target)",
    init=lambda key: model.init(key, x_tr[:1]),
    loss=lambda params, batch: mse(params, batch["x"], batch["y"]),
    sample=sample,
    evaluate=lambda p: {"train_loss": mse(p, x_tr, y_tr), "val_loss": mse(p, x_va, y_va)},
    steps=600,
    eval_every=20,
    batch_size=32,
    lrs={
      "adamw": (3e-3, 1e-3, 1e-2),
      "sgd": (3e-2, 1e-2, 1e-1),
      "muon": (1e-2, 3e-3, 3e-2),
      "newton_cg": (1.0, 0.3),
      "shampoo": (3e-3, 1e-3, 1e-2),
      "soap": (3e-3, 1e-3, 1e-2),
    },
    newton_cg_steps=60,
    newton_cg_batch_size=len(x_tr),
  )


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  _harness.main(scenario())
