# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Optimizer-state memory of AdamW, Shampoo and SOAP under each memory option, and its cost.

1. **Memory** (``jax.eval_shape(tx.init, params)``, nothing allocated): optimizer-state bytes /
   parameter bytes on the transformer benchmark's model (2-layer d=128 character LM of
   ``benchmarks/transformer_lm.py``) and on a "large" model (a 50,000 x 256 embedding and a
   4096 x 1024 dense layer with bias), for AdamW, SOAP and Shampoo with each
   :class:`sops.StateStorage` option (packed upper triangles, bfloat16 / int16 / int8 storage of
   statistics and roots, bfloat16 momentum) and with one-sided preconditioning
   (``max_preconditioner_dim``: larger dimensions get no factor).
2. **Quality cost** (``--quality``): steps to AdamW's loss on the transformer benchmark. AdamW
   over its lr grid sets the target (best final validation loss, as in ``transformer_lm.py``);
   Shampoo and SOAP at their best lrs (``--lr-shampoo``, ``--lr-soap``) run with each memory
   option, same batches and schedule (``--select soap`` trains only the rows naming SOAP).
   Packed float storage alone is lossless but for the rounding asymmetry of ``G G^T``
   (``tests/test_storage.py`` follows full storage with it to 1e-9 in float64): not trained.

    python benchmarks/state_memory.py                 # memory tables only (seconds)
    python benchmarks/state_memory.py --quality       # + training runs (~25 min on a 2-core CPU)
    python benchmarks/state_memory.py --quality --quick   # smoke test
    python benchmarks/state_memory.py --timing        # step time, full vs compact (~3 min)

Output: markdown tables on stdout, ``benchmarks/results/state_memory.json``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import transformer_lm as lm  # noqa: E402

import sops  # noqa: E402

S = sops.StateStorage
# (label, optimizer, keyword arguments): every row of the memory table.
OPTIONS = (
  ("adamw", "adamw", {}),
  ("soap", "soap", {}),
  ("soap compact (sym int16 stats, bf16 bases)", "soap", {"storage": "compact"}),
  ("soap compact + bf16 momentum", "soap", {"storage": S(True, "int16", "bfloat16", "bfloat16")}),
  ("shampoo", "shampoo", {}),
  ("shampoo bf16 statistics_dtype", "shampoo", {"statistics_dtype": "bfloat16"}),
  ("shampoo symmetric", "shampoo", {"storage": S(symmetric=True)}),
  ("shampoo symmetric int16 stats", "shampoo", {"storage": S(True, "int16")}),
  (
    "shampoo symmetric int16 stats bf16 roots",
    "shampoo",
    {"storage": S(True, "int16", "bfloat16")},
  ),
  ("shampoo compact (sym, int16 stats, int8 roots)", "shampoo", {"storage": "compact"}),
  ("shampoo compact + bf16 momentum", "shampoo", {"storage": S(True, "int16", "int8", "bfloat16")}),
  ("shampoo one-sided > 256", "shampoo", {"max_preconditioner_dim": 256}),
  (
    "shampoo compact + one-sided > 256",
    "shampoo",
    {"storage": "compact", "max_preconditioner_dim": 256},
  ),
)
# Rows trained for the quality cost (packed float storage alone is lossless: not trained).
QUALITY = (
  "shampoo",
  "shampoo bf16 statistics_dtype",
  "shampoo symmetric int16 stats",
  "shampoo symmetric int16 stats bf16 roots",
  "shampoo compact (sym, int16 stats, int8 roots)",
  "shampoo compact + bf16 momentum",
  "shampoo one-sided > 256",
  "soap",
  "soap compact (sym int16 stats, bf16 bases)",
  "soap compact + bf16 momentum",
)


def large_params():
  f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
  return {
    "embed": f32((50_000, 256)),
    "dense": {"kernel": f32((4096, 1024)), "bias": f32((1024,))},
  }


def nbytes(tree) -> int:
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def make(kind: str, lr, kw: dict) -> optax.GradientTransformation:
  if kind == "adamw":
    return optax.adamw(lr, weight_decay=0.01)
  return getattr(sops, kind)(lr, weight_decay=0.01, **kw)


def memory_rows(models: dict) -> list[dict]:
  rows = []
  for label, kind, kw in OPTIONS:
    row = {"optimizer": label}
    for name, params in models.items():
      state = jax.eval_shape(make(kind, 1e-3, kw).init, params)
      row[f"{name}_ratio"] = nbytes(state) / nbytes(params)
      row[f"{name}_mb"] = nbytes(state) / 2**20
    rows.append(row)
  adam = rows[0]
  for row in rows:
    for name in models:
      row[f"{name}_vs_adamw"] = row[f"{name}_ratio"] / adam[f"{name}_ratio"]
  return rows


def quality_rows(args) -> tuple[list[dict], list[dict]]:
  task = lm.make_task(args.seed, args.min_count, args.eval_every)
  schedule = functools.partial(_common.lr_schedule, steps=args.steps)
  kws = {label: (kind, kw) for label, kind, kw in OPTIONS}
  grid = [("adamw", lr, "adamw", {}) for lr in args.lrs_adamw]
  chosen = [label for label in QUALITY[: args.rows] if args.select in label]
  lr = {"shampoo": args.lr_shampoo, "soap": args.lr_soap}
  grid += [(label, lr[kws[label][0]], *kws[label]) for label in chosen]
  runs = []
  for label, lr, kind, kw in grid:
    tx = make(kind, schedule(lr), kw)
    res = _common.train(
      task.loss_fn, task.params, tx, task.sample, args.steps, args.eval_every, task.val_loss
    )
    print(f"{label} lr {lr:.0e}: final val loss {res.losses[-1]:.4f}", flush=True)
    runs.append(
      {"label": label, "lr": lr, "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s}
    )
  rows = _common.summarize(runs)
  for r in rows:  # step times come from --timing, measured with nothing else running
    for k in ("mean_step_ms", "time_to_target_s", "per_step_ratio", "time_ratio"):
      r.pop(k, None)
    kind = "adamw" if r["optimizer"] == "adamw" else kws[r["optimizer"]][0]
    full = next((x for x in rows if x["optimizer"] == kind), None)  # its full-precision row
    ok = full is not None and r["steps_to_target"] is not None and full["steps_to_target"]
    r["steps_vs_full"] = r["steps_to_target"] / full["steps_to_target"] if ok else None
  return rows, runs


TIMED = ("adamw", "shampoo", "shampoo compact (sym, int16 stats, int8 roots)")


def timing_rows(args) -> list[dict]:
  """Mean step time (single jitted steps, root steps included) of ``TIMED``, rows interleaved."""
  task = lm.make_task(args.seed, args.min_count, args.eval_every)
  schedule = _common.lr_schedule(args.lr_shampoo, args.steps)
  kws = {label: (kind, kw) for label, kind, kw in OPTIONS}
  times = {label: [] for label in TIMED}
  for _ in range(args.repeats):
    for label in TIMED:
      tx = make(kws[label][0], schedule, kws[label][1])
      t = _common.per_step_times(task.loss_fn, task.params, tx, task.sample, args.timing_steps)
      times[label].append(1e3 * float(np.mean(t)))
      print(f"{label}: {times[label][-1]:.2f} ms/step", flush=True)
  rows = [
    {"optimizer": k, "mean_step_ms": float(np.mean(v)), "repeats_ms": v} for k, v in times.items()
  ]
  for r in rows:
    r["vs_adamw"] = r["mean_step_ms"] / rows[0]["mean_step_ms"]
    r["vs_shampoo"] = r["mean_step_ms"] / rows[1]["mean_step_ms"]
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quality", action="store_true", help="train for the quality cost")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--lrs-adamw", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
  parser.add_argument("--lr-shampoo", type=float, default=3e-3, help="its best lr on the grid")
  parser.add_argument("--lr-soap", type=float, default=1e-2, help="its best lr on the grid")
  parser.add_argument("--select", default="", help="train only quality rows containing this")
  parser.add_argument("--min-count", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--rows", type=int, default=len(QUALITY), help="first N quality rows")
  parser.add_argument("--quick", action="store_true", help="40 steps, 2 Shampoo rows")
  parser.add_argument("--timing", action="store_true", help="only time full vs compact steps")
  parser.add_argument("--timing-steps", type=int, default=200, help="timed steps per row")
  parser.add_argument("--repeats", type=int, default=2, help="timings per row (mean reported)")
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "state_memory.json"
    ),
  )
  args = parser.parse_args()
  if args.quick:
    args.steps, args.eval_every, args.lrs_adamw, args.rows = 40, 20, [3e-3], 2
    args.timing_steps, args.repeats = 20, 1
  if args.timing:
    rows = timing_rows(args)
    cols = (
      ("optimizer", "optimizer", ""),
      ("mean_step_ms", "mean step ms", ".2f"),
      ("vs_adamw", "vs AdamW", ".2f"),
      ("vs_shampoo", "vs full Shampoo", ".2f"),
    )
    meta = {"benchmark": "state_memory --timing", "machine": _common.machine_info()}
    out = args.out.replace(".json", "_timing.json")
    _common.write_results("state_memory_timing", rows, meta, "", cols, {"args": vars(args)}, out)
    return

  task_params = lm.make_task(args.seed, args.min_count, args.eval_every).params
  models = {"transformer": task_params, "large": large_params()}
  rows = memory_rows(models)
  print(
    f"Optimizer state / parameter bytes (transformer: {nbytes(task_params) / 2**20:.2f} MB of "
    f"parameters; large: {nbytes(models['large']) / 2**20:.0f} MB):\n"
  )
  columns = [("optimizer", "optimizer", "")]
  for name in models:
    columns += [(f"{name}_ratio", f"{name} state/params", ".2f")]
    columns += [(f"{name}_vs_adamw", f"{name} vs AdamW", ".2f")]
  meta = {"benchmark": "state_memory", "machine": _common.machine_info(), "args": vars(args)}
  extra = {}
  if args.quality:
    print(_common.markdown_table(rows, columns))
    quality, runs = quality_rows(args)
    target = quality[0]["target"]
    print(f"\nQuality on the transformer benchmark (target = AdamW's {target:.4f}):\n")
    print(
      _common.markdown_table(
        quality,
        (
          ("optimizer", "optimizer", ""),
          ("lr", "lr", ".0e"),
          ("final_loss", "final val loss", ".4f"),
          ("steps_to_target", "steps to target", ""),
          ("steps_ratio", "steps vs AdamW", ".2f"),
          ("steps_vs_full", "steps vs full precision", ".2f"),
        ),
      )
    )
    extra = {"quality": quality, "runs": runs}
    print("\nMemory:\n")
  _common.write_results(
    "state_memory", rows, meta, os.path.dirname(args.out), columns, extra, out_path=args.out
  )


if __name__ == "__main__":
  main()
