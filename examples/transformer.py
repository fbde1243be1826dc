# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Transformer: a tiny character-level decoder-only language model, every optimizer side by side.

Text that ships with Python: the source of the standard-library modules ``textwrap`` and
``string``, read once (31,504 characters with Python 3.11.7; other Python versions ship slightly
different text). One token per character over a fixed vocabulary (``string.printable``, plus one
id for anything else); the first 90% of the text trains, the last 10% validates. The model is a
1-layer pre-LayerNorm decoder: d_model 32, 2 heads of causal self-attention (one fused ``qkv``
matrix), a 4x GELU MLP, learned positions, no biases, the output head tied to the token embedding
(16.6k parameters, every weight matrix 2-D). It reads 32 characters and is trained on
next-character cross-entropy (nats/char); ``val_accuracy`` is the next-character accuracy on the
same fixed validation windows (256 evenly spaced windows of each part of the text).

Budgets are small so that every optimizer, compilation included, runs in about a minute and a
half on a 2-core CPU (compilation is most of it: Newton-CG's Hessian-vector products
differentiate the model twice): 200 steps of 16 windows for the first-order optimizers, 20
Newton-CG steps of 64 windows with at most 5 CG iterations each. Shampoo and SOAP use
``block_size=32``: every factor is then 32 x 32, one stack of roots, which compiles and runs
faster on CPU than the default 256 and reached a similar loss here.

    python examples/transformer.py            # every optimizer (~1.5 min on a 2-core CPU)
    python examples/transformer.py --smoke    # a few steps each, no plot
    python examples/transformer.py --steps 0.5 --optimizers adamw,soap

Prints a table (final losses and accuracy, steps and timed seconds to AdamW's final validation
loss) and saves ``transformer.png`` (validation loss against steps and seconds).
"""

from __future__ import annotations

import importlib
import inspect
import os
import string
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

MODULES = ("textwrap", "string")
CONTEXT, D_MODEL, HEADS, LAYERS = 32, 32, 2, 1
VOCAB = string.printable  # 100 characters (whitespace included); anything else -> one UNK id
EVAL_WINDOWS = 256  # fixed windows for train_loss and for val_loss / val_accuracy


def _text_ids():
  """The modules' source as token ids (``len(VOCAB)`` is the UNK id), read once."""
  text = "".join(
    open(inspect.getsourcefile(importlib.import_module(m)), encoding="utf-8").read()
    for m in MODULES
  )
  index = {c: i for i, c in enumerate(VOCAB)}
  return np.array([index.get(c, len(VOCAB)) for c in text], dtype=np.int32)


def _windows(ids, starts):
  """``ids[s : s + CONTEXT + 1]`` for every start: inputs and their next-character targets."""
  return ids[np.asarray(starts)[:, None] + np.arange(CONTEXT + 1)]


def _spaced(n):
  """``EVAL_WINDOWS`` window starts evenly spaced over a text of ``n`` tokens."""
  return np.linspace(0, n - CONTEXT - 1, EVAL_WINDOWS).astype(np.int64)


def _cross_entropy(logits, targets):
  """Next-character cross-entropy per position (one-hot targets, no gather)."""
  return -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(targets, logits.shape[-1]), -1)


class Block(nn.Module):
  """Pre-LayerNorm block: causal multi-head self-attention, then a 4x GELU MLP (no biases)."""

  d: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, t, _ = x.shape
    dense = lambda n, name: nn.Dense(n, use_bias=False, name=name)  # noqa: E731
    qkv = dense(3 * self.d, "qkv")(nn.LayerNorm(use_bias=False)(x))
    q, k, v = jnp.split(qkv.reshape(b, t, 3 * self.heads, self.d // self.heads), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.d // self.heads)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    att = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.d)
    x = x + dense(self.d, "attn_out")(att)
    h = nn.gelu(dense(4 * self.d, "mlp_in")(nn.LayerNorm(use_bias=False)(x)))
    return x + dense(self.d, "mlp_out")(h)


class CharLM(nn.Module):
  """Token and learned position embeddings, ``layers`` blocks, LayerNorm, tied output head."""

  vocab: int
  d: int = D_MODEL
  heads: int = HEADS
  layers: int = LAYERS

  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(0.02)
    embed = self.param("embed", init, (self.vocab, self.d))
    pos = self.param("pos_embedding", init, (CONTEXT, self.d))
    # One-hot products instead of gathers: XLA on CPU compiles them much faster, which matters
    # for Newton-CG, whose Hessian-vector products differentiate the model twice.
    x = jax.nn.one_hot(tokens, self.vocab) @ embed + pos[: tokens.shape[1]]
    for i in range(self.layers):
      x = Block(self.d, self.heads, name=f"block_{i}")(x)
    return nn.LayerNorm(use_bias=False)(x) @ embed.T


def scenario() -> _harness.Scenario:
  """The character-level language-model scenario."""
  ids = _text_ids()
  split = int(0.9 * len(ids))
  train_ids, val_ids = ids[:split], ids[split:]
  # Fixed evaluation windows (the same every call): evenly spaced over each part of the text.
  train_eval = _windows(train_ids, _spaced(len(train_ids)))
  val_eval = _windows(val_ids, _spaced(len(val_ids)))
  model = CharLM(vocab=len(VOCAB) + 1)

  def logits_and_targets(params, windows):
    return model.apply(params, windows[:, :-1]), windows[:, 1:]

  def loss(params, batch):  # mean next-character cross-entropy of a batch of windows
    logits, targets = logits_and_targets(params, batch)
    return _cross_entropy(logits, targets).mean()

  def sample(rng, batch_size):  # random windows of the training text
    return _windows(train_ids, rng.integers(0, len(train_ids) - CONTEXT - 1, size=batch_size))

  def evaluate(params):  # one forward pass over the fixed train and validation windows
    logits, targets = logits_and_targets(params, np.concatenate([train_eval, val_eval]))
    losses = _cross_entropy(logits, targets).mean(-1)
    correct = jnp.argmax(logits[EVAL_WINDOWS:], -1) == targets[EVAL_WINDOWS:]
    return {
      "train_loss": losses[:EVAL_WINDOWS].mean(),
      "val_loss": losses[EVAL_WINDOWS:].mean(),
      "val_accuracy": correct.mean(),
    }

  return _harness.Scenario(
    name="transformer",
    title=f"Transformer: {LAYERS}-layer char-level LM on stdlib source (cross-entropy, nats)",
    init=jax.jit(lambda key: model.init(key, jnp.zeros((1, CONTEXT), jnp.int32))),
    loss=loss,
    sample=sample,
    evaluate=evaluate,
    steps=200,
    eval_every=10,
    batch_size=16,
    lrs={
      "adamw": (1e-2, 5e-3, 3e-2),
      "sgd": (1e-1, 5e-2, 3e-1),
      "muon": (3e-2, 1e-2, 1e-1),
      "newton_cg": (1.0, 0.5),
      "shampoo": (1e-2, 3e-3, 3e-2),
      "soap": (3e-2, 1e-2, 3e-3),
    },
    metric="val_accuracy",
    higher_is_better=True,
    newton_cg_steps=20,
    newton_cg_batch_size=64,
    newton_cg_kw={"maxiter": 5},
    shampoo_kw={"block_size": 32},
    soap_kw={"block_size": 32},
    weight_decay=0.01,
  )


if __name__ == "__main__":
  _harness.main(scenario())
