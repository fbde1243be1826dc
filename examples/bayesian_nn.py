# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Bayesian neural network: mean-field variational inference on breast cancer, every optimizer.

A stochastic objective in plain JAX: scikit-learn's breast cancer data (569 tumours, 30 features,
benign or malignant), standardised, 80/20 train/validation split. A 30-16-1 tanh network with a
logistic output in which every weight and bias has a Gaussian variational posterior with mean
``mu`` and standard deviation ``softplus(rho)``, under a standard normal prior (Blundell et al.,
"Weight uncertainty in neural networks", 2015). The loss is the negative ELBO per example: the
closed-form KL to the prior divided by the training-set size plus the expected negative
log-likelihood (Bernoulli), estimated with ``TRAIN_SAMPLES`` reparameterised weight draws (all
weights drawn in one call, so one RNG kernel to compile). The posterior standard deviations start
at ``INIT_STD`` and have to grow towards the prior's for most weights. The noise is
deterministic given the batch: each batch carries an int32 ``seed`` and the loss draws from
``jax.random.key(seed)``, so Newton-CG's ``value_fn`` sees exactly the objective whose gradient it
is given.

Evaluation uses a fixed key and ``EVAL_SAMPLES`` draws: ``train_loss`` and ``val_loss`` are the
negative ELBO per example on the full training and validation sets (the same KL term on both,
since it is a property of the posterior), ``val_accuracy`` is the accuracy of the posterior
predictive (the class probabilities averaged over the draws) on the validation set.

    python examples/bayesian_nn.py            # every optimizer (~1.5 min on a 2-core CPU)
    python examples/bayesian_nn.py --smoke    # a few steps each, no plot
    python examples/bayesian_nn.py --steps 0.5 --optimizers adamw,newton_cg

Prints a table (final losses and validation accuracy, steps and timed seconds to AdamW's final
validation loss) and saves ``bayesian_nn.png`` (validation negative ELBO against steps and
seconds).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

HIDDEN = 16
TRAIN_SAMPLES = 2  # weight samples per step
EVAL_SAMPLES = 32  # weight samples per evaluation
PRIOR_STD = 1.0
INIT_STD = 0.1  # initial posterior standard deviation of every weight


def _data():
  x, y = load_breast_cancer(return_X_y=True)
  x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
  mx, sx = x_tr.mean(0), x_tr.std(0)
  f32 = np.float32
  return (
    ((x_tr - mx) / sx).astype(f32),
    y_tr.astype(f32),
    (((x_va - mx) / sx).astype(f32), y_va.astype(f32)),
  )


def _init(key, features):
  """``{"mu": weights, "rho": weights}``; means Glorot-uniform, biases 0, std ``INIT_STD``."""
  k1, k2 = jax.random.split(key)
  glorot = jax.nn.initializers.glorot_uniform()
  mu = {
    "w1": glorot(k1, (features, HIDDEN)),
    "b1": jnp.zeros(HIDDEN),
    "w2": glorot(k2, (HIDDEN, 1)),
    "b2": jnp.zeros(1),
  }
  rho0 = float(np.log(np.expm1(INIT_STD)))  # softplus(rho0) = INIT_STD
  return {"mu": mu, "rho": jax.tree.map(lambda m: jnp.full_like(m, rho0), mu)}


def _logits(w, x):
  return (jnp.tanh(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"])[..., 0]


def _kl(params):
  """KL(q || prior) summed over every weight, Gaussian against Gaussian in closed form."""
  mu, _ = ravel_pytree(params["mu"])
  std = jax.nn.softplus(ravel_pytree(params["rho"])[0])
  return jnp.sum(jnp.log(PRIOR_STD / std) + (std**2 + mu**2) / (2 * PRIOR_STD**2) - 0.5)


def _sample_logits(params, x, key, samples):
  """Logits under ``samples`` reparameterised weight draws, shape ``(samples, len(x))``."""
  mu, unravel = ravel_pytree(params["mu"])  # one draw for all weights: one RNG kernel to compile
  std = jax.nn.softplus(ravel_pytree(params["rho"])[0])
  weights = mu + std * jax.random.normal(key, (samples, mu.size))
  return jax.vmap(lambda w: _logits(unravel(w), x))(weights)


def scenario() -> _harness.Scenario:
  """The breast-cancer Bayesian neural network scenario."""
  x_tr, y_tr, (x_va, y_va) = _data()
  n_train = len(x_tr)

  def neg_elbo(params, logits, y):
    nll = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))  # over samples and examples
    return nll + _kl(params) / n_train

  def sample(rng, batch_size):
    idx = rng.choice(n_train, size=min(batch_size, n_train), replace=False)
    return {"x": x_tr[idx], "y": y_tr[idx], "seed": np.int32(rng.integers(2**31))}

  def evaluate(params):
    x = jnp.concatenate([x_tr, x_va])  # one draw of the weights for both sets
    logits = _sample_logits(params, x, jax.random.key(1234), EVAL_SAMPLES)
    logits_tr, logits_va = logits[:, :n_train], logits[:, n_train:]
    probs = jnp.mean(jax.nn.sigmoid(logits_va), axis=0)  # the posterior predictive
    return {
      "train_loss": neg_elbo(params, logits_tr, y_tr),
      "val_loss": neg_elbo(params, logits_va, y_va),
      "val_accuracy": jnp.mean((probs > 0.5) == (y_va > 0.5)),
    }

  def loss(params, batch):
    key = jax.random.key(batch["seed"])
    return neg_elbo(params, _sample_logits(params, batch["x"], key, TRAIN_SAMPLES), batch["y"])

  return _harness.Scenario(
    name="bayesian_nn",
    title="Bayesian NN: mean-field VI on breast cancer (negative ELBO per example)",
    init=jax.jit(lambda key: _init(key, x_tr.shape[1])),  # one compilation
    loss=loss,
    sample=sample,
    evaluate=evaluate,
    steps=600,
    eval_every=20,
    batch_size=64,
    # The rho gradients are O(1 / n_train) (the KL term) and, since every rho starts equal, each
    # rho matrix's gradient is nearly rank one: SGD needs a large rate, and Muon's and SOAP's
    # rotated steps spread it thinly over the matrix, so they need larger rates than AdamW.
    lrs={
      "adamw": (3e-2, 1e-2, 1e-1),
      "sgd": (1.0, 0.3, 0.1),
      "muon": (0.3, 0.1, 1.0),
      "newton_cg": (1.0, 0.5),
      "shampoo": (0.1, 0.03, 0.3),
      "soap": (0.3, 0.1, 1.0),
    },
    metric="val_accuracy",
    higher_is_better=True,
    newton_cg_steps=60,
    newton_cg_batch_size=n_train,
  )


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  _harness.main(scenario())
