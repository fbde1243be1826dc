# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Helpers shared by the benchmarks: machine info, the timed training loop, time-to-target, output.

Protocol (``/work/shared/STYLE.md``, "Benchmarks"): every optimizer sees the same batches (seeded
numpy sampling outside ``jit``); training runs as ``lax.scan`` over chunks of ``eval_every`` steps
in one jitted function, compiled by a warm-up call that is not timed; each chunk is timed with
``block_until_ready``; evaluation between chunks is not timed. Mean step time = timed seconds /
steps, so steps that recompute Shampoo's roots are included.
"""

from __future__ import annotations

import ast
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax


def machine_info() -> dict[str, Any]:
  """CPU model and cores, library versions, python version, UTC date and the command line."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  versions = {}
  for mod in ("jax", "jaxlib", "optax", "flax", "sops"):
    try:
      versions[mod] = __import__(mod).__version__
    except (ImportError, AttributeError):
      versions[mod] = None
  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "python": platform.python_version(),
    **versions,
    "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),  # LAPACK threads (eigh, QR)
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
  }


def parse_kw(items: Sequence[str] | None) -> dict[str, Any]:
  """``["a=1", "b='x'"]`` -> ``{"a": 1, "b": "x"}`` (values by ``ast.literal_eval``).

  A value that is not a Python literal is kept as a string, so ``inverse_root=eigh`` works as well
  as ``inverse_root='"eigh"'``.
  """
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"expected key=value, got {item!r}")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
  """``"name:key=value,key=value"`` -> ``(name, {key: value, ...})``.

  Commas inside brackets or quotes do not split, so ``name:betas=(0.9,0.99)`` works.
  """
  name, sep, rest = spec.partition(":")
  if not name.strip():
    raise ValueError(f"expected name:key=value,..., got {spec!r}")
  items, depth, quote, cur = [], 0, None, ""
  for ch in rest if sep else "":
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      items.append(cur)
      cur = ""
      continue
    cur += ch
  if cur.strip():
    items.append(cur)
  return name.strip(), parse_kw(items)


def time_to_target(
  steps_axis: Sequence[int],
  losses: Sequence[float],
  target: float,
  mean_step_s: float,
) -> tuple[int | None, float | None]:
  """First evaluated step whose loss is ``<= target`` and that step times ``mean_step_s``.

  Returns ``(None, None)`` when the target is never reached (NaN losses never reach it).
  """
  losses = np.asarray(losses, dtype=np.float64)
  hit = np.nonzero(np.nan_to_num(losses, nan=np.inf) <= target)[0]
  if hit.size == 0:
    return None, None
  step = int(np.asarray(steps_axis)[hit[0]])
  return step, step * mean_step_s


class TrainResult(NamedTuple):
  steps: np.ndarray  # evaluated steps, 0, eval_every, ..., steps; shape=(steps // eval_every + 1,)
  losses: np.ndarray  # eval_fn (its "loss" entry if it returns a dict) at those steps, float64
  seconds: float  # timed training seconds (no compile, no evaluation)
  mean_step_s: float  # seconds / steps
  chunk_seconds: np.ndarray  # seconds of each chunk of eval_every steps
  params: Any  # final parameters
  opt_state: Any  # final optimizer state
  metrics: dict[str, np.ndarray]  # every entry eval_fn returned, at the evaluated steps


def make_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """``(params, opt_state, batch) -> (params, opt_state)``: one gradient step of ``tx``."""

  def step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def scan_chunk(step: Callable) -> Callable:
  """``(params, opt_state, batches) -> (params, opt_state)``: ``step`` over a chunk of batches
  stacked on a leading axis, one jitted ``lax.scan`` (how every benchmark trains and times)."""

  @jax.jit
  def chunk(params, opt_state, batches):
    def body(carry, batch):
      return step(*carry, batch), None

    return jax.lax.scan(body, (params, opt_state), batches)[0]

  return chunk


def train(
  loss_fn: Callable,
  params: Any,
  tx: optax.GradientTransformation,
  sample_chunk: Callable[[int], Any],
  steps: int,
  eval_every: int,
  eval_fn: Callable[[Any], float | dict[str, float]],
  progress: Callable[[int], None] | None = None,
  step: Callable | None = None,
) -> TrainResult:
  """Trains ``steps`` steps with ``tx``, evaluating every ``eval_every`` steps.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, differentiated w.r.t. ``params``.
    params: initial parameters.
    tx: the optimizer.
    sample_chunk: ``sample_chunk(c)`` returns the batches of chunk ``c`` stacked on a leading axis
      of length ``eval_every`` (numpy, seeded by ``c`` so every optimizer sees the same batches).
    steps: number of steps, a multiple of ``eval_every``.
    eval_every: steps per chunk (one ``lax.scan``) and between evaluations.
    eval_fn: ``eval_fn(params)``, called at step 0 and after every chunk (not timed): a float, or a
      dict of floats whose ``"loss"`` entry is the loss (the others are kept in ``metrics``).
    progress: optional callback, called with the number of chunks done.
    step: optional ``(params, opt_state, batch) -> (params, opt_state)`` replacing
      :func:`make_step` (for optimizers that need more than the gradient, such as Newton-CG).

  Returns:
    A :class:`TrainResult`.
  """
  if steps % eval_every:
    raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({eval_every})")
  chunk = scan_chunk(step or make_step(loss_fn, tx))
  opt_state = tx.init(params)
  first = sample_chunk(0)
  jax.block_until_ready(chunk(params, opt_state, first))  # compile; result discarded

  def evaluate(params):
    out = eval_fn(params)
    return {k: float(v) for k, v in out.items()} if isinstance(out, dict) else {"loss": float(out)}

  evals, chunk_seconds = [evaluate(params)], []
  for c in range(steps // eval_every):
    batches = first if c == 0 else sample_chunk(c)
    batches = jax.block_until_ready(jax.device_put(batches))  # transfer outside the timing
    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(chunk(params, opt_state, batches))
    chunk_seconds.append(time.perf_counter() - t0)
    evals.append(evaluate(params))
    if progress is not None:
      progress(c + 1)
  seconds = float(np.sum(chunk_seconds))
  metrics = {k: np.asarray([e[k] for e in evals], dtype=np.float64) for k in evals[0]}
  return TrainResult(
    steps=np.arange(len(evals)) * eval_every,
    losses=metrics["loss"],
    seconds=seconds,
    mean_step_s=seconds / steps,
    chunk_seconds=np.asarray(chunk_seconds),
    params=params,
    opt_state=opt_state,
    metrics=metrics,
  )


def per_step_times(
  loss_fn: Callable,
  params: Any,
  tx: optax.GradientTransformation,
  sample_chunk: Callable[[int], Any],
  n: int,
  warmup: int = 2,
) -> np.ndarray:
  """Seconds of each of ``n`` single jitted steps, each timed with ``block_until_ready``.

  Starts from ``params`` and ``tx.init(params)``; the first ``warmup`` steps (the first compiles)
  are run but not timed, so step ``warmup + i`` of the optimizer is entry ``i``. Batches come from
  ``sample_chunk(0), sample_chunk(1), ...`` in order. Single dispatches cost more than steps inside
  a ``lax.scan``; compare max/mean and p50 rather than the absolute mean with :func:`train`'s.
  """
  step = jax.jit(make_step(loss_fn, tx))
  opt_state = tx.init(params)
  batches, c = [], 0
  while len(batches) < warmup + n:
    chunk = sample_chunk(c)
    leaves, treedef = jax.tree.flatten(chunk)
    batches += [jax.tree.unflatten(treedef, [x[i] for x in leaves]) for i in range(len(leaves[0]))]
    c += 1
  batches = [jax.device_put(b) for b in batches[: warmup + n]]
  times = []
  for i, batch in enumerate(batches):
    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(step(params, opt_state, batch))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return np.asarray(times)


def step_time_summary(times: np.ndarray) -> dict[str, float]:
  """Mean, p50 and max step milliseconds and max/mean of :func:`per_step_times`' output."""
  ms = 1e3 * np.asarray(times)
  return {
    "mean_ms": float(ms.mean()),
    "p50_ms": float(np.median(ms)),
    "max_ms": float(ms.max()),
    "max_over_mean": float(ms.max() / ms.mean()),
  }


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None  # JSON has no NaN/inf
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if x is None or isinstance(x, (int, str)):
    return x
  return str(x)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
  """``columns``: ``(key, header, format)``; a missing or ``None`` value prints as ``-``."""
  lines = [
    "| " + " | ".join(h for _, h, _ in columns) + " |",
    "|" + "|".join("---:" if f else ":---" for _, _, f in columns) + "|",
  ]
  for row in rows:
    cells = []
    for key, _, fmt in columns:
      v = row.get(key)
      cells.append("-" if v is None else format(v, fmt) if fmt else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(
  name: str,
  rows: Sequence[dict[str, Any]],
  meta: dict[str, Any],
  out_dir: str,
  columns: Sequence[tuple[str, str, str]] | None = None,
  extra: dict[str, Any] | None = None,
  out_path: str | None = None,
) -> str:
  """Writes ``{"meta": meta, "rows": rows, **extra}`` as JSON and prints a markdown table.

  The JSON keeps every raw number (loss curves included); the table shows ``columns``
  (default: every scalar key of the first row). Returns the JSON path, ``out_path`` if given,
  else ``out_dir/name.json``.
  """
  if columns is None:
    columns = [(k, k, "") for k, v in rows[0].items() if np.ndim(v) == 0] if rows else []
  print(markdown_table(rows, columns))
  path = out_path or os.path.join(out_dir, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(_jsonable({"meta": meta, "rows": list(rows), **(extra or {})}), f, indent=1)
  print(f"\nwrote {path}")
  return path


# ----------------------------------------------------------------------------------------------
# The optimizer comparison shared by the time-to-target benchmarks.

OPTIMIZERS = ("adamw", "shampoo", "soap", "muon")


def add_protocol_args(
  parser, *, steps: int, eval_every: int, lrs: dict[str, Sequence[float]], out: str
) -> None:
  """Adds the CLI every time-to-target benchmark shares (defaults from the script)."""
  parser.add_argument("--steps", type=int, default=steps, help="training steps per run")
  parser.add_argument("--eval-every", type=int, default=eval_every, help="steps between evals")
  for kind in OPTIMIZERS:
    grid = list(lrs.get(kind, lrs["adamw"]))
    parser.add_argument(
      f"--lrs-{kind}", type=float, nargs="+", default=grid, help=f"{kind} lr grid"
    )
  parser.add_argument("--weight-decay", type=float, default=0.01, help="for every optimizer")
  parser.add_argument(
    "--optimizers",
    default=",".join(OPTIMIZERS),
    help=f"comma-separated subset of {','.join(OPTIMIZERS)}",
  )
  parser.add_argument(
    "--shampoo-kw",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="extra sops.shampoo keyword (value by ast.literal_eval); repeatable",
  )
  parser.add_argument(
    "--soap-kw", action="append", default=[], metavar="KEY=VALUE", help="extra sops.soap keyword"
  )
  parser.add_argument(
    "--muon-kw", action="append", default=[], metavar="KEY=VALUE", help="extra muon keyword"
  )
  parser.add_argument(
    "--variant",
    action="append",
    default=[],
    metavar="NAME:KEY=VALUE,...",
    help=(
      "extra row NAME of optimizer=shampoo (default), soap, muon or adamw: that optimizer's "
      "--*-kw plus these keywords (lrs=[...] overrides the grid; steps=N trains N steps on an "
      "N-step schedule, the target staying AdamW's final loss at --steps)"
    ),
  )
  parser.add_argument("--seed", type=int, default=0, help="init and batch-sampling seed")
  parser.add_argument(
    "--timing-steps", type=int, default=60, help="individually timed steps of each best config"
  )
  parser.add_argument("--out", default=out, help="JSON path (PNG written next to it)")
  parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def lr_schedule(lr: float, steps: int, warmup_frac: float = 0.05) -> optax.Schedule:
  """Linear warm-up over ``warmup_frac`` of the steps from 0 to ``lr``, then cosine decay to 0."""
  warmup = max(1, round(warmup_frac * steps))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), 0.0)


def make_optimizer(
  kind: str,
  lr: float,
  steps: int,
  weight_decay: float,
  kw: dict[str, Any],
  muon_dims: Callable | None = None,
) -> optax.GradientTransformation:
  """``adamw``, ``shampoo`` (``sops.shampoo``), ``soap`` (``sops.soap``) or ``muon``
  (``optax.contrib.muon``) on the schedule.

  Weight decay is multiplied by the scheduled learning rate in all three (optax's convention).
  Muon: ``muon_dims`` (``muon_weight_dimension_numbers``) picks the matrices it orthogonalises, the
  rest go to its AdamW branch, given the same ``weight_decay`` (optax defaults that branch to 0).
  """
  schedule = lr_schedule(lr, steps)
  if kind == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay, **kw)
  if kind in ("shampoo", "soap"):
    import sops  # noqa: PLC0415 (only the sops rows need it)

    return getattr(sops, kind)(schedule, weight_decay=weight_decay, **kw)
  if kind == "muon":
    kw = {"adam_weight_decay": weight_decay, "muon_weight_dimension_numbers": muon_dims, **kw}
    return optax.contrib.muon(schedule, weight_decay=weight_decay, **kw)
  raise ValueError(f"unknown optimizer {kind!r}; expected one of {OPTIMIZERS}")


def optimizer_configs(args) -> list[dict[str, Any]]:
  """One dict per run: ``label`` (row name), ``kind``, ``lr``, ``kw``, from the parsed CLI."""
  kinds = [k.strip() for k in args.optimizers.split(",") if k.strip()]
  for k in kinds:
    if k not in OPTIMIZERS:
      raise SystemExit(f"--optimizers: unknown {k!r}; choose from {','.join(OPTIMIZERS)}")
  if "adamw" not in kinds:
    raise SystemExit("--optimizers must include adamw: its best final loss is the target")
  kind_kw = {
    "shampoo": parse_kw(args.shampoo_kw),
    "soap": parse_kw(args.soap_kw),
    "muon": parse_kw(args.muon_kw),
  }
  groups = []  # (label, kind, lrs, kw)
  for k in kinds:
    groups.append((k, k, getattr(args, f"lrs_{k}"), kind_kw.get(k, {})))
  budgets = {}
  for spec in args.variant:
    name, kw = parse_variant(spec)
    kind = kw.pop("optimizer", "shampoo")
    if kind not in OPTIMIZERS:
      raise SystemExit(f"--variant {name}: optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    lrs = kw.pop("lrs", getattr(args, f"lrs_{kind}"))
    budgets[name] = _budget(name, kw.pop("steps", args.steps), args)
    groups.append((name, kind, list(np.atleast_1d(lrs)), {**kind_kw.get(kind, {}), **kw}))
  labels = [g[0] for g in groups]
  if len(set(labels)) != len(labels):
    raise SystemExit(f"duplicate row names {labels}; give each --variant its own name")
  return [
    {
      "label": label,
      "kind": kind,
      "lr": float(lr),
      "kw": kw,
      "budget": budgets.get(label, args.steps),
    }
    for label, kind, lrs, kw in groups
    for lr in lrs
  ]


def _budget(name: str, steps: Any, args) -> int:
  """A ``--variant``'s ``steps=N``: its schedule's length and training budget (a multiple of
  ``--eval-every``, at most ``--steps``); the target stays AdamW's final loss at ``--steps``."""
  every = getattr(args, "eval_every", 1)
  if not isinstance(steps, int) or not 0 < steps <= args.steps or steps % every:
    raise SystemExit(
      f"--variant {name}: steps must be a multiple of --eval-every ({every}) in "
      f"(0, --steps={args.steps}], got {steps!r}"
    )
  return steps


def _final(losses) -> float:
  x = float(np.asarray(losses)[-1])
  return x if math.isfinite(x) else math.inf


def summarize(runs: Sequence[dict[str, Any]], baseline: str = "adamw") -> list[dict[str, Any]]:
  """Best learning rate per label (by final loss), time-to-target and ratios vs ``baseline``.

  ``runs``: dicts with ``label``, ``lr``, ``steps`` (eval axis), ``losses``, ``mean_step_s`` and
  optionally ``kind``. The target is the baseline's best final loss over every run of the baseline
  (label or ``kind`` equal to ``baseline``: its learning-rate grid and any ``--variant`` with
  ``optimizer=adamw``, so the baseline gets the same tuning as the others); that run's row comes
  first and the ratios are against it. Steps to target is the first evaluated step with loss
  ``<= target`` for every row, the baseline included (its last step unless its curve dipped below
  its final value earlier).
  """
  best = {}
  for r in runs:
    if r["label"] not in best or _final(r["losses"]) < _final(best[r["label"]]["losses"]):
      best[r["label"]] = r
  base_labels = [k for k, r in best.items() if baseline in (k, r.get("kind"))]
  base_label = min(base_labels, key=lambda k: _final(best[k]["losses"]))
  target = _final(best[base_label]["losses"])
  rows = []
  for label, r in best.items():
    hit, sec = time_to_target(r["steps"], r["losses"], target, r["mean_step_s"])
    rows.append(
      {
        "optimizer": label,
        "lr": r["lr"],
        "final_loss": float(r["losses"][-1]),
        "target": target,
        "steps_to_target": hit,
        "mean_step_ms": 1e3 * r["mean_step_s"],
        "time_to_target_s": sec,
      }
    )
    for k, v in (r.get("metrics") or {}).items():
      if k != "loss":
        rows[-1][f"final_{k}"] = float(np.asarray(v)[-1])
  rows.sort(key=lambda row: row["optimizer"] != base_label)  # baseline first, then CLI order
  base = rows[0]
  for row in rows:
    ok = row["steps_to_target"] is not None and base["steps_to_target"]
    row["steps_ratio"] = row["steps_to_target"] / base["steps_to_target"] if ok else None
    row["per_step_ratio"] = row["mean_step_ms"] / base["mean_step_ms"]
    row["time_ratio"] = row["time_to_target_s"] / base["time_to_target_s"] if ok else None
  return rows


SUMMARY_COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("lr", "best lr", ".2g"),
  ("final_loss", "final loss", ".4f"),
  ("steps_to_target", "steps to target", ""),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("time_to_target_s", "time to target s", ".2f"),
  ("steps_ratio", "steps ratio", ".2f"),
  ("per_step_ratio", "per-step ratio", ".2f"),
  ("time_ratio", "time ratio", ".2f"),
  ("p50_ms", "p50 step ms*", ".2f"),
  ("max_ms", "max step ms*", ".2f"),
  ("max_over_mean", "max/mean*", ".2f"),
)
GRID_COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("lr", "lr", ".2g"),
  ("final_loss", "final loss", ".4f"),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("seconds", "timed s", ".1f"),
)


def plot_curves(runs: Sequence[dict[str, Any]], summary, path: str, ylabel: str) -> None:
  """Loss of each label's best run against steps and against cumulative timed seconds, one PNG."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for row in summary:
    r = next(r for r in runs if r["label"] == row["optimizer"] and r["lr"] == row["lr"])
    name = f"{row['optimizer']} (lr {row['lr']:.2g})"
    axes[0].plot(r["steps"], r["losses"], label=name)
    axes[1].plot(np.concatenate([[0.0], np.cumsum(r["chunk_seconds"])]), r["losses"], label=name)
  for ax, xlabel in zip(axes, ("step", "timed training seconds"), strict=True):
    ax.axhline(summary[0]["target"], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(ylabel)
  axes[0].legend()
  axes[0].set_yscale("log")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f"wrote {path}")


def compare(
  args,
  name: str,
  run_one: Callable[[optax.GradientTransformation, int], TrainResult],
  time_steps: Callable[[optax.GradientTransformation, int], np.ndarray],
  meta: dict[str, Any],
  muon_dims: Callable | None = None,
  ylabel: str = "loss",
  extra_columns: Sequence[tuple[str, str, str]] = (),
) -> list[dict[str, Any]]:
  """Runs the lr grids, the per-step timing of each best config, prints tables, writes JSON/PNG.

  ``run_one(tx, steps)`` trains and returns a :class:`TrainResult`; ``time_steps(tx, n)`` returns
  :func:`per_step_times` of ``n`` steps. ``extra_columns`` are added to the summary table (e.g.
  ``("final_val_acc", "val acc", ".3f")`` for an ``eval_fn`` that returns ``val_acc``).
  """
  from tqdm import tqdm  # noqa: PLC0415

  configs = optimizer_configs(args)

  def build(cfg):
    kind, lr, kw = cfg["kind"], cfg["lr"], cfg["kw"]
    return make_optimizer(kind, lr, cfg["budget"], args.weight_decay, kw, muon_dims)

  for cfg in configs:  # fail on a bad --shampoo-kw / --variant before any training
    build(cfg)
  runs = []
  for cfg in (bar := tqdm(configs, desc=name, unit="run")):
    bar.set_postfix_str(f"{cfg['label']} lr {cfg['lr']:.2g}")
    res = run_one(build(cfg), cfg["budget"])
    run = {**cfg, "steps": res.steps, "losses": res.losses, "mean_step_s": res.mean_step_s}
    run.update(seconds=res.seconds, chunk_seconds=res.chunk_seconds, metrics=res.metrics)
    runs.append(run)
  summary = summarize(runs)
  for row in summary:
    cfg = next(c for c in configs if c["label"] == row["optimizer"] and c["lr"] == row["lr"])
    if args.timing_steps > 0:
      times = time_steps(build(cfg), args.timing_steps)
      row.update(step_time_summary(times), step_times_s=times)
    row["kw"] = cfg["kw"]

  grid = [
    {"optimizer": r["label"], "lr": r["lr"], "final_loss": float(r["losses"][-1]), **r}
    | {"mean_step_ms": 1e3 * r["mean_step_s"]}
    for r in runs
  ]
  print("\nLearning-rate grid (final loss after all steps):\n")
  print(markdown_table(grid, GRID_COLUMNS))
  print(
    f"\nBest lr per optimizer; target = the best final loss of any adamw run "
    f"({summary[0]['optimizer']}) {summary[0]['target']:.4f}; "
    f"* = {args.timing_steps} individually jitted steps (dispatch overhead included):\n"
  )
  path = write_results(
    name,
    summary,
    {**meta, "machine": machine_info(), "args": vars(args)},
    os.path.dirname(args.out),
    columns=(*SUMMARY_COLUMNS[:3], *extra_columns, *SUMMARY_COLUMNS[3:]),
    extra={"runs": runs},
    out_path=args.out,
  )
  if not args.no_plot:
    plot_curves(runs, summary, os.path.splitext(path)[0] + ".png", ylabel)
  return summary
