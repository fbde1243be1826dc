# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Mean training-step time of Shampoo root schedules, measured inside the training loop.

Each row is 50 steps of the transformer LM benchmark (forward, backward, update) scanned in one
jit, timed after two warm-up calls (best of 2), so roots, statistics and preconditioning are costed
as they run in training (the isolated pieces are in ``shampoo_step_cost.py``). Prints a markdown
table and writes JSON.

    python benchmarks/shampoo_root_schedules.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import transformer_lm as lm  # noqa: E402

import sops  # noqa: E402

NEVER = 10**9
VARIANTS = [
  ("AdamW", None),
  (
    "Shampoo, no roots (graft only; statistics + preconditioning computed)",
    dict(start_preconditioning_step=NEVER, precondition_every=NEVER),
  ),
  ("eigh every 10", dict(precondition_every=10)),
  ("eigh every 10, staggered", dict(precondition_every=10, stagger_roots=True)),
  ("eigh every 50", dict(precondition_every=50)),
  ("eigh every 50, staggered", dict(precondition_every=50, stagger_roots=True)),
  ("eigh every 50, statistics every 4", dict(precondition_every=50, statistics_every=4)),
  (
    "eigh warm-started every 10",
    dict(precondition_every=10, inverse_root=sops.RootConfig("eigh", True)),
  ),
  (
    "eigh warm-started every 50",
    dict(precondition_every=50, inverse_root=sops.RootConfig("eigh", True)),
  ),
  ("coupled Newton every 50", dict(precondition_every=50, inverse_root="coupled_newton")),
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  train_ids, _, vocab, _ = lm.load_text(20)
  model = lm.CharLM(vocab=len(vocab))
  params = model.init(jax.random.key(0), jnp.zeros((1, lm.CONTEXT), jnp.int32))
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(train_ids) - lm.CONTEXT - 1, size=(args.steps, lm.BATCH))
  batches = jnp.asarray(lm.windows(train_ids, starts))

  def loss_fn(p, b):
    logits = model.apply(p, b[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

  def mean_step_ms(tx):
    def body(carry, b):
      p, s = carry
      u, s = tx.update(jax.grad(loss_fn)(p, b), s, p)
      return (optax.apply_updates(p, u), s), None

    run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), batches)[0])
    carry = jax.block_until_ready(run(params, tx.init(params)))
    carry = jax.block_until_ready(run(*carry))
    best = np.inf
    for _ in range(2):
      t0 = time.perf_counter()
      carry = jax.block_until_ready(run(*carry))
      best = min(best, time.perf_counter() - t0)
    return 1e3 * best / args.steps

  rows = []
  for name, kw in VARIANTS:
    tx = optax.adamw(3e-3) if kw is None else sops.shampoo(3e-3, **kw)
    rows.append({"schedule": name, "ms": mean_step_ms(tx)})
    rows[-1]["ratio"] = rows[-1]["ms"] / rows[0]["ms"]
    print(f"{name}: {rows[-1]['ms']:.2f} ms", flush=True)
  cols = (("schedule", "schedule", ""), ("ms", "mean step ms", ".2f"), ("ratio", "vs AdamW", ".2f"))
  print(_common.markdown_table(rows, cols))
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "shampoo_root_schedules.json")
  with open(path, "w") as f:
    json.dump({"meta": _common.machine_info(), "rows": rows}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
