# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Adam vs Newton-CG with Martens' ingredients: time to Adam's best validation loss, digits CNN.

Model and data of ``examples/cnn.py``: two 3x3 convolutions (8 and 16 channels, ReLU, 2x2 average
pooling) and a dense softmax head on scikit-learn's 8x8 digits (80/20 stratified split, 1437
training rows), mean cross-entropy. The measure is the validation loss (validation accuracy is
reported next to it).

* **Adam** (the target): ``optax.adam`` on the warm-up + cosine schedule of
  ``benchmarks/_common.py``, batch 64, ``--adam-steps`` steps, lr grid ``--lrs-adam``; target =
  its best final validation loss.
* **Newton-CG** rows: as in ``benchmarks/newton_cg_autoencoder.py`` (``RECIPE``, ``DEFAULTS``,
  ``--variant NAME:key=value,...``), Gauss-Newton curvature of the softmax cross-entropy
  (``predict_fn`` = the logits).

Every row: steps to the target (first evaluation at or below it), mean step time over all timed
steps (``lax.scan`` chunks, compile excluded), time to target = steps x mean step, ratios vs Adam.

    python benchmarks/newton_cg_cnn.py           # ~5 min on a 2-core CPU
    python benchmarks/newton_cg_cnn.py --quick   # smoke test

Output: markdown tables on stdout and ``benchmarks/results/newton_cg_cnn.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
import cnn  # noqa: E402
import newton_cg_autoencoder as ncg  # noqa: E402

ADAM_BATCH = 64


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ncg.add_args(parser, 400, [1e-2, 3e-2, 1e-1, 3e-1], "newton_cg_cnn.json")
  args = parser.parse_args()
  if args.quick:
    args.adam_steps, args.lrs_adam = 100, [1e-2]

  x_tr, y_tr, (x_va, y_va) = cnn._data()
  data = {"x": jnp.asarray(x_tr), "y": jnp.asarray(y_tr)}
  model = cnn.CNN()
  params = model.init(jax.random.key(args.seed), x_tr[:1])
  xent = optax.softmax_cross_entropy_with_integer_labels

  def predict(p, batch):
    return model.apply(p, batch["x"])

  def output_loss(logits, batch):
    return jnp.mean(xent(logits, batch["y"]))

  @jax.jit
  def evaluate(p):
    logits = model.apply(p, x_va)
    return {"loss": jnp.mean(xent(logits, y_va)), "accuracy": jnp.mean(logits.argmax(-1) == y_va)}

  meta = {
    "benchmark": "newton_cg_cnn",
    "model": "examples/cnn.py: conv3x3(8)-pool-conv3x3(16)-pool-dense(10), ReLU",
    "data": {"dataset": "sklearn digits", "train": len(x_tr), "validation": len(x_va)},
    "measure": "validation cross-entropy",
  }
  # Softmax cross-entropy: labels drawn from the predicted class probabilities.
  sampled_fisher = (lambda z, key: jax.random.categorical(key, z), xent)
  ncg.compare(args, params, data, predict, output_loss, evaluate, ADAM_BATCH, meta, sampled_fisher)


if __name__ == "__main__":
  main()
