# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Asynchronous Shampoo roots on a 2-core CPU: one core trains, the other computes the roots.

The process runs two XLA CPU devices, each single-threaded (``XLA_FLAGS`` below, set before JAX
is imported), so that device 0 plays the accelerator and device 1 the host of the seed paper's
pipeline. Model, data and schedule are those of ``benchmarks/transformer_lm.py`` (2-layer
d=128 character transformer, batch 16 x 64, warm-up + cosine, weight decay 0.01).

Two parts:

Caveat (measured 2026-12-06, ``docs/shampoo.md``): in this JAX version XLA's CPU runtime spreads
one device's step over both cores whatever these flags say (a training loop alone used 1.88
cores), so on a 2-core machine the root device takes its time from the training device and the
asynchronous rows cannot beat the synchronous one here; ``--root-process`` (below) avoids it.

1. **Step time** (``--timing-steps`` steps after a warm-up that compiles everything, one Python
   loop of jitted steps for every row, parameters and state donated unless ``--no-donate``, mean
   over all timed steps, root steps included, ended by ``block_until_ready``; roots still in
   flight at the end are not waited for): AdamW;
   synchronous ``sops.shampoo`` (roots inside the step on device 0) with ``eigh`` (its CPU
   default) and with coupled Newton (CN); ``sops.async_shampoo`` with roots on device 1 for each
   ``--timing-staleness`` (``eigh`` roots, one block at a time: XLA's batched CPU ``eigh`` splits
   the stack over the process' shared intra-op pool and so waits for device 0's step; measured
   on a 27x128x128 stack next to a matmul loop, batched it finished only with the loop, one at a
   time it overlapped; ``async_shampoo`` sets this itself when both devices are CPUs).
2. **Quality cost of staleness** (``lax.scan`` training as in ``transformer_lm.py``): AdamW over
   its lr grid sets the target (its best final validation loss); ``sops.shampoo`` at
   ``--lr-shampoo`` with ``root_staleness`` s in ``--staleness`` (0 = synchronous): final
   validation loss and steps to the target. ``root_staleness=s`` is the pure-``jit`` form of the
   pipeline (the tests check both give the same trajectory bit for bit), so these runs give the
   async pipeline's losses without its timing noise.

Time to target of the async rows = steps to target at that staleness x the async mean step.

    python benchmarks/shampoo_async_roots.py            # ~15 min on a 2-core CPU
    python benchmarks/shampoo_async_roots.py --quick    # smoke test (~2 min)
    python benchmarks/shampoo_async_roots.py --accelerator  # train on the GPU, roots on the host

With ``--root-process`` the XLA CPU flags are left alone too: this process (every row's
training) is pinned to core 0 before JAX starts, and ``async_shampoo`` computes the roots in a
``sops.RootProcess`` pinned to core 1, the CPU stand-in for the paper's host.

With ``--accelerator`` the XLA CPU flags are left alone: device 0 of the default backend (a
GPU) trains and the last host CPU device computes the roots (the seed paper's setting); the
synchronous rows compute ``eigh`` and coupled-Newton roots on the GPU inside the step.

Output: markdown tables on stdout, ``benchmarks/results/shampoo_async_roots.json``.
"""

from __future__ import annotations

import os
import sys

ACCELERATOR = "--accelerator" in sys.argv  # train on jax.devices()[0], roots on the host CPU
PROCESS = "--root-process" in sys.argv  # train on core 0, roots in a process on core 1
if PROCESS:  # before JAX starts, so that every XLA thread of this process stays on core 0
  os.sched_setaffinity(0, {0})
elif not ACCELERATOR:
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=2"
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  )

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import transformer_lm as lm  # noqa: E402

import sops  # noqa: E402

TIMING_COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("per_step_ratio", "vs AdamW", ".2f"),
  ("steps_to_target", "steps to target", ""),
  ("time_ratio", "time to target vs AdamW", ".2f"),
  ("root_compute_ms", "root computation ms", ".1f"),
  ("wait_ms_per_step", "wait ms/step", ".2f"),
)


def timed_loop(step, params, opt_state, batches, roots, warmup: int) -> tuple[float, dict]:
  """Mean seconds per step over ``batches[warmup:]``, ``roots(opt_state)`` after every step;
  and for a pipeline the mean seconds of its root computations and of waiting per timed step."""
  for i, batch in enumerate(batches):
    if i == warmup:
      jax.block_until_ready((params, opt_state))
      t0 = time.perf_counter()
      done, waited = (0, 0.0) if roots is None else (len(roots.compute_seconds), roots.wait_seconds)
    params, opt_state = step(params, opt_state, batch)
    if roots is not None:
      opt_state = roots(opt_state)
  jax.block_until_ready((params, opt_state))
  timed = len(batches) - warmup
  mean = (time.perf_counter() - t0) / timed
  if roots is None:
    return mean, {}
  return mean, {
    "root_compute_ms": 1e3 * float(np.mean(roots.compute_seconds[done:] or [np.nan])),
    "wait_ms_per_step": 1e3 * (roots.wait_seconds - waited) / timed,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000, help="training steps per quality run")
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--lrs-adamw", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
  parser.add_argument("--lr-shampoo", type=float, default=3e-3, help="its best lr, all s")
  parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 10, 50, 100])
  parser.add_argument("--timing-staleness", type=int, nargs="+", default=[10, 50])
  parser.add_argument("--timing-steps", type=int, default=300, help="timed steps per row")
  parser.add_argument(
    "--root-process",
    action="store_true",
    help="train pinned to core 0 (every row), async roots in a sops.RootProcess on core 1",
  )
  parser.add_argument(
    "--no-donate", action="store_true", help="time steps without donating params and state"
  )
  parser.add_argument(
    "--timing-stagger",
    action="store_true",
    help="also time async_shampoo with stagger_roots=True (one chunk per step) per staleness",
  )
  parser.add_argument("--repeats", type=int, default=2, help="timings per row (mean reported)")
  parser.add_argument("--precondition-every", type=int, default=50)
  parser.add_argument("--weight-decay", type=float, default=0.01)
  parser.add_argument("--min-count", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="60 steps, 2 staleness values")
  parser.add_argument("--timing-only", action="store_true", help="skip the quality runs")
  parser.add_argument(
    "--accelerator",
    action="store_true",
    help="train on jax.devices()[0] (a GPU), roots on the last host CPU device",
  )
  parser.add_argument(
    "--shampoo-kw",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="extra sops.shampoo keyword for every Shampoo row (sync, async and quality runs)",
  )
  parser.add_argument(
    "--quality-from", default=None, help="JSON of an earlier run: reuse its quality runs"
  )
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "shampoo_async_roots.json"
    ),
  )
  args = parser.parse_args()
  if args.quick:
    args.steps, args.eval_every, args.lrs_adamw = 60, 20, [3e-3]
    args.staleness, args.timing_staleness, args.timing_steps = [0, 10], [10], 40
    args.repeats = 1
    args.precondition_every = 20
  if args.accelerator:
    train_dev, root_dev = jax.devices()[0], jax.devices("cpu")[-1]
  elif args.root_process:
    train_dev, root_dev = jax.devices()[0], None  # a fresh sops.RootProcess per row
  else:
    train_dev, root_dev = jax.devices()
  every = args.precondition_every

  task = lm.make_task(args.seed, args.min_count, args.eval_every, train_dev)
  params, loss_fn, val_loss, sample_chunk = task.params, task.loss_fn, task.val_loss, task.sample
  sha = task.sha

  schedule = functools.partial(_common.lr_schedule, steps=args.steps)
  shampoo_kw = dict(weight_decay=args.weight_decay, precondition_every=every)
  shampoo_kw |= _common.parse_kw(args.shampoo_kw)

  # 1. Step time: the same loop of single jitted steps for every row.
  warmup = 10 + every + max(args.timing_staleness) + 2  # compiles roots and installs
  n = warmup + args.timing_steps
  chunks = [sample_chunk(c) for c in range(-(-n // args.eval_every))]
  batches = [jax.device_put(b, train_dev) for c in chunks for b in c][:n]
  lr = args.lr_shampoo
  makers = {
    "adamw": lambda: (optax.adamw(schedule(lr), weight_decay=args.weight_decay), None),
    "shampoo (sync, eigh)": lambda: (
      sops.shampoo(schedule(lr), inverse_root="eigh", **shampoo_kw),
      None,
    ),
    "shampoo (sync, CN)": lambda: (
      sops.shampoo(schedule(lr), inverse_root="coupled_newton", **shampoo_kw),
      None,
    ),
  }

  def root_device():
    return sops.RootProcess(cpus={1}) if args.root_process else root_dev

  for s in args.timing_staleness:
    makers[f"async_shampoo s={s}"] = lambda s=s, **kw: sops.async_shampoo(
      schedule(lr), root_staleness=s, root_device=root_device(), **shampoo_kw, **kw
    )
    if args.timing_stagger:
      makers[f"async_shampoo s={s}, staggered"] = functools.partial(
        makers[f"async_shampoo s={s}"], stagger_roots=True
      )
  times = {label: [] for label in makers}
  extras = {label: [] for label in makers}
  for rep in range(args.repeats):  # rows interleaved, so drifts of the machine hit all alike
    for label, make in makers.items():
      tx, roots = make()
      # Parameters and state donated, as a training loop does: the step updates them in place
      # instead of copying every unchanged buffer (statistics, roots) into new ones.
      donate = () if args.no_donate else (0, 1)
      step = jax.jit(_common.make_step(loss_fn, tx), donate_argnums=donate)
      start = jax.tree.map(jnp.copy, params)  # params is reused by the next row
      mean, extra = timed_loop(step, start, tx.init(start), batches, roots, warmup)
      if roots is not None:
        roots.close()  # waits, stops its worker thread and closes a sops.RootProcess
      times[label].append(1e3 * mean)
      extras[label].append(extra)
      print(f"repeat {rep}: {label}: {times[label][-1]:.2f} ms/step {extra}", flush=True)
  rows = [
    {"optimizer": k, "mean_step_ms": float(np.mean(v)), "repeats_ms": v}
    | {key: float(np.mean([e[key] for e in extras[k]])) for key in extras[k][0]}
    for k, v in times.items()
  ]
  base = rows[0]["mean_step_ms"]
  for r in rows:
    r["per_step_ratio"] = r["mean_step_ms"] / base

  meta = {
    "benchmark": "shampoo_async_roots",
    "machine": _common.machine_info(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "train_device": str(train_dev),
    "root_device": str(root_dev),
    "args": vars(args),
    "data_sha256": sha,
    "timing": rows,
  }
  if args.timing_only:
    out_dir = os.path.dirname(args.out)  # the timing table, with timing-only settings
    _common.write_results("async", rows, meta, out_dir, TIMING_COLUMNS, out_path=args.out)
    return
  # 2. Quality: AdamW's grid sets the target, Shampoo at each staleness (root_staleness=s).
  grid = [("adamw", lr_a, None) for lr_a in args.lrs_adamw]
  grid += [(f"shampoo s={s}", lr, s) for s in args.staleness]
  runs = []
  if args.quality_from:  # the quality runs of an earlier full run (deterministic on one machine)
    with open(args.quality_from, encoding="utf-8") as f:
      runs = json.load(f)["runs"]
    grid = []
  for label, lr_i, s in grid:
    if s is None:
      tx = optax.adamw(schedule(lr_i), weight_decay=args.weight_decay)
    else:
      tx = sops.shampoo(schedule(lr_i), root_staleness=s, **shampoo_kw)
    res = _common.train(loss_fn, params, tx, sample_chunk, args.steps, args.eval_every, val_loss)
    print(f"{label} lr {lr_i:.0e}: final val loss {res.losses[-1]:.4f}", flush=True)
    runs.append(
      {"label": label, "lr": lr_i, "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s}
    )
  quality = _common.summarize(runs)
  sync = next(r for r in quality if r["optimizer"] == "shampoo s=0")
  for r in quality:
    ok = r["steps_to_target"] is not None and sync["steps_to_target"]
    r["steps_vs_sync"] = r["steps_to_target"] / sync["steps_to_target"] if ok else None
  for r in rows:
    if r["optimizer"].startswith("async_shampoo"):
      s = int(r["optimizer"].split("=")[1].split(",")[0])
      q = next((x for x in quality if x["optimizer"] == f"shampoo s={s}"), None)
      hit = None if q is None else q["steps_to_target"]
      r["steps_to_target"] = hit
      adam_steps = quality[0]["steps_to_target"]
      if hit is not None and adam_steps:
        r["time_ratio"] = hit * r["mean_step_ms"] / (adam_steps * base)

  print(
    f"\nStep time, device 0 trains, device 1 computes async roots ({args.timing_steps} steps):\n"
  )
  print(_common.markdown_table(rows, TIMING_COLUMNS))
  print(
    f"\nQuality vs staleness (target = AdamW's best final val loss {quality[0]['target']:.4f}):\n"
  )
  quality_cols = (
    ("optimizer", "optimizer", ""),
    ("lr", "lr", ".0e"),
    ("final_loss", "final val loss", ".4f"),
    ("steps_to_target", "steps to target", ""),
    ("steps_ratio", "steps vs AdamW", ".2f"),
    ("steps_vs_sync", "steps vs sync Shampoo", ".2f"),
  )
  _common.write_results(
    "shampoo_async_roots",
    quality,
    meta,
    os.path.dirname(args.out),
    quality_cols,
    extra={"runs": runs},
    out_path=args.out,
  )


if __name__ == "__main__":
  main()
