# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Transfer learning: retrain the last layer of a pre-trained MLP, every optimizer side by side.

The Newton-CG poster's transfer-learning scenario on scikit-learn's digits (8x8 images, 1797
samples). A 64-64-32-5 tanh MLP is pre-trained on the digits 0-4 with plain SGD (momentum 0.9,
300 steps of 64, seeded: the same body on every run, a few seconds inside ``scenario()``; it fits
its 901 images perfectly). The scenario then learns the digits 5-9 (relabelled 0-4; 448 images
train, 448 validate) from that body with a fresh output layer, and **only the output layer
trains**: with the features frozen, the objective is a convex multinomial logistic regression in
165 parameters, the setting where Newton-CG's curvature pays off. The training objective adds
``L2 / 2 ||W||^2`` on the head's weight matrix (``L2 = 1e-4``): the frozen features separate the
training images, so without it the minimiser is at infinity and the validation loss grows late in
training. ``train_loss`` is that objective on the whole training set, ``val_loss`` the plain
cross-entropy on the validation images. Budgets: 300 steps of 32 for the first-order optimizers,
30 full-batch Newton-CG steps (default 10 CG iterations at most).

    python examples/transfer_last_layer.py            # every optimizer (< 1 min, 2-core CPU)
    python examples/transfer_last_layer.py --smoke    # a few steps each, no plot
    python examples/transfer_last_layer.py --steps 0.5 --optimizers adamw,newton_cg

Prints a table (final losses and validation accuracy, steps and timed seconds to AdamW's final
validation loss) and saves ``transfer_last_layer.png`` (validation loss against steps and seconds).

Freezing layers yourself. The scenario sets ``trainable`` (a function of the parameters returning
a tree of bools, ``True`` on the head's leaves); the harness then wraps each optimizer as below.
Outside the harness you write the same::

    def trainable(params):  # True on the leaves under "head"
      return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params
      )

    def frozen(params):
      return jax.tree.map(lambda t: not t, trainable(params))

    tx = optax.chain(
      optax.masked(sops.soap(1e-2), trainable),  # the head trains
      optax.masked(optax.set_to_zero(), frozen),  # the body gets zero updates
    )

or ``optax.multi_transform({"train": sops.soap(1e-2), "freeze": optax.set_to_zero()}, labels)``
with ``labels(params)`` a tree of ``"train"``/``"freeze"``. (Without ``set_to_zero`` the frozen
leaves would receive their raw gradients as updates.) Inside ``optax.masked``, Newton-CG sees the
parameters with every frozen leaf replaced by ``optax.MaskedNode()``, and it differentiates the
``value_fn`` you pass *at that masked tree* (extra arguments are passed through unmasked). So
``value_fn`` must take the masked tree and fill the frozen leaves in from the full parameters::

    def value_fn(trained):
      merged = jax.tree.map(
        lambda t, p: p if isinstance(t, optax.MaskedNode) else t,
        trained,
        params,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
      )
      return loss(merged, batch)

    updates, state = tx.update(grads, state, params, value_fn=value_fn)

The curvature products then cover the head only (165 x 165 here), not the whole network.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 300, 64, 0.05
L2 = 1e-4  # penalty (L2 / 2) ||W||^2 on the head's weight matrix


class MLP(nn.Module):
  """Two tanh hidden layers (the body), one linear output layer (the head)."""

  classes: int = 5

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(64, name="hidden_0")(x))
    x = nn.tanh(nn.Dense(32, name="hidden_1")(x))
    return nn.Dense(self.classes, name="head")(x)


def _cross_entropy(model, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()


def _data():
  """Digits 0-4 (all, for pre-training) and 5-9 relabelled 0-4 (half train, half validation)."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)  # pixel intensities 0..16
  y = y.astype(np.int32)
  source = y < 5
  x_tr, x_va, y_tr, y_va = train_test_split(
    x[~source], y[~source] - 5, test_size=0.5, random_state=0, stratify=y[~source]
  )
  return (x[source], y[source]), (x_tr, y_tr), (x_va, y_va)


def _pretrain(model, x, y):
  """The body: ``PRETRAIN_STEPS`` steps of SGD with momentum on the source task (seeded)."""
  tx = optax.sgd(PRETRAIN_LR, momentum=0.9)
  idx = np.random.default_rng(0).integers(0, len(x), size=(PRETRAIN_STEPS, PRETRAIN_BATCH))

  def step(carry, batch):
    params, state = carry
    grads = jax.grad(_cross_entropy, argnums=1)(model, params, *batch)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def run(key):
    params = model.init(key, x[:1])
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), (x[idx], y[idx]))
    return params

  return run(jax.random.key(0))


def _is_head(path):
  return any(getattr(k, "key", None) == "head" for k in path)


def scenario() -> _harness.Scenario:
  """The last-layer transfer scenario (pre-trains the body first)."""
  (x_src, y_src), (x_tr, y_tr), (x_va, y_va) = _data()
  model = MLP()
  pretrained = _pretrain(model, x_src, y_src)

  @jax.jit
  def init(key):  # the pre-trained body, a freshly initialised head
    fresh = model.init(key, x_tr[:1])
    return jax.tree_util.tree_map_with_path(
      lambda path, new, old: new if _is_head(path) else old, fresh, pretrained
    )

  def objective(params, x, y):  # cross-entropy + the head's L2 penalty
    kernel = params["params"]["head"]["kernel"]
    return _cross_entropy(model, params, x, y) + 0.5 * L2 * jnp.sum(kernel**2)

  def loss(params, batch):
    return objective(params, batch["x"], batch["y"])

  def evaluate(params):
    logits = model.apply(params, x_va)
    return {
      "train_loss": objective(params, x_tr, y_tr),
      "val_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y_va).mean(),
      "val_accuracy": jnp.mean(jnp.argmax(logits, -1) == y_va),
    }

  return _harness.Scenario(
    name="transfer_last_layer",
    title="Transfer: last layer of a digits 0-4 MLP retrained on digits 5-9 (cross-entropy)",
    init=init,
    loss=loss,
    sample=_harness.row_sampler(x_tr, y_tr),
    evaluate=evaluate,
    steps=300,
    eval_every=10,
    batch_size=32,
    lrs={
      "adamw": (3e-1, 1e-1, 3e-2),
      "sgd": (1.0, 3e-1, 3.0),
      "muon": (3e-1, 1e-1, 1.0),
      "newton_cg": (1.0, 0.5),
      "shampoo": (3e-1, 1.0, 1e-1),
      "soap": (3e-1, 1e-1, 1.0),
    },
    metric="val_accuracy",
    higher_is_better=True,
    newton_cg_steps=30,
    newton_cg_batch_size=len(x_tr),
    trainable=lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: _is_head(path), params
    ),
  )


if __name__ == "__main__":
  _harness.main(scenario())
