# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Adam vs Newton-CG with Martens' ingredients: time to Adam's best loss, deep digits autoencoder.

Model, data and loss of ``benchmarks/shampoo_autoencoder.py``: 64-256-128-32-8-32-128-256-64
(tanh), squared error summed over the pixels, full-data training loss as the measure (the
Hinton-Salakhutdinov / Martens optimisation benchmark).

* **Adam** (the target): ``optax.adam`` on the warm-up + cosine schedule of
  ``benchmarks/_common.py``, batch 256, ``--adam-steps`` steps, lr grid ``--lrs-adam``; target =
  its best final full-data loss.
* **Newton-CG** rows (``--variant NAME:key=value,...``, defaults in ``RECIPE``): ``sops.newton_cg``
  with a constant learning rate ``lr`` (``schedule=cosine``: cosine decay to 0), mini-batches of
  ``batch`` rows, curvature products on the first ``curvature_batch`` rows of each batch
  (``curvature_predict_fn`` / ``curvature_output_loss_fn``; ``0``: the whole batch), for
  ``steps`` steps; every other key is
  passed to ``sops.newton_cg`` (``maxiter``, ``damping``, ``curvature``, ``preconditioner``,
  ``cg_backtracking``, ``progress_tol``, ...). ``preconditioner="fisher"`` gets
  ``sops.fisher_diagonal`` of the curvature batch every step; ``preconditioner="kronecker"``
  gets ``sops.fisher_kronecker`` of the curvature batch with targets sampled from the model
  (``kron_chunks`` chunks), as a function called on the preconditioner's refreshes only.

Every row: steps to the target (first evaluation at or below it), mean step time over all timed
steps (``lax.scan`` chunks, compile excluded), time to target = steps x mean step, ratios vs Adam.

    python benchmarks/newton_cg_autoencoder.py           # ~5 min on a 2-core CPU
    python benchmarks/newton_cg_autoencoder.py --quick   # smoke test (< 1 min)
    python benchmarks/newton_cg_autoencoder.py --variant "mine:maxiter=5,preconditioner_every=5"

Output: markdown tables on stdout and ``benchmarks/results/newton_cg_autoencoder.json``.
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
  maxiter=3,
  damping=1.0,
  preconditioner="kronecker",
  preconditioner_exponent=1.0,
  preconditioner_every=10,
  kron_chunks=16,
  cg_backtracking=True,
)
# Newton-CG as a new user first tries it: the documented defaults at batch 1024.
DEFAULTS = dict(lr=1.0, batch=1024, curvature_batch=0, steps=100)
ROW_KEYS = ("lr", "schedule", "batch", "curvature_batch", "steps", "kron_chunks")
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


def newton_step(predict, output_loss, data, cfg, sampled_fisher=None):
  """``(tx, step)``: ``step(params, state, idx) -> (params, state)`` is one Newton-CG step on the
  rows ``idx`` of ``data`` (a pytree of arrays) with the loss ``output_loss(predict(params, batch),
  batch)``, a mean over the rows; curvature on the first ``cfg["curvature_batch"]`` rows.
  ``sampled_fisher = (sample, row_loss)`` feeds ``preconditioner="kronecker"``: ``sample(outputs,
  key)`` draws targets from the model's predictive distribution and ``row_loss(output, target)``
  is one row's loss, whose gradients :func:`sops.fisher_kronecker` factors (``cfg["kron_chunks"]``
  chunks of the curvature batch)."""
  kw = {k: v for k, v in cfg.items() if k not in ROW_KEYS}
  lr = cfg["lr"]
  if cfg.get("schedule", "constant") == "cosine":
    lr = optax.cosine_decay_schedule(lr, cfg["steps"])
  tx = sops.newton_cg(lr, **kw)
  cb = cfg["curvature_batch"]

  def fns(batch, prefix=""):
    return {
      f"{prefix}value_fn": lambda p: output_loss(predict(p, batch), batch),
      f"{prefix}predict_fn": lambda p: predict(p, batch),
      f"{prefix}output_loss_fn": lambda z: output_loss(z, batch),
    }

  def example_loss(p, row):  # one row, no batch axis (sops.fisher_diagonal vmaps it)
    one = jax.tree.map(lambda a: a[None], row)
    return output_loss(predict(p, one), one)

  def kronecker_factors(params, sub, seed, chunks):
    # Targets sampled from the model's predictive distribution: the Fisher of their per-example
    # losses is the Gauss-Newton matrix (Martens & Grosse 2015).
    sample, row_loss = sampled_fisher
    z0 = jax.lax.stop_gradient(predict(params, sub))
    targets = sample(z0, jax.random.fold_in(jax.random.key(1), seed))

    def sampled_loss(p, row, target):
      one = jax.tree.map(lambda a: a[None], row)
      return row_loss(predict(p, one)[0], target)

    return sops.fisher_kronecker(sampled_loss, params, sub, targets, num_chunks=chunks)

  def step(params, state, idx):
    batch = jax.tree.map(lambda a: a[idx], data)
    sub = jax.tree.map(lambda a: a[:cb], batch) if cb else batch
    extra = fns(batch) | (fns(sub, "curvature_") if cb else {})
    if kw.get("preconditioner") == "fisher":
      extra["fisher_diagonal"] = sops.fisher_diagonal(example_loss, params, sub)
    if kw.get("preconditioner") == "kronecker":
      extra["kronecker_factors"] = functools.partial(
        kronecker_factors, params, sub, idx[0], cfg.get("kron_chunks", 16)
      )
    value, grads = jax.value_and_grad(extra["value_fn"])(params)
    updates, state = tx.update(grads, state, params, value=value, **extra)
    return optax.apply_updates(params, updates), state

  return tx, step


def add_args(parser: argparse.ArgumentParser, adam_steps: int, adam_lrs, out: str) -> None:
  """The command-line options of the Newton-CG time-to-target benchmarks."""
  parser.add_argument("--adam-steps", type=int, default=adam_steps)
  parser.add_argument("--lrs-adam", type=float, nargs="+", default=adam_lrs)
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
  here = os.path.dirname(os.path.abspath(__file__))
  parser.add_argument("--out", default=os.path.join(here, "results", out))


def compare(
  args,
  params,
  data,
  predict,
  output_loss,
  evaluate,
  adam_batch,
  meta,
  sampled_fisher,
  recipe=RECIPE,
):
  """Adam over ``args.lrs_adam`` (batch ``adam_batch``), then the Newton-CG rows (defaults,
  ``recipe``, ``args.variant``) on the rows of ``data``; ``evaluate(params)`` is the measure (a
  float or a dict with ``"loss"``); ``sampled_fisher`` as in :func:`newton_step`. Prints and
  writes the time-to-target table."""
  n = jax.tree.leaves(data)[0].shape[0]

  def sampler(batch, every):
    def sample_chunk(c):
      rng = np.random.default_rng((args.seed, batch, c))
      return rng.integers(0, n, size=(every, batch))

    return sample_chunk

  def loss(p, idx):
    batch = jax.tree.map(lambda a: a[idx], data)
    return output_loss(predict(p, batch), batch)

  runs = []
  for lr in args.lrs_adam:
    tx = optax.adam(_common.lr_schedule(lr, args.adam_steps))
    sample = sampler(adam_batch, args.eval_every)
    res = _common.train(loss, params, tx, sample, args.adam_steps, args.eval_every, evaluate)
    runs.append(
      {"label": "adam", "lr": lr, "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s, "metrics": res.metrics, "config": {"batch": adam_batch}}
    )
    print(f"adam lr {lr:.0e}: final loss {res.losses[-1]:.4f}, {1e3 * res.mean_step_s:.2f} ms/step")

  rows = [] if args.no_recipe else [("newton_cg defaults", DEFAULTS), ("newton_cg recipe", recipe)]
  for spec in args.variant:
    name, kw = _common.parse_variant(spec)
    base = DEFAULTS if kw.pop("defaults", False) else recipe
    rows.append((name, {**base, **kw}))
  for name, cfg in rows:
    cfg = dict(cfg)
    if args.quick:
      cfg["steps"] = 20
    every = args.newton_eval_every
    tx, step = newton_step(predict, output_loss, data, cfg, sampled_fisher)
    res = _common.train(
      None, params, tx, sampler(cfg["batch"], every), cfg["steps"], every, evaluate, step=step
    )
    runs.append(
      {"label": name, "lr": cfg["lr"], "steps": res.steps, "losses": res.losses}
      | {"mean_step_s": res.mean_step_s, "metrics": res.metrics, "config": cfg}
    )
    print(f"{name}: final loss {res.losses[-1]:.4f}, {1e3 * res.mean_step_s:.1f} ms/step ({cfg})")

  summary = _common.summarize(runs, baseline="adam")
  for row in summary:
    row["config"] = next(
      r["config"] for r in runs if r["label"] == row["optimizer"] and r["lr"] == row["lr"]
    )
  print(f"\nTarget = Adam's best final loss {summary[0]['target']:.4f}:\n")
  meta = meta | {"machine": _common.machine_info(), "args": vars(args)}
  metric_cols = tuple(
    (k, k.replace("_", " "), ".4f")
    for k in summary[0]
    if k.startswith("final_") and k != "final_loss"  # final_loss is in COLUMNS
  )
  _common.write_results(
    meta["benchmark"],
    summary,
    meta,
    os.path.dirname(args.out),
    COLUMNS + metric_cols,
    extra={"runs": runs},
    out_path=args.out,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_args(parser, 1500, [1e-3, 3e-3, 1e-2], "newton_cg_autoencoder.json")
  args = parser.parse_args()
  if args.quick:
    args.adam_steps, args.lrs_adam = 300, [1e-2]

  data = jnp.asarray(load_digits().data.astype(np.float32) / 16.0)
  params = ae.init_params(jax.random.key(args.seed))
  meta = {
    "benchmark": "newton_cg_autoencoder",
    "model": {"sizes": ae.SIZES, "activation": "tanh"},
    "data": {"dataset": "sklearn digits", "n": int(data.shape[0])},
  }
  compare(
    args,
    params,
    data,
    ae.forward,
    lambda z, x: 0.5 * jnp.mean(jnp.sum((z - x) ** 2, axis=-1)),  # == ae.loss_fn
    jax.jit(lambda p: ae.loss_fn(p, data)),
    ae.BATCH,
    meta,
    # Half the squared error: targets z + N(0, I).
    (
      lambda z, key: z + jax.random.normal(key, z.shape),
      lambda z, t: 0.5 * jnp.sum((z - t) ** 2),
    ),
  )


if __name__ == "__main__":
  main()
