# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Variational autoencoder: scikit-learn's digits, every optimizer side by side.

A stochastic objective: 1,797 hand-written 8x8 digits (pixels scaled to [0, 1]), 80/20
train/validation split. A Flax MLP encoder 64-64-(2x8) gives the mean and log-variance of a
diagonal Gaussian posterior over 8 latent dimensions; a decoder 8-64-64 gives Bernoulli logits
of the pixels (sigmoid cross-entropy). The loss is the negative ELBO per example (summed over
pixels, KL to the standard normal prior in closed form) averaged over the batch, with one
reparameterised sample per example. The noise is deterministic given the batch: each batch
carries an int32 ``seed`` and the loss draws from ``jax.random.key(seed)``, so Newton-CG's
``value_fn`` sees exactly the objective whose gradient it is given. Evaluation (negative ELBO on
the full training and validation sets, and the per-pixel squared reconstruction error of the
posterior mean) uses a fixed key.

    python examples/vae.py            # every optimizer (~1.5 min on a 2-core CPU)
    python examples/vae.py --smoke    # a few steps each, no plot
    python examples/vae.py --steps 0.5 --optimizers adamw,soap

Prints a table (final losses, steps and timed seconds to AdamW's final validation loss) and saves
``vae.png`` (validation negative ELBO against steps and seconds).
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

LATENT = 8


class VAE(nn.Module):
  """MLP encoder 64-64-(2x latent) and decoder latent-64-64 (pixel logits)."""

  latent: int = LATENT
  hidden: int = 64

  def setup(self):
    self.enc_hidden = nn.Dense(self.hidden)
    self.enc_out = nn.Dense(2 * self.latent)
    self.dec_hidden = nn.Dense(self.hidden)
    self.dec_out = nn.Dense(64)

  def encode(self, x):
    mean, log_var = jnp.split(self.enc_out(nn.tanh(self.enc_hidden(x))), 2, axis=-1)
    return mean, log_var

  def decode(self, z):
    return self.dec_out(nn.tanh(self.dec_hidden(z)))

  def __call__(self, x, key):
    mean, log_var = self.encode(x)
    z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
    return self.decode(z), mean, log_var


def _data():
  x, _ = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  x_tr, x_va = train_test_split(x, test_size=0.2, random_state=0)
  return x_tr, x_va


def scenario() -> _harness.Scenario:
  """The digits VAE scenario."""
  x_tr, x_va = _data()
  x_all = np.concatenate([x_tr, x_va])
  model = VAE()

  def neg_elbo(params, x, key):
    """Per example: the Bernoulli negative log-likelihood plus the KL to the prior."""
    logits, mean, log_var = model.apply(params, x, key)
    nll = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1)
    kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
    return nll + kl

  def recon_error(params, x):
    mean, _ = model.apply(params, x, method=VAE.encode)
    return jnp.mean((nn.sigmoid(model.apply(params, mean, method=VAE.decode)) - x) ** 2)

  def sample(rng, batch_size):
    idx = rng.choice(len(x_tr), size=min(batch_size, len(x_tr)), replace=False)
    return {"x": x_tr[idx], "seed": np.int32(rng.integers(2**31))}

  def evaluate(params):
    each = neg_elbo(params, x_all, jax.random.key(1234))  # one noise draw for both sets
    return {
      "train_loss": jnp.mean(each[: len(x_tr)]),
      "val_loss": jnp.mean(each[len(x_tr) :]),
      "val_recon_mse": recon_error(params, x_va),
    }

  return _harness.Scenario(
    name="vae",
    title="VAE: MLP encoder/decoder on digits (negative ELBO, Bernoulli pixels)",
    init=jax.jit(lambda key: model.init(key, x_tr[:1], jax.random.key(0))),  # one compilation
    loss=lambda params, batch: jnp.mean(
      neg_elbo(params, batch["x"], jax.random.key(batch["seed"]))
    ),
    sample=sample,
    evaluate=evaluate,
    steps=600,
    eval_every=20,
    batch_size=64,
    lrs={
      "adamw": (3e-2, 1e-2, 3e-3),
      "sgd": (1e-2, 3e-3, 1e-3),  # 3e-2 and above blow up
      "muon": (3e-2, 1e-2, 1e-1),
      "newton_cg": (0.5, 1.0, 0.25),
      "shampoo": (3e-2, 1e-2, 3e-3),
      "soap": (3e-2, 1e-2, 3e-3),
    },
    newton_cg_steps=60,
    newton_cg_batch_size=512,
  )


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  _harness.main(scenario())
