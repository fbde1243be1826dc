# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Adam vs Newton-CG with Martens' ingredients: time to Adam's best loss, deep digits autoencoder.

Model, data and loss of ``benchmarks/shampoo_autoencoder.py``: 64-256-128-32-8-32-128-256-64
(tanh), squared error summed over the pixels, full-data training loss as the measure (the
Hinton-Salakhutdinov / Martens optimisation benchmark).

* **Adam** (the target): ``optax.adam`` on the warm-up + cosine schedule of
  ``benchmarks/_common.py``, batch 256, ``--adam-steps`` steps, lr grid ``--lrs-adam``; target =
  its best final full-data loss.
* **Newton-CG** rows (``--variant NAME:key=value,...``, defaults in ``RECIPE``): ``sops.newton_cg``
  with a constant learning rate (``lr``), mini-batches of ``batch`` rows, curvature products on
  the first ``curvature_batch`` rows of each batch (``curvature_predict_fn`` /
  ``curvature_output_loss_fn``; ``0``: the whole batch), for ``steps`` steps; every other key is
  passed to ``sops.newton_cg`` (``maxiter``, ``damping``, ``curvature``, ``preconditioner``,
  ``cg_backtracking``, ``progress_tol``, ...). ``preconditioner="fisher"`` gets
  ``sops.fisher_diagonal`` of the curvature batch every step.

Every row: steps to the target (first evaluation at or below it), mean step time over all timed
steps (``lax.scan`` chunks, compile excluded), time to target = steps x mean step, ratios vs Adam.

    python benchmarks/newton_cg_autoencoder.py           # ~5 min on a 2-core CPU
    python benchmarks/newton_cg_autoencoder.py --quick   # smoke test (< 1 min)
    python benchmarks/newton_cg_autoencoder.py --variant "mine:maxiter=30,damping=1.0"

Output: markdown tables on stdout and ``benchmarks/results/newton_cg_autoencoder.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import shampoo_autoencoder as ae  # noqa: E402

import sops  # noqa: E402

# The documented deep-network recipe (docs/newton_cg.md), chosen from the runs of this script.
RECIPE = dict(
  lr=1.0,
  batch=1024,
  curvature_batch=256,
  steps=100,
  curvature="gauss_newton",
  maxiter=40,
  damping=1.0,
  preconditioner="ema",
  cg_backtracking=True,
)
# Newton-CG as a new user first tries it: the documented defaults at batch 1024.
DEFAULTS = dict(lr=1.0, batch=1024, curvature_batch=0, steps=100)
ROW_KEYS = ("lr", "batch", "curvature_batch", "steps")
COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("lr", "lr", ".0e"),
  ("final_loss", "final loss", ".4f"),
  ("steps_to_target", "steps to target", ""),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("time_to_target_s", "time to target s", ".2f"),
  ("steps_ratio", "steps ratio", ".3f"),
  ("per_step_ratio", "per-step ratio", ".1f"),
  ("time_ratio", "time ratio", ".2f"),
)


def newton_step(data, cfg):
  """``(params, state, idx) -> (params, state)``: one Newton-CG step on the batch ``data[idx]``."""
  kw = {k: v for k, v in cfg.items() if k not in ROW_KEYS}
  tx = sops.newton_cg(cfg["lr"], **kw)
  cb = cfg["curvature_batch"]

  def example_loss(p, x):
    return 0.5 * jnp.sum((ae.forward(p, x[None])[0] - x) ** 2)

  def step(params, state, idx):
    x = data[idx]
    value_fn = lambda p: ae.loss_fn(p, x)  # noqa: E731
    extra = dict(
      predict_fn=lambda p: ae.forward(p, x),
      output_loss_fn=lambda z: 0.5 * jnp.mean(jnp.sum((z - x) ** 2, axis=-1)),
    )
    if cb:
      xc = x[:cb]
      extra |= dict(
        curvature_value_fn=lambda p: ae.loss_fn(p, xc),
        curvature_predict_fn=lambda p: ae.forward(p, xc),
        curvature_output_loss_fn=lambda z: 0.5 * jnp.mean(jnp.sum((z - xc) ** 2, axis=-1)),
      )
    if kw.get("preconditioner") == "fisher":
      extra["fisher_diagonal"] = sops.fisher_diagonal(example_loss, params, x[:cb] if cb else x)
    grads = jax.grad(value_fn)(params)
    updates, state = tx.update(grads, state, params, value_fn=value_fn, **extra)
    return optax.apply_updates(params, updates), state

  return tx, step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--adam-steps", type=int, default=1500)
  parser.add_argument("--lrs-adam", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
  parser.add_argument("--eval-every", type=int, default=25, help="Adam steps between evals")
  parser.add_argument("--newton-eval-every", type=int, default=5)
  parser.add_argument(
    "--variant",
    action="append",
    default=[],
    metavar="NAME:KEY=VALUE,...",
    help="extra Newton-CG row: RECIPE updated with these keys (defaults=1 starts from DEFAULTS)",
  )
  parser.add_argument("--no-recipe", action="store_true", help="skip the recipe and defaults rows")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="300 Adam steps, 20 Newton steps")
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "newton_cg_autoencoder.json"
    ),
  )
  args = parser.parse_args()
  if args.quick:
    args.adam_steps, args.lrs_adam = 300, [1e-2]

  data = jnp.asarray(load_digits().data.astype(np.float32) / 16.0)
  params = ae.init_params(jax.random.key(args.seed))
  full_loss = jax.jit(lambda p: ae.loss_fn(p, data))

  def sampler(batch, every):
    def sample_chunk(c):
      rng = np.random.default_rng((args.seed, batch, c))
      return rng.integers(0, data.shape[0], size=(every, batch))

    return sample_chunk

  runs = []
  for lr in args.lrs_adam:
    tx = optax.adam(_common.lr_schedule(lr, args.adam_steps))
    res = _common.train(
      lambda p, idx: ae.loss_fn(p, data[idx]),
      params,
      tx,
      sampler(ae.BATCH, args.eval_every),
      args.adam_steps,
      args.eval_every,
      full_loss,
    )
    runs.append(
      {"label": "adam", "lr": lr, "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s, "config": {"batch": ae.BATCH}}
    )
    print(f"adam lr {lr:.0e}: final loss {res.losses[-1]:.4f}, {1e3 * res.mean_step_s:.2f} ms/step")

  rows = [] if args.no_recipe else [("newton_cg defaults", DEFAULTS), ("newton_cg recipe", RECIPE)]
  for spec in args.variant:
    name, kw = _common.parse_variant(spec)
    base = DEFAULTS if kw.pop("defaults", False) else RECIPE
    rows.append((name, {**base, **kw}))
  for name, cfg in rows:
    cfg = dict(cfg)
    if args.quick:
      cfg["steps"] = 20
    every = args.newton_eval_every
    tx, step = newton_step(data, cfg)
    res = _common.train(
      None, params, tx, sampler(cfg["batch"], every), cfg["steps"], every, full_loss, step=step
    )
    runs.append(
      {"label": name, "lr": cfg["lr"], "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s, "config": cfg}
    )
    print(f"{name}: final loss {res.losses[-1]:.4f}, {1e3 * res.mean_step_s:.1f} ms/step ({cfg})")

  summary = _common.summarize(runs, baseline="adam")
  for row in summary:
    row["config"] = next(
      r["config"] for r in runs if r["label"] == row["optimizer"] and r["lr"] == row["lr"]
    )
  print(f"\nTarget = Adam's best final full-data loss {summary[0]['target']:.4f}:\n")
  meta = {
    "benchmark": "newton_cg_autoencoder",
    "model": {"sizes": ae.SIZES, "activation": "tanh"},
    "data": {"dataset": "sklearn digits", "n": int(data.shape[0])},
    "machine": _common.machine_info(),
    "args": vars(args),
  }
  _common.write_results(
    "newton_cg_autoencoder",
    summary,
    meta,
    os.path.dirname(args.out),
    COLUMNS,
    extra={"runs": runs},
    out_path=args.out,
  )


if __name__ == "__main__":
  main()
