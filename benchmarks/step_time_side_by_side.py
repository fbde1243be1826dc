# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Mean step time of several optimizers on the transformer LM, measured side by side.

``transformer_lm.py`` times each run while it trains, one run after another, so a drift of the
host between runs moves the per-step ratios (by ~0.1 on the 2-core machines). This script trains
every configuration on the same batches in interleaved rounds: each round runs ``--round-steps``
steps of every configuration in turn (``lax.scan`` chunks of ``--chunk`` steps, as in training,
root steps included), so all of them see the same state of the host. The state carries over
between rounds, so the steps timed are steps 1 .. rounds x round-steps of real training (after one
untimed compile chunk). Reports each configuration's mean step time over all its timed steps, its
ratio to the first configuration (the baseline), and the range of the per-round ratios.

    python benchmarks/step_time_side_by_side.py \
      --variant "nadamw:optimizer=adamw,nesterov=True,b2=0.99,lr=5e-3" \
      --variant "shampoo:nesterov=True,exponent_override=2,lr=5e-3"
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import transformer_lm  # noqa: E402

COLUMNS = (
  ("label", "configuration", ""),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("ratio", "vs baseline", ".3f"),
  ("round_ratio_min", "round ratio min", ".3f"),
  ("round_ratio_max", "round ratio max", ".3f"),
)


def build(spec: str, steps: int, weight_decay: float):
  """``(label, optimizer)`` from ``NAME:optimizer=KIND,lr=LR,KEY=VALUE,...`` (default Shampoo)."""
  label, kw = _common.parse_variant(spec)
  kind = kw.pop("optimizer", "shampoo")
  lr = float(kw.pop("lr", 3e-3))
  return label, _common.make_optimizer(kind, lr, steps, weight_decay, kw)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", action="append", required=True, help="NAME:KEY=VALUE,...")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--round-steps", type=int, default=100, help="steps per round and config")
  parser.add_argument("--chunk", type=int, default=25, help="steps per lax.scan chunk")
  parser.add_argument("--schedule-steps", type=int, default=1000, help="lr schedule length")
  parser.add_argument("--weight-decay", type=float, default=0.01)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="/tmp/step_time_side_by_side.json")
  args = parser.parse_args()
  if args.round_steps % args.chunk:
    raise SystemExit("--round-steps must be a multiple of --chunk")

  task = transformer_lm.make_task(args.seed, 20, args.chunk)
  configs = [build(v, args.schedule_steps, args.weight_decay) for v in args.variant]
  runs = []
  for label, tx in configs:
    chunk = _common.scan_chunk(_common.make_step(task.loss_fn, tx))
    carry = jax.block_until_ready(chunk(task.params, tx.init(task.params), task.sample(0)))
    runs.append({"label": label, "chunk": chunk, "carry": carry, "round_s": []})

  per_round = args.round_steps // args.chunk
  for r in range(args.rounds):
    batches = [jax.device_put(task.sample(1 + r * per_round + i)) for i in range(per_round)]
    for run in runs:
      t0 = time.perf_counter()
      for b in batches:
        run["carry"] = run["chunk"](*run["carry"], b)
      jax.block_until_ready(run["carry"])
      run["round_s"].append(time.perf_counter() - t0)
    print(f"round {r + 1}: " + ", ".join(f"{x['label']} {x['round_s'][-1]:.2f} s" for x in runs))

  base = np.asarray(runs[0]["round_s"])
  rows = []
  for run in runs:
    s = np.asarray(run["round_s"])
    rows.append(
      {
        "label": run["label"],
        "mean_step_ms": 1e3 * s.sum() / (args.rounds * args.round_steps),
        "ratio": s.sum() / base.sum(),
        "round_ratio_min": float(np.min(s / base)),
        "round_ratio_max": float(np.max(s / base)),
        "round_s": s,
      }
    )
  print()
  meta = {"machine": _common.machine_info(), "args": vars(args)}
  _common.write_results("step_time_side_by_side", rows, meta, "", COLUMNS, out_path=args.out)


if __name__ == "__main__":
  main()
