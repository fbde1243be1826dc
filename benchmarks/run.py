# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""One command for every benchmark: the scenario table (as in the seed papers) and the speed suite.

    python -m benchmarks.run --suite scenarios            # every scenario, lr grid, 3 seeds
    python -m benchmarks.run --suite scenarios --quick    # first lr, 1 seed, a quarter of the steps
    python -m benchmarks.run --suite performance [--quick]  # the time-to-target scripts
    python -m benchmarks.run --suite all --scenarios regression,cnn

Scenarios are the examples (``examples/regression.py``, ``vae.py``, ...), each trained with AdamW,
SGD with momentum, Muon, Newton-CG, Shampoo and SOAP by ``examples/_harness.py``. Protocol per
scenario and optimizer: every learning rate of the scenario's grid on seed 0, the best (lowest
final validation loss) then on the other seeds. Target = AdamW's mean final validation loss over
seeds at its best learning rate; steps and timed seconds (compilation and evaluation excluded)
to reach it per seed. Stability = non-finite training steps over all runs of that optimizer, and
the spread (standard deviation) over seeds of the final metric.

Writes ``results/<date>/`` (or ``--out``): ``scenarios.json`` (machine, versions, date, every
curve), ``scenarios.md`` (the tables), one ``<scenario>.png`` per scenario (mean validation loss
against steps and against seconds), and for the performance suite each script's JSON and PNG.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import _common  # noqa: E402
import _harness  # noqa: E402

DOCS_RESULTS = os.path.join(ROOT, "docs", "results")
SCENARIOS = (
  "regression",
  "vae",
  "bayesian_nn",
  "cnn",
  "resnet",
  "transformer",
  "transfer_last_layer",
)
# (script, whether its --out is a folder rather than a JSON path); --quick is passed through.
PERFORMANCE = (
  ("mlp_classifier", False),
  ("shampoo_autoencoder", False),
  ("transformer_lm", False),
  ("shampoo_step_cost", True),
  ("newton_cg_minimize", True),
  ("newton_cg_autoencoder", False),
  ("newton_cg_cnn", False),
  ("shampoo_async_roots", False),
  ("state_memory", False),
  ("sharded_state_memory", False),
  ("comm_volume", False),
  ("newton_cg_scaling", False),
)


def run_scenario(
  name: str, seeds: int, quick: bool, optimizers: Sequence[str] | None
) -> dict[str, Any]:
  """The learning-rate grid on seed 0 and the best learning rate on the other seeds."""
  scenario = importlib.import_module(name).scenario()
  scale = 0.25 if quick else 1.0
  runs = []
  for opt in optimizers or scenario.optimizers:
    if opt not in scenario.optimizers:
      continue
    grid = scenario.lrs[opt][:1] if quick else scenario.lrs[opt]
    first = [_harness.train(scenario, opt, lr, 0, scale) for lr in grid]
    best = min(first, key=lambda r: _harness.final(r, "val_loss"))
    rest = [_harness.train(scenario, opt, best["lr"], s, scale) for s in range(1, seeds)]
    for r in first:
      r["best"] = r is best
    runs += first + [{**r, "best": True} for r in rest]
    print(f"  {name} {opt}: best lr {best['lr']:.0e}", flush=True)
  return {
    "name": name,
    "title": scenario.title,
    "metric": scenario.metric,
    "higher_is_better": scenario.higher_is_better,
    "runs": runs,
  }


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per optimizer: means over seeds at its best learning rate, target hits, stability."""
  by_opt: dict[str, list] = {}
  for r in result["runs"]:
    by_opt.setdefault(r["optimizer"], []).append(r)
  best = {o: [r for r in rs if r["best"]] for o, rs in by_opt.items()}
  base = best.get(_harness.BASELINE)
  target = float(np.mean([_harness.final(r, "val_loss") for r in base])) if base else None
  rows = []
  for opt, rs in sorted(best.items(), key=lambda kv: kv[0] != _harness.BASELINE):
    hits = [_harness.steps_to_target(r, target) for r in rs] if target is not None else []
    reached = [h for h in hits if h[0] is not None]
    metric = [_harness.final(r, result["metric"]) for r in rs]
    rows.append(
      {
        "optimizer": opt,
        "lr": rs[0]["lr"],
        "seeds": len(rs),
        "train_loss": float(np.mean([_harness.final(r, "train_loss") for r in rs])),
        "val_loss": float(np.mean([_harness.final(r, "val_loss") for r in rs])),
        "metric": float(np.mean(metric)),
        "metric_std": float(np.std(metric)),
        "steps": rs[0]["steps"][-1],
        "reached": f"{len(reached)}/{len(rs)}",
        "steps_to_target": float(np.mean([h[0] for h in reached])) if reached else None,
        "seconds_to_target": float(np.mean([h[1] for h in reached])) if reached else None,
        "timed_s": float(np.mean([r["timed_s"] for r in rs])),
        "mean_step_ms": float(np.mean([r["mean_step_ms"] for r in rs])),
        "nonfinite_steps": int(sum(r["nonfinite_steps"] for r in by_opt[opt])),
        "target": target,
      }
    )
  return rows


def columns(metric: str) -> list[tuple[str, str, str]]:
  cols = [
    ("optimizer", "optimizer", ""),
    ("lr", "best lr", ".0e"),
    ("train_loss", "train loss", ".4g"),
    ("val_loss", "val loss", ".4g"),
  ]
  if metric != "val_loss":
    cols.append(("metric", metric.replace("_", " "), ".4g"))
  return cols + [
    ("metric_std", "spread (std)", ".2g"),
    ("steps", "steps", "d"),
    ("reached", "seeds at target", ""),
    ("steps_to_target", "steps to target", ".0f"),
    ("seconds_to_target", "s to target", ".2f"),
    ("mean_step_ms", "ms/step", ".2f"),
    ("nonfinite_steps", "non-finite steps", "d"),
  ]


def plot(result: dict[str, Any], path: str) -> None:
  """Mean validation loss over seeds of each optimizer's best learning rate."""
  curves: dict[str, list] = {}
  for r in result["runs"]:
    if r["best"]:
      curves.setdefault(r["optimizer"], []).append(r)
  seeds = max(len(rs) for rs in curves.values())
  mean = {
    o: {
      "lr": rs[0]["lr"],
      "steps": rs[0]["steps"],
      "val_loss": np.mean([r["val_loss"] for r in rs], axis=0),
      "seconds": np.mean([r["seconds"] for r in rs], axis=0),
    }
    for o, rs in curves.items()
  }
  scenario = argparse.Namespace(title=f"{result['title']} (mean of {seeds} seeds)")
  _harness.plot(scenario, mean, path)


def scenarios_suite(args, out: str) -> None:
  names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
  for n in names:
    if n not in SCENARIOS:
      raise SystemExit(f"--scenarios: unknown {n!r}; choose from {','.join(SCENARIOS)}")
  optimizers = [o.strip() for o in args.optimizers.split(",")] if args.optimizers else None
  seeds = 1 if args.quick else args.seeds
  results, md = [], []
  for name in names:
    print(f"== scenario {name}", flush=True)
    result = run_scenario(name, seeds, args.quick, optimizers)
    result["summary"] = summarize(result)
    results.append(result)
    target = result["summary"][0]["target"] if result["summary"] else None
    md.append(f"### {result['title']}\n")
    if target is not None:
      md.append(f"Target: {_harness.BASELINE}'s mean final validation loss {target:.4g}.\n")
    md.append(_harness.table(result["summary"], columns(result["metric"])) + "\n")
    md.append(f"![{name}]({name}.png)\n")
    plot(result, os.path.join(out, f"{name}.png"))
  machine = _common.machine_info()
  md.insert(0, _provenance(machine, seeds, args.quick))
  text = "\n".join(md)
  print(text)
  with open(os.path.join(out, "scenarios.md"), "w", encoding="utf-8") as f:
    f.write(text)
  meta = {"machine": machine, "args": vars(args)}
  with open(os.path.join(out, "scenarios.json"), "w", encoding="utf-8") as f:
    json.dump(_common._jsonable({"meta": meta, "scenarios": results}), f, indent=1)
  print(f"wrote {out}/scenarios.md, scenarios.json and one PNG per scenario")
  if args.publish:
    os.makedirs(DOCS_RESULTS, exist_ok=True)
    for name in ["scenarios.md", *(f"{n}.png" for n in names)]:
      shutil.copyfile(os.path.join(out, name), os.path.join(DOCS_RESULTS, name))
    print(f"copied the table and plots to {DOCS_RESULTS} (shown by docs/results.md)")


def _provenance(machine: dict[str, Any], seeds: int, quick: bool) -> str:
  return (
    f"Run of {machine['date_utc'][:10]} on {machine['cpu']} ({machine['cores']} cores, "
    f"{machine['backend']}), JAX {machine['jax']}, optax {machine['optax']}, sops "
    f"{machine['sops']}; {seeds} seed(s){' (--quick)' if quick else ''}; command "
    f"`{machine['command']}`.\n"
  )


def performance_suite(args, out: str) -> None:
  for script, folder in PERFORMANCE:
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", f"{script}.py")]
    cmd += ["--out", out if folder else os.path.join(out, f"{script}.json")]
    cmd += ["--quick"] if args.quick else []
    print("==", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=("scenarios", "performance", "all"), default="scenarios")
  parser.add_argument("--quick", action="store_true", help="first lr, 1 seed, 1/4 of the steps")
  parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
  parser.add_argument("--optimizers", default="", help="comma-separated subset (default: all)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default="", help="output folder (default results/<date>)")
  parser.add_argument(
    "--publish", action="store_true", help="also copy the table and plots to docs/results/"
  )
  args = parser.parse_args(argv)
  out = args.out or os.path.join("results", datetime.date.today().isoformat())
  os.makedirs(out, exist_ok=True)
  if args.suite in ("scenarios", "all"):
    scenarios_suite(args, out)
  if args.suite in ("performance", "all"):
    performance_suite(args, out)


if __name__ == "__main__":
  main()
