# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Where a Shampoo step's time goes, next to a FLOP-count floor (transformer LM benchmark model).

Times, each a jitted function timed alone (mean of ``--reps`` calls after a warm-up call):

* forward+backward (``jax.grad`` of the loss on one 16x64 batch) and AdamW's update;
* Shampoo's pieces: the statistics update, one full root refresh of every stack for each root
  method (amortised: divided by ``precondition_every``), the preconditioning products, the graft;
* the whole Shampoo update, mean over ``2 * precondition_every`` consecutive steps (root work
  included), with the configuration given by ``--shampoo-kw``.

FLOP floor: ``fwd+bwd + statistics / statistics_every + preconditioning`` FLOPs (statistics and
preconditioning counted exactly from the block shapes; forward+backward from XLA's cost analysis),
converted to time at the forward+backward's achieved FLOP rate, plus AdamW-like elementwise work
(AdamW's measured update time). Root FLOPs are not in the floor: they are amortised and shrink
with ``precondition_every``. Writes JSON next to a markdown table.

    python benchmarks/shampoo_step_cost.py
    python benchmarks/shampoo_step_cost.py --shampoo-kw statistics_every=4 --quick
"""

from __future__ import annotations

import argparse
import inspect
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
from sops._src import blocking, grafting, kronecker, roots  # noqa: E402
from sops._src import shampoo as shampoo_mod  # noqa: E402


def timeit(fn, *args, reps):
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(reps):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / reps


def block_flops(part: blocking.Partition) -> tuple[float, float]:
  """(statistics, preconditioning) FLOPs of one step: 2 n^2 m per factor of an n x m unfolding."""
  stats = pre = 0.0
  for lp in part.leaves:
    size = int(np.prod(lp.block_shape))
    for f in lp.factors:
      n = lp.block_shape[f.dim]
      stats += lp.num_blocks * 2.0 * n * size
      pre += lp.num_blocks * 2.0 * n * size
  return stats, pre


def _ref_roots(stats, real_sizes, p, ridge=1e-6):
  """float64 numpy roots of every entry's real part (identity on padding), as sops defines them."""
  out = []
  for a, k in zip(np.asarray(stats, np.float64), real_sizes, strict=True):
    x = np.eye(a.shape[-1])
    if k:
      w, v = np.linalg.eigh(0.5 * (a[:k, :k] + a[:k, :k].T))
      w = np.maximum(w, 0.0)
      x[:k, :k] = (v * (w + ridge * w.max()) ** (-1.0 / p)) @ v.T
    out.append(x)
  return np.stack(out)


def _rel_err(x, ref):
  return np.linalg.norm(x - ref, 2, axis=(-1, -2)) / np.linalg.norm(ref, 2, axis=(-1, -2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shampoo-kw", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument(
    "--train-steps", type=int, default=200, help="Shampoo steps before the roots are timed"
  )
  parser.add_argument("--quick", action="store_true", help="5 repetitions, 30 training steps")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  reps = 5 if args.quick else args.reps
  if args.quick:
    args.train_steps = 30
  kw = _common.parse_kw(args.shampoo_kw)
  defaults = inspect.signature(sops.shampoo).parameters
  every = kw.get("precondition_every", defaults["precondition_every"].default)
  stats_every = kw.get("statistics_every", defaults["statistics_every"].default)

  train_ids, _, vocab, _ = lm.load_text(20)
  model = lm.CharLM(vocab=len(vocab))
  params = model.init(jax.random.key(0), jnp.zeros((1, lm.CONTEXT), jnp.int32))
  rng = np.random.default_rng(0)
  batch = jnp.asarray(
    lm.windows(train_ids, rng.integers(0, len(train_ids) - lm.CONTEXT - 1, size=lm.BATCH))
  )

  def loss_fn(p, b):
    logits = model.apply(p, b[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

  grad_fn = jax.jit(jax.grad(loss_fn))
  grads = grad_fn(params, batch)
  fb_flops = grad_fn.lower(params, batch).compile().cost_analysis()["flops"]
  t_fb = timeit(grad_fn, params, batch, reps=reps)
  adamw = optax.adamw(1e-3, weight_decay=0.01)

  leaves = jax.tree.leaves(grads)
  part = shampoo_mod._partition(
    tuple(x.shape for x in leaves), 256, 4096, True, None, 1
  )  # the defaults of sops.shampoo
  tx = sops.shampoo(1e-3, weight_decay=0.01, **kw)
  state = tx.init(params)
  inner = state[0]
  sdt = inner.statistics[0].dtype

  def stats_fn(stats, leaves):
    return kronecker.update_statistics(
      stats, kronecker.to_block_list(leaves, part, sdt), part, 0.999
    )

  def precond_fn(pre, leaves):
    blocks = kronecker.to_block_list(leaves, part, sdt)
    return [
      kronecker.precondition(xb, lp, pre)
      for xb, lp in zip(blocks, part.leaves, strict=True)
      if xb is not None
    ]

  def graft_fn(nu, leaves):
    return grafting.graft_direction("adam", leaves, nu, jnp.asarray(5), 0.999, 1e-8)

  t_stats = timeit(jax.jit(stats_fn), inner.statistics, leaves, reps=reps)
  t_pre = timeit(jax.jit(precond_fn), inner.preconditioners, leaves, reps=reps)
  t_graft = timeit(jax.jit(graft_fn), jax.tree.leaves(inner.graft_nu), leaves, reps=reps)

  # Real statistics: train `--train-steps` steps, then `every` more; the roots of the final
  # statistics are computed by every method, warm starts from the bases of `every` steps before.
  step = jax.jit(
    lambda p, s, b: (lambda g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))(
      jax.grad(loss_fn)(p, b)
    )
  )
  p_t, s_t = params, state
  for t in range(args.train_steps + every):
    b = lm.windows(train_ids, rng.integers(0, len(train_ids) - lm.CONTEXT - 1, size=lm.BATCH))
    p_t, s_t = step(p_t, s_t, jnp.asarray(b))
    if t == args.train_steps - 1:
      bases = s_t[0].eigenbases or tuple(
        np.linalg.eigh(np.asarray(x))[1] for x in s_t[0].statistics
      )
  real_stats = s_t[0].statistics
  ref = [
    _ref_roots(x, part.real_sizes[i], p)
    for i, (x, (_, p)) in enumerate(zip(real_stats, part.stack_keys, strict=True))
  ]
  root_rows, root_acc = {}, {}
  for name, cfg in [
    ("coupled_newton", roots.as_root_config("coupled_newton")),
    ("eigh", roots.as_root_config("eigh")),
    ("eigh, warm-started", roots.as_root_config(roots.RootConfig("eigh", warm_start=True))),
  ]:

    def refresh(stats, bases, cfg=cfg):
      out = []
      for i, (s, (_, p)) in enumerate(zip(stats, part.stack_keys, strict=True)):
        r = roots.compute_roots(
          roots.after(s, out[-1][0] if out else None),
          jnp.broadcast_to(jnp.eye(s.shape[-1], dtype=s.dtype), s.shape),
          bases[i] if cfg.tracks_basis else None,
          jnp.asarray(part.real_sizes[i], jnp.int32),
          p,
          cfg,
          1e-6,
          1.0,
          "float32",
        )
        out.append(r)
      return out

    f = jax.jit(refresh)
    root_rows[name] = timeit(f, real_stats, bases, reps=max(2, reps // 4))
    errs = np.concatenate(
      [_rel_err(np.asarray(r[0]), x) for r, x in zip(f(real_stats, bases), ref, strict=True)]
    )
    root_acc[name] = (float(np.median(errs)), float(errs.max()))

  def shampoo_steps(params, state, grads):
    def body(s, _):
      u, s = tx.update(grads, s, params)
      return s, u

    return jax.lax.scan(body, state, None, length=2 * every)

  state = jax.block_until_ready(jax.jit(shampoo_steps)(params, state, grads))[0]  # roots ready
  t_shampoo = timeit(jax.jit(shampoo_steps), params, state, grads, reps=max(2, reps // 4))
  t_shampoo /= 2 * every
  adam_scan = jax.jit(
    lambda p, s, g: jax.lax.scan(lambda s, _: adamw.update(g, s, p)[::-1], s, None, length=20)
  )
  t_adamw_scan = timeit(adam_scan, params, adamw.init(params), grads, reps=reps) / 20

  f_stats, f_pre = block_flops(part)
  rate = fb_flops / t_fb
  floor = t_fb + (f_stats / stats_every + f_pre) / rate + t_adamw_scan
  method = roots.as_root_config(kw.get("inverse_root", "auto"))
  root_key = {
    "coupled_newton": "coupled_newton",
    "eigh": "eigh, warm-started" if method.tracks_basis else "eigh",
  }[method.method]
  rows = [
    {"part": "forward+backward", "ms": 1e3 * t_fb, "gflop": fb_flops / 1e9},
    {"part": "AdamW update", "ms": 1e3 * t_adamw_scan, "gflop": float("nan")},
    {"part": "Shampoo statistics", "ms": 1e3 * t_stats / stats_every, "gflop": f_stats / 1e9},
    {"part": "Shampoo preconditioning", "ms": 1e3 * t_pre, "gflop": f_pre / 1e9},
    {"part": "Shampoo graft (adam)", "ms": 1e3 * t_graft, "gflop": float("nan")},
  ]
  for name, t in root_rows.items():
    med, worst = root_acc[name]
    rows.append(
      {
        "part": f"roots: {name} (/{every}); error vs f64 median {med:.1e}, max {worst:.1e}",
        "ms": 1e3 * t / every,
        "gflop": float("nan"),
        "full_refresh_ms": 1e3 * t,
        "error_median": med,
        "error_max": worst,
      }
    )
  rows += [
    {"part": "Shampoo update, measured (mean)", "ms": 1e3 * t_shampoo, "gflop": float("nan")},
    {
      "part": "step: AdamW (fwd+bwd+update)",
      "ms": 1e3 * (t_fb + t_adamw_scan),
      "gflop": float("nan"),
    },
    {
      "part": "step: Shampoo (fwd+bwd+update)",
      "ms": 1e3 * (t_fb + t_shampoo),
      "gflop": float("nan"),
    },
    {"part": "step: FLOP floor", "ms": 1e3 * floor, "gflop": float("nan")},
  ]
  step = t_fb + t_shampoo
  for r in rows:
    r["fraction_of_shampoo_step"] = r["ms"] / (1e3 * step)
  summary = {
    "shampoo_kw": {k: str(v) for k, v in kw.items()},
    "root_method": root_key,
    "per_step_ratio_vs_adamw": step / (t_fb + t_adamw_scan),
    "floor_ratio_vs_adamw": floor / (t_fb + t_adamw_scan),
    "step_over_floor": step / floor,
  }
  cols = (
    ("part", "part", ""),
    ("ms", "ms", ".3f"),
    ("gflop", "GFLOP", ".4f"),
    ("fraction_of_shampoo_step", "fraction of Shampoo step", ".3f"),
  )
  print(_common.markdown_table(rows, cols))
  print(
    f"\nper-step Shampoo/AdamW {summary['per_step_ratio_vs_adamw']:.3f}x; FLOP floor/AdamW "
    f"{summary['floor_ratio_vs_adamw']:.3f}x; "
    f"Shampoo step / floor {summary['step_over_floor']:.3f}x (root method {root_key})"
  )
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "shampoo_step_cost.json")
  with open(path, "w") as f:
    import json  # noqa: PLC0415

    json.dump({"meta": _common.machine_info(), "rows": rows, "summary": summary}, f, indent=1)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
