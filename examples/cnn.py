# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""CNN: a small convolutional network on scikit-learn's digits, every optimizer side by side.

Image classification with convolutions: Shampoo and SOAP precondition 4-D kernels, whose small
dimensions sops merges (a ``(3, 3, 8, 16)`` kernel is preconditioned as ``72 x 16``). The 1797
8x8 greyscale digits that ship with scikit-learn, scaled to [0, 1], 80/20 stratified
train/validation split; two 3x3 convolutions (8 and 16 channels, ReLU, 2x2 average pooling after
each) and a dense softmax head, cross-entropy loss. optax's Muon orthogonalises 2-D weights only,
so the 4-D conv kernels get its Adam fallback.

    python examples/cnn.py            # every optimizer (~1.5 min on a 2-core CPU)
    python examples/cnn.py --smoke    # a few steps each, no plot
    python examples/cnn.py --steps 0.5 --optimizers adamw,soap

Prints a table (final losses and validation accuracy, steps and timed seconds to AdamW's final
validation loss) and saves ``cnn.png`` (validation loss against steps and seconds).
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


class CNN(nn.Module):
  """conv3x3(8) - pool - conv3x3(16) - pool - dense(10), ReLU activations."""

  classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # 8x8 -> 4x4
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # 4x4 -> 2x2
    return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def _data():
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
  x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
  return x_tr, y_tr.astype(np.int32), (x_va, y_va.astype(np.int32))


def scenario() -> _harness.Scenario:
  """The digits CNN scenario."""
  x_tr, y_tr, (x_va, y_va) = _data()
  model = CNN()

  return _harness.Scenario(
    name="cnn",
    title="CNN: 2-conv network on digits (cross-entropy)",
    init=jax.jit(lambda key: model.init(key, x_tr[:1])),  # one compilation
    **_harness.classification(model.apply, x_tr, y_tr, x_va, y_va),
    steps=400,
    eval_every=10,
    batch_size=64,
    lrs={
      "adamw": (1e-1, 3e-2, 1e-2),
      "sgd": (3e-1, 1e-1, 1.0),
      "muon": (1e-1, 3e-2, 3e-1),
      "newton_cg": (1.0, 0.5),
      "shampoo": (3e-2, 1e-2, 1e-1),
      "soap": (3e-2, 1e-2, 1e-1),
    },
    metric="val_accuracy",
    higher_is_better=True,
    newton_cg_steps=40,
    newton_cg_batch_size=256,
    newton_cg_kw={"maxiter": 5},  # each CG iteration is a Hessian-vector product through the convs
  )


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  _harness.main(scenario())
