# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""AdamW vs Shampoo vs SOAP vs Muon: time to AdamW's best loss, small character-level transformer.

Model: decoder-only transformer (Flax linen), 2 layers, d_model 128, 4 heads, MLP 4x (GELU),
pre-LayerNorm, learned positional embeddings, causal self-attention written with plain
``nn.Dense`` layers (every weight 2-D), untied output head; context 64, batch 16.

Data: the source text of a fixed list of standard-library modules (``MODULES``; it ships with
Python, so it depends on the Python version -- the JSON records the version and a hash), one
character per token, characters seen fewer than ``--min-count`` times mapped to one UNK id;
the first 90% train, the last 10% validation. Validation loss = mean next-character
cross-entropy (nats) on 32 fixed validation batches of 16 x 64 tokens.

Protocol (same for every optimizer, ``benchmarks/_common.py``):

* schedule: linear warm-up over 5% of ``--steps`` to the peak lr, cosine decay to 0;
  decoupled weight decay ``--weight-decay`` (0.01) for every optimizer;
* ``adamw``: ``optax.adamw``; ``shampoo``: ``sops.shampoo(..., **shampoo_kw)`` with
  ``--shampoo-kw key=value`` (repeatable); ``soap``: ``sops.soap`` (``--soap-kw``); ``muon``:
  ``optax.contrib.muon`` on the attention and MLP matrices, its AdamW branch (same weight decay)
  on embeddings, head, biases, LayerNorms;
* peak lr grid per optimizer (``--lrs-adamw`` etc.); each optimizer's best lr = lowest final
  validation loss; target = the best final validation loss of any AdamW run (its lr grid and
  any ``--variant`` with ``optimizer=adamw``, e.g. ``b2=0.99``), ratios against that run;
* identical batches and initial parameters for every run (seeded numpy sampling outside jit);
  training in ``lax.scan`` chunks of ``--eval-every`` steps, compile excluded by a warm-up call,
  evaluation excluded from the timing;
* per best config: final loss, steps to target (first eval step with val loss <= target),
  mean step time over all timed steps (root steps included), time to target = steps x mean
  step, ratios vs AdamW, and ``--timing-steps`` individually timed jitted steps (p50, max,
  max/mean: a step recomputing Shampoo's roots shows up as max/mean >> 1).

    python benchmarks/transformer_lm.py            # full run (~35 min on a 2-core CPU)
    python benchmarks/transformer_lm.py --quick    # smoke test (~1.5 min): 40 steps, one lr each
    python benchmarks/transformer_lm.py --optimizers adamw,shampoo \\
      --shampoo-kw precondition_every=20 --variant eigh:inverse_root=eigh

Output: markdown tables on stdout, ``benchmarks/results/transformer_lm.json`` (every raw number:
loss curves, chunk and step times, machine, versions, command) and a PNG of the curves next to it.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

MODULES = (
  "inspect",
  "argparse",
  "collections",
  "typing",
  "dataclasses",
  "functools",
  "textwrap",
)
CONTEXT, BATCH, D_MODEL, HEADS, LAYERS = 64, 16, 128, 4, 2
VAL_BATCHES = 32


def load_text(min_count: int):
  """Returns (train ids, val ids, vocabulary list, text sha256); the last vocab entry is UNK."""
  text = "".join(
    open(inspect.getsourcefile(importlib.import_module(m)), encoding="utf-8").read()
    for m in MODULES
  )
  counts = collections.Counter(text)
  vocab = sorted(c for c, k in counts.items() if k >= min_count)
  index = {c: i for i, c in enumerate(vocab)}
  ids = np.array([index.get(c, len(vocab)) for c in text], dtype=np.int32)
  split = int(0.9 * len(ids))
  sha = hashlib.sha256(text.encode()).hexdigest()
  return ids[:split], ids[split:], [*vocab, "<unk>"], sha


def windows(ids, starts):
  """``ids[s : s + CONTEXT + 1]`` for every start; shape ``starts.shape + (CONTEXT + 1,)``."""
  return ids[starts[..., None] + np.arange(CONTEXT + 1)]


class Block(nn.Module):
  """Pre-LayerNorm block: causal multi-head self-attention, then a 4x GELU MLP."""

  d: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, t, _ = x.shape
    h = nn.LayerNorm()(x)
    split = lambda y: y.reshape(b, t, self.heads, self.d // self.heads)  # noqa: E731
    q = split(nn.Dense(self.d, name="query")(h))
    k = split(nn.Dense(self.d, name="key")(h))
    v = split(nn.Dense(self.d, name="value")(h))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.d // self.heads)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -1e9), axis=-1)
    att = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.d)
    x = x + nn.Dense(self.d, name="attn_out")(att)
    h = nn.LayerNorm()(x)
    h = nn.Dense(4 * self.d, name="mlp_in")(h)
    return x + nn.Dense(self.d, name="mlp_out")(nn.gelu(h))


class CharLM(nn.Module):
  vocab: int
  d: int = D_MODEL
  heads: int = HEADS
  layers: int = LAYERS
  context: int = CONTEXT

  @nn.compact
  def __call__(self, tokens):
    init = nn.initializers.normal(0.02)
    pos = self.param("pos_embedding", init, (self.context, self.d))
    x = nn.Embed(self.vocab, self.d, embedding_init=init, name="embed")(tokens)
    x = x + pos[: tokens.shape[1]]
    for i in range(self.layers):
      x = Block(self.d, self.heads, name=f"block_{i}")(x)
    return nn.Dense(self.vocab, name="head")(nn.LayerNorm()(x))


def muon_dims(params):
  """Muon on the 2-D kernels inside the blocks; ``None`` (AdamW branch) for everything else."""

  def spec(path, x):
    names = [getattr(k, "key", str(k)) for k in path]
    in_block = any(str(n).startswith("block_") for n in names)
    return optax.contrib.MuonDimensionNumbers() if in_block and x.ndim == 2 else None

  return jax.tree_util.tree_map_with_path(spec, params)


class Task(NamedTuple):
  """The benchmark's model, data and loss, shared with ``shampoo_async_roots.py``."""

  params: Any  # initial parameters
  loss_fn: Callable  # (params, batch) -> mean next-character cross-entropy
  val_loss: Callable  # jitted: params -> validation loss
  sample: Callable  # chunk index -> (eval_every, BATCH, CONTEXT + 1) int32 windows
  train_ids: np.ndarray
  val_ids: np.ndarray
  vocab: list
  sha: str


def make_task(seed: int, min_count: int, eval_every: int, device: Any = None) -> Task:
  """Model, loss and seeded batches; ``device`` (default: the default device) holds the
  parameters and validation batches."""
  train_ids, val_ids, vocab, sha = load_text(min_count)
  model = CharLM(vocab=len(vocab))
  params = model.init(jax.random.key(seed), jnp.zeros((1, CONTEXT), jnp.int32))
  val_starts = np.random.default_rng(10_000 + seed).integers(
    0, len(val_ids) - CONTEXT - 1, size=VAL_BATCHES * BATCH
  )
  val = jnp.asarray(windows(val_ids, val_starts).reshape(VAL_BATCHES, BATCH, CONTEXT + 1))
  if device is not None:
    params, val = jax.device_put((params, val), device)

  def loss_fn(params, batch):
    logits = model.apply(params, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  @jax.jit
  def val_loss(params):
    return jax.lax.map(functools.partial(loss_fn, params), val).mean()

  def sample(c):
    rng = np.random.default_rng((seed, c))
    starts = rng.integers(0, len(train_ids) - CONTEXT - 1, size=(eval_every, BATCH))
    return windows(train_ids, starts)

  return Task(params, loss_fn, val_loss, sample, train_ids, val_ids, vocab, sha)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  _common.add_protocol_args(
    parser,
    steps=1000,
    eval_every=50,
    lrs={"adamw": [1e-3, 3e-3, 1e-2], "shampoo": [1e-3, 3e-3, 1e-2], "muon": [3e-3, 1e-2, 3e-2]},
    out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "transformer_lm.json"),
  )
  parser.add_argument("--min-count", type=int, default=20, help="rarer characters -> UNK")
  parser.add_argument(
    "--quick", action="store_true", help="40 steps, eval every 20, lr 3e-3 (muon 1e-2), 12 timed"
  )
  args = parser.parse_args()
  if args.quick:
    args.steps, args.eval_every, args.timing_steps = 40, 20, 12
    args.lrs_adamw, args.lrs_shampoo, args.lrs_muon = [3e-3], [3e-3], [1e-2]
    args.lrs_soap = [3e-3]

  task = make_task(args.seed, args.min_count, args.eval_every)
  params, loss_fn, val_loss, sample_chunk = task.params, task.loss_fn, task.val_loss, task.sample
  train_ids, val_ids, vocab, sha = task.train_ids, task.val_ids, task.vocab, task.sha
  n_params = sum(x.size for x in jax.tree.leaves(params))

  def run_one(tx, steps):
    return _common.train(loss_fn, params, tx, sample_chunk, steps, args.eval_every, val_loss)

  def time_steps(tx, n):
    return _common.per_step_times(loss_fn, params, tx, sample_chunk, n)

  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; {n_params:,} parameters; "
    f"text {len(train_ids):,} train / {len(val_ids):,} val chars, vocab {len(vocab)}; "
    f"{args.steps} steps of {BATCH}x{CONTEXT} tokens, eval every {args.eval_every}"
  )
  meta = {
    "benchmark": "transformer_lm",
    "model": {"layers": LAYERS, "d_model": D_MODEL, "heads": HEADS, "mlp": 4, "params": n_params},
    "data": {
      "modules": MODULES,
      "text_sha256": sha,
      "train_chars": len(train_ids),
      "val_chars": len(val_ids),
      "vocab": len(vocab),
      "min_count": args.min_count,
      "context": CONTEXT,
      "batch": BATCH,
      "val_batches": VAL_BATCHES,
    },
    "loss": "validation cross-entropy (nats/char), mean over the fixed validation batches",
  }
  _common.compare(args, "transformer_lm", run_one, time_steps, meta, muon_dims, "val loss")


if __name__ == "__main__":
  main()
