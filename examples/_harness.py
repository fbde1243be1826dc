# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""The training loop, table and plot every scenario example shares (and ``benchmarks/run.py``).

A scenario (``examples/regression.py``, ``vae.py``, ...) is a :class:`Scenario`: parameters, a
loss on a batch, a seeded batch sampler and an evaluation. :func:`train` runs one optimizer on it:

* every optimizer sees the same batches (numpy, seeded by ``(seed, chunk)``);
* steps run as a ``lax.scan`` over chunks of ``eval_every`` steps in one jitted function;
* the learning rate enters through ``optax.inject_hyperparams``, so one compiled step serves a
  whole learning-rate grid and every seed; compilation (one warm-up chunk) is not timed;
* **timed seconds** = wall-clock of the training chunks only (``block_until_ready`` after each),
  no compilation, no evaluation: every "seconds" column of the examples means this;
* Newton-CG gets ``value_fn`` (the loss on the same batch) as its extra argument.

Optimizers: ``adamw``, ``sgd`` (momentum 0.9), ``muon`` (``optax.contrib.muon``), ``newton_cg``,
``shampoo``, ``soap``; all on warm-up + cosine decay of the learning rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sops

OPTIMIZERS = ("adamw", "sgd", "muon", "newton_cg", "shampoo", "soap")
BASELINE = "adamw"


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: compiled steps are cached
class Scenario:
  """One training problem.

  Attributes:
    name: short identifier (file name, JSON key).
    title: one line for tables and plots.
    init: ``init(key) -> params``.
    loss: ``loss(params, batch) -> scalar``, the training objective on one batch (jit-able).
    sample: ``sample(rng, batch_size) -> batch``: one batch (a pytree of numpy arrays) drawn with
      the ``numpy.random.Generator`` ``rng``; stochastic objectives put their noise seed in it.
    evaluate: ``evaluate(params) -> {name: scalar}`` (jit-able); must contain ``"train_loss"`` and
      ``"val_loss"`` (the time-to-target quantity), plus ``metric`` if it differs.
    steps: first-order training steps with the example's defaults.
    eval_every: steps per jitted chunk and between evaluations (divides every budget).
    batch_size: first-order mini-batch size.
    lrs: learning-rate grid per optimizer; its first entry is the example's default.
    metric: the headline validation metric (a key of ``evaluate``'s output).
    higher_is_better: whether ``metric`` improves upwards (accuracy) or downwards (MSE).
    newton_cg_steps: Newton-CG's step budget (each step costs ~``maxiter`` extra passes).
    newton_cg_batch_size: Newton-CG's batch size (curvature wants larger batches).
    newton_cg_kw: keyword arguments of ``sops.newton_cg`` besides the learning rate.
    shampoo_kw: keyword arguments of ``sops.shampoo``.
    soap_kw: keyword arguments of ``sops.soap``.
    weight_decay: decoupled weight decay of adamw, muon, shampoo and soap.
    optimizers: the optimizers this scenario runs by default.
    trainable: optional ``trainable(params) -> pytree of bools``: only the ``True`` leaves train
      (``optax.masked``), the others stay frozen (``optax.set_to_zero``); Newton-CG's
      ``value_fn`` then takes the trainable leaves (frozen ones arrive as ``optax.MaskedNode``).
    key_impl: the PRNG implementation of the key ``init`` gets (``None``: JAX's default,
      threefry; ``"rbg"`` compiles a conv net's initialisation ~5x faster on a CPU).
  """

  name: str
  title: str
  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, Any], jax.Array]
  sample: Callable[[np.random.Generator, int], Any]
  evaluate: Callable[[Any], Mapping[str, jax.Array]]
  steps: int
  eval_every: int
  batch_size: int
  lrs: Mapping[str, Sequence[float]]
  metric: str = "val_loss"
  higher_is_better: bool = False
  newton_cg_steps: int | None = None
  newton_cg_batch_size: int | None = None
  newton_cg_kw: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  shampoo_kw: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  soap_kw: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  weight_decay: float = 0.0
  optimizers: Sequence[str] = OPTIMIZERS
  trainable: Callable[[Any], Any] | None = None
  key_impl: str | None = None

  def budget(self, optimizer: str, scale: float = 1.0) -> tuple[int, int]:
    """``(steps, batch_size)`` of ``optimizer``; ``scale`` multiplies the steps."""
    if optimizer == "newton_cg":
      steps = self.newton_cg_steps or max(self.eval_every, self.steps // 10)
      batch = self.newton_cg_batch_size or self.batch_size
    else:
      steps, batch = self.steps, self.batch_size
    chunks = max(1, round(scale * steps / self.eval_every))
    return chunks * self.eval_every, batch


def row_sampler(x: np.ndarray, y: np.ndarray) -> Callable[[np.random.Generator, int], Any]:
  """``sample(rng, batch_size)``: ``{"x", "y"}`` rows drawn without replacement."""

  def sample(rng, batch_size):
    idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
    return {"x": x[idx], "y": y[idx]}

  return sample


def classification(apply: Callable, x_tr, y_tr, x_va, y_va) -> dict[str, Callable]:
  """``loss``, ``sample`` and ``evaluate`` of a :class:`Scenario` for a softmax classifier.

  ``apply(params, x) -> logits``; the loss is the mean cross-entropy on a ``{"x", "y"}`` batch;
  ``evaluate`` runs one forward pass over training and validation data together (one
  compilation) and reports both losses and the validation accuracy.
  """
  xent = optax.softmax_cross_entropy_with_integer_labels
  x_all, n_tr = np.concatenate([x_tr, x_va]), len(x_tr)

  def loss(params, batch):
    return jnp.mean(xent(apply(params, batch["x"]), batch["y"]))

  def evaluate(params):
    logits = apply(params, x_all)
    tr, va = logits[:n_tr], logits[n_tr:]
    return {
      "train_loss": jnp.mean(xent(tr, y_tr)),
      "val_loss": jnp.mean(xent(va, y_va)),
      "val_accuracy": jnp.mean(jnp.argmax(va, -1) == y_va),
    }

  return {"loss": loss, "sample": row_sampler(x_tr, y_tr), "evaluate": evaluate}


def make_optimizer(
  scenario: Scenario, optimizer: str, learning_rate: Any, steps: int
) -> optax.GradientTransformationExtraArgs:
  """``optimizer`` at peak ``learning_rate`` on warm-up (5%) + cosine decay over ``steps``."""
  warmup = max(1, round(0.05 * steps))
  shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(steps, warmup + 1), 0.0)

  def schedule(count):
    return learning_rate * shape(count)

  wd = scenario.weight_decay
  if optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=wd)
  elif optimizer == "sgd":
    tx = optax.sgd(schedule, momentum=0.9)
  elif optimizer == "muon":
    tx = optax.contrib.muon(schedule, weight_decay=wd, adam_weight_decay=wd)
  elif optimizer == "newton_cg":
    tx = sops.newton_cg(schedule, **scenario.newton_cg_kw)
  elif optimizer == "shampoo":
    tx = sops.shampoo(schedule, weight_decay=wd, **scenario.shampoo_kw)
  elif optimizer == "soap":
    tx = sops.soap(schedule, weight_decay=wd, **scenario.soap_kw)
  else:
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
  return optax.with_extra_args_support(_freeze(scenario, tx))


@functools.cache
def _compiled(scenario: Scenario, optimizer: str, steps: int) -> tuple[Callable, Callable]:
  """``(init, chunk)``: ``init(params, lr)`` and the jitted ``chunk(params, state, batches)``.

  Cached per (scenario, optimizer, steps): the learning rate lives in the optimizer state
  (``inject_hyperparams``), so a grid of learning rates and seeds reuses one compilation.
  """

  def at(learning_rate):
    return make_optimizer(scenario, optimizer, learning_rate, steps)

  factory = optax.inject_hyperparams(at)

  def init(params, lr):
    return factory(learning_rate=lr).init(params)

  tx = factory(learning_rate=1.0)

  def step(carry, batch):
    params, state = carry
    value, grads = jax.value_and_grad(scenario.loss)(params, batch)
    updates, state = tx.update(grads, state, params, value_fn=_value_fn(scenario, params, batch))
    return (optax.apply_updates(params, updates), state), ~jnp.isfinite(value)

  @jax.jit
  def chunk(params, state, batches):
    (params, state), nonfinite = jax.lax.scan(step, (params, state), batches)
    return params, state, jnp.sum(nonfinite)

  return init, chunk


def _value_fn(scenario: Scenario, params: Any, batch: Any) -> Callable:
  """The loss on ``batch`` as a function of the leaves the optimizer sees."""
  if scenario.trainable is None:
    return lambda p: scenario.loss(p, batch)

  def value_fn(trained):  # frozen leaves arrive as optax.MaskedNode: take them from params
    merged = jax.tree.map(
      lambda t, p: p if isinstance(t, optax.MaskedNode) else t,
      trained,
      params,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    return scenario.loss(merged, batch)

  return value_fn


def _freeze(scenario: Scenario, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` on the trainable leaves, zero updates on the others."""
  if scenario.trainable is None:
    return tx

  def frozen(params):
    return jax.tree.map(lambda t: not t, scenario.trainable(params))

  return optax.chain(
    optax.masked(tx, scenario.trainable), optax.masked(optax.set_to_zero(), frozen)
  )


@functools.cache
def _evaluate(scenario: Scenario) -> Callable:
  return jax.jit(scenario.evaluate)


def _batches(scenario: Scenario, seed: int, chunk: int, batch_size: int) -> Any:
  """The ``eval_every`` batches of ``chunk``, stacked; the same for every optimizer."""
  rng = np.random.default_rng([seed, chunk])
  batches = [scenario.sample(rng, batch_size) for _ in range(scenario.eval_every)]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def train(
  scenario: Scenario,
  optimizer: str,
  lr: float,
  seed: int = 0,
  scale: float = 1.0,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains ``scenario`` with one optimizer; returns its curves and timings.

  Returns:
    ``{"optimizer", "lr", "seed", "steps" (the evaluated steps), "seconds" (cumulative timed
    seconds at those steps), every key of ``evaluate`` (a list per evaluation), "timed_s",
    "mean_step_ms", "nonfinite_steps"}``.
  """
  steps, batch_size = scenario.budget(optimizer, scale)
  init, chunk = _compiled(scenario, optimizer, steps)
  evaluate = _evaluate(scenario)
  params = scenario.init(jax.random.key(seed, impl=scenario.key_impl))
  state = init(params, lr)
  first = _batches(scenario, seed, 0, batch_size)
  jax.block_until_ready(chunk(params, state, first))  # compile (cached after the first call)
  evals = [{k: float(v) for k, v in evaluate(params).items()}]
  seconds, nonfinite = [0.0], 0
  bar = _progress(steps // scenario.eval_every, f"{scenario.name} {optimizer}", progress)
  for c in range(steps // scenario.eval_every):
    batches = first if c == 0 else _batches(scenario, seed, c, batch_size)
    batches = jax.block_until_ready(jax.device_put(batches))
    t0 = time.perf_counter()
    params, state, bad = jax.block_until_ready(chunk(params, state, batches))
    seconds.append(seconds[-1] + time.perf_counter() - t0)
    nonfinite += int(bad)
    evals.append({k: float(v) for k, v in evaluate(params).items()})
    bar.update()
  bar.close()
  out = {"optimizer": optimizer, "lr": lr, "seed": seed}
  out["steps"] = list(range(0, steps + 1, scenario.eval_every))
  out["seconds"] = seconds
  out.update({k: [e[k] for e in evals] for k in evals[0]})
  out.update(timed_s=seconds[-1], mean_step_ms=1e3 * seconds[-1] / steps, nonfinite_steps=nonfinite)
  return out


def _progress(total: int, desc: str, enabled: bool):
  from tqdm import tqdm  # noqa: PLC0415

  return tqdm(total=total, desc=f"{desc:>24}", unit="chunk", disable=not enabled, leave=False)


def steps_to_target(run: Mapping[str, Any], target: float) -> tuple[int | None, float | None]:
  """First evaluated step with ``val_loss <= target`` and the timed seconds to reach it."""
  losses = np.nan_to_num(np.asarray(run["val_loss"], dtype=np.float64), nan=np.inf)
  hit = np.nonzero(losses <= target)[0]
  if hit.size == 0:
    return None, None
  return run["steps"][hit[0]], run["seconds"][hit[0]]


def final(run: Mapping[str, Any], key: str) -> float:
  """The last evaluation of ``key``; ``inf`` if it is not finite."""
  x = float(run[key][-1])
  return x if math.isfinite(x) else math.inf


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
  """Markdown table; ``columns`` are ``(key, header, format)``, a missing value prints ``-``."""
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


def summary_rows(scenario: Scenario, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per run: final metrics, and steps/seconds to the baseline's final ``val_loss``."""
  base = [r for r in runs if r["optimizer"] == BASELINE]
  target = min(final(r, "val_loss") for r in base) if base else None
  rows = []
  for r in runs:
    hit, sec = steps_to_target(r, target) if target is not None else (None, None)
    rows.append(
      {
        "optimizer": r["optimizer"],
        "lr": r["lr"],
        "train_loss": final(r, "train_loss"),
        "val_loss": final(r, "val_loss"),
        "metric": final(r, scenario.metric),
        "steps": r["steps"][-1],
        "steps_to_target": hit,
        "seconds_to_target": sec,
        "timed_s": r["timed_s"],
        "mean_step_ms": r["mean_step_ms"],
        "nonfinite_steps": r["nonfinite_steps"],
      }
    )
  return rows


def columns(scenario: Scenario) -> list[tuple[str, str, str]]:
  """The example table's columns (``timed s`` excludes compilation and evaluation)."""
  cols = [
    ("optimizer", "optimizer", ""),
    ("lr", "lr", ".0e"),
    ("train_loss", "train loss", ".4g"),
    ("val_loss", "val loss", ".4g"),
  ]
  if scenario.metric != "val_loss":
    cols.append(("metric", scenario.metric.replace("_", " "), ".4g"))
  return cols + [
    ("steps", "steps", "d"),
    ("steps_to_target", f"steps to {BASELINE} val loss", ""),
    ("seconds_to_target", "s to target", ".2f"),
    ("timed_s", "timed s", ".2f"),
    ("mean_step_ms", "ms/step", ".2f"),
    ("nonfinite_steps", "non-finite steps", "d"),
  ]


def plot(scenario: Scenario, curves: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """Validation loss against steps and against timed seconds, one line per optimizer."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")  # no display needed
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for name, run in curves.items():
    label = f"{name} (lr {run['lr']:.0e})"
    axes[0].plot(run["steps"], run["val_loss"], label=label)
    axes[1].plot(run["seconds"], run["val_loss"], label=label)
  for ax, xlabel in zip(axes, ("step", "timed training seconds"), strict=True):
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("validation loss")
  axes[0].legend(fontsize=8)
  fig.suptitle(scenario.title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(scenario: Scenario, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """The command line of every scenario example: train each optimizer, print a table, plot."""
  parser = argparse.ArgumentParser(description=scenario.title)
  parser.add_argument("--smoke", action="store_true", help="one chunk per optimizer, no plot")
  parser.add_argument("--steps", type=float, default=1.0, help="multiply every step budget")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--optimizers", default=",".join(scenario.optimizers), help="comma-separated subset"
  )
  parser.add_argument("--plot", default=f"{scenario.name}.png", help="PNG path ('' for none)")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  for n in names:
    if n not in OPTIMIZERS:
      parser.error(f"unknown optimizer {n!r}; choose from {','.join(OPTIMIZERS)}")
  scale = 1e-9 if args.smoke else args.steps  # 1e-9 rounds up to one chunk
  backend = jax.default_backend()
  print(f"{scenario.title} | sops {sops.__version__}, JAX {jax.__version__} ({backend})")
  runs = [train(scenario, n, scenario.lrs[n][0], args.seed, scale) for n in names]
  rows = summary_rows(scenario, runs)
  print("timed s: training chunks only (compilation and evaluation excluded)\n")
  print(table(rows, columns(scenario)))
  if args.plot and not args.smoke:
    plot(scenario, {r["optimizer"]: r for r in runs}, args.plot)
    print(f"\nwrote {args.plot}")
  return rows
