# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Data-parallel efficiency of ``sops.newton_cg``: steps/s at 1, 2, 4 and 8 devices.

The Newton-CG poster (Reiz, Neckel, Bungartz, arXiv:2208.02017) reports 80.4% data-parallel
efficiency on 8 GPUs; this script measures the same quantity for :func:`sops.newton_cg`.

Setup: an MLP classifier 64-256-256-10 (tanh, softmax cross-entropy) on scikit-learn's digits
(pixels / 16; batches drawn with a seeded numpy generator, the same global batches at every
device count). The training step runs under sharded ``jit`` on a one-axis mesh over the first N
devices: the batch is sharded ``P("data")``, parameters and optimizer state are replicated, and XLA
inserts the cross-device reductions (no ``axis_name``, as in ``docs/distributed.md``):

    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params, value_fn=lambda p: loss(p, batch))
    params = optax.apply_updates(params, updates)

``curvature="gauss_newton"`` passes ``predict_fn`` and ``output_loss_fn`` instead of ``value_fn``.
CG runs exactly ``maxiter=10`` iterations (``tol=0``), so every device count does the same work per
sample, and the CG iterations of every step are recorded and checked. Gauss-Newton is positive
semi-definite; the Hessian of this net has eigenvalues down to about -1.5 (at initialisation, by
Lanczos), so its runs keep the Levenberg-Marquardt damping at or above ``--hessian-min-damping``
(2), else CG would stop early on negative curvature. Everything else is ``sops.newton_cg``'s
default (adaptive damping, warm start, learning rate 1).

* **Weak scaling** (the usual data-parallel efficiency): per-device batch ``b`` fixed, global batch
  ``N b``; ``efficiency = t(1) / t(N)``, speedup (in samples/s) ``N t(1) / t(N)``.
* **Strong scaling**: global batch ``B`` fixed (default ``8 b``); ``efficiency = t(1) / (N t(N))``,
  speedup ``t(1) / t(N)``.

Timing: the steps run as a ``lax.scan`` over chunks of ``--chunk`` steps, one jitted call per
chunk; the first call compiles and is not timed, then each call is timed with
``block_until_ready``; mean step time = timed seconds / timed steps. Correctness: strong scaling
trains on the same global batches at every N, so its parameters after the warm-up chunk (k =
``--chunk`` steps) at N devices must equal those at 1 device up to the rounding of reductions
summed in another order; the table gives the max abs difference (float32 unless ``--x64``),
checked against ``TOLERANCE``. A weak-scaling row has a 1-device reference only when its global
batch is ``B`` (N = 8 by default). The JSON also has the difference after all the steps
(``max_abs_diff_final``): over 25 Gauss-Newton steps it grows to ~1e-3 in float32 (2e-12 in
float64) as the adaptive damping shrinks and the damped system gets ill-conditioned; ~1e-7 with
the Hessian's damping floor. The JSON also has each run's compile seconds and the collective ops
XLA put in the compiled step (all-reduces for N > 1, none for N = 1).

On a CPU-only host the script simulates 8 devices (``--xla_force_host_platform_device_count``).
Simulated devices share the host's cores, so there the run checks that sharded Newton-CG works,
does a fixed amount of work and matches 1 device, but its efficiency is not a speed figure: only a
host with several accelerators gives a meaningful one. On GPUs the same command uses the real
devices (device counts above ``jax.device_count()`` are skipped); the default model is tiny for a
GPU, where each CG iteration's all-reduce then costs more than its compute: pass a larger one
(e.g. ``--sizes 64 2048 2048 10 --per-device-batch 2048``) to measure the compute-bound regime.

    python benchmarks/newton_cg_scaling.py            # ~3 min on a 2-core CPU (mostly compiling)
    python benchmarks/newton_cg_scaling.py --quick    # small model, few steps, strong scaling
    python benchmarks/newton_cg_scaling.py --x64      # float64: the check shows rounding only
    python benchmarks/newton_cg_scaling.py --devices 1,2,4,8 --curvatures gauss_newton

Output: a markdown table on stdout, ``benchmarks/results/newton_cg_scaling.json`` (every chunk's
seconds, every step's loss and CG iterations, the machine and its devices).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

if __name__ == "__main__":  # must happen before JAX is imported; an existing flag is kept
  _dev = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), None)
  if _dev is None and "--devices" in sys.argv[:-1]:
    _dev = sys.argv[sys.argv.index("--devices") + 1]
  _count = max([int(d) for d in (_dev or "8").split(",") if d.strip().isdigit()] or [8])
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    _flag = f"--xla_force_host_platform_device_count={_count}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import contextlib  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import sops  # noqa: E402

CURVATURES = ("hessian", "gauss_newton")
COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
# Max abs difference of the parameters (order 0.1-1) at N devices vs 1 device after k = --chunk
# steps, by dtype. Reductions summed in another order differ by ~eps relative, which k Newton-CG
# steps amplify a little: measured ~1e-7 in float32 after 5 steps and ~1e-15 in float64 (both
# curvatures, N = 2, 4, 8). A real error (a shard counted twice, a sum where a mean belongs, a
# device's batch dropped) moves them by 1e-2 or more.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
COLUMNS = (
  ("mode", "mode", ""),
  ("curvature", "curvature", ""),
  ("devices", "devices", "d"),
  ("global_batch", "global batch", "d"),
  ("mean_step_ms", "mean step ms", ".2f"),
  ("steps_per_s", "steps/s", ".2f"),
  ("samples_per_s", "samples/s", ".0f"),
  ("speedup", "speedup", ".2f"),
  ("efficiency", "efficiency", ".1%"),
  ("cg_iterations", "CG iterations", ""),
  ("max_abs_diff", "max abs diff vs 1 device", ".1e"),
  ("collectives", "collective ops", "d"),
)


def load_data() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits, pixels / 16: ``(x, y)`` of shapes ``(1797, 64)`` and ``(1797,)``."""
  from sklearn.datasets import load_digits  # noqa: PLC0415

  x, y = load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y.astype(np.int32)


def init_mlp(sizes: Sequence[int], seed: int) -> list[dict[str, np.ndarray]]:
  """LeCun-normal weights and zero biases as float32 numpy arrays (cast to the run's dtype)."""
  rng = np.random.default_rng(seed)
  return [
    {"w": (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32), "b": np.zeros(n, "f4")}
    for m, n in zip(sizes[:-1], sizes[1:], strict=True)
  ]


def mlp(params: Any, x: jax.Array) -> jax.Array:
  """Logits of the tanh MLP ``params`` on inputs ``x``."""
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of ``logits`` against the integer labels ``y``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def loss(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean cross-entropy of the MLP on ``batch = (x, y)``."""
  x, y = batch
  return xent(mlp(params, x), y)


def batches(
  data: tuple[np.ndarray, np.ndarray], global_batch: int, start: int, steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Global batches ``start, ..., start + steps - 1``, stacked: ``(steps, global_batch, ...)``.

  Batch ``i`` depends only on ``(seed, global_batch, i)``, so every device count sees the same.
  """
  x, y = data
  idx = np.stack(
    [
      np.random.default_rng((seed, global_batch, i)).choice(
        len(x), global_batch, replace=global_batch > len(x)
      )
      for i in range(start, start + steps)
    ]
  )
  return x[idx], y[idx]


def make_optimizer(
  curvature: str, maxiter: int, hessian_min_damping: float
) -> optax.GradientTransformationExtraArgs:
  """``sops.newton_cg`` that always runs ``maxiter`` CG iterations (``tol=0``).

  For ``"hessian"`` the damping starts at and never drops below ``hessian_min_damping`` (the
  damped Hessian must stay positive definite, or CG stops on negative curvature).
  """
  if curvature == "hessian":
    floor = hessian_min_damping
    return sops.newton_cg(
      maxiter=maxiter, tol=0.0, curvature=curvature, damping=max(1.0, floor), min_damping=floor
    )
  return sops.newton_cg(maxiter=maxiter, tol=0.0, curvature=curvature)


def mesh_of(n: int) -> jax.sharding.Mesh:
  """A one-axis ``"data"`` mesh over the first ``n`` devices."""
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def make_chunk(tx: optax.GradientTransformationExtraArgs, curvature: str, mesh: jax.sharding.Mesh):
  """Jitted ``(params, state, xs, ys) -> (params, state, (losses, cg_iterations))``.

  A ``lax.scan`` of training steps over the stacked batches ``xs, ys`` (sharded over ``"data"``
  on their batch axis, 1); parameters and state replicated.
  """
  replicated = NamedSharding(mesh, P())
  stacked, sharded = NamedSharding(mesh, P(None, "data")), NamedSharding(mesh, P("data"))

  def step(carry, batch):
    params, state = carry
    batch = lax.with_sharding_constraint(batch, sharded)
    x, y = batch
    grads = jax.grad(loss)(params, batch)
    if curvature == "gauss_newton":
      kw = {"predict_fn": lambda p: mlp(p, x), "output_loss_fn": lambda z: xent(z, y)}
    else:
      kw = {"value_fn": lambda p: loss(p, batch)}
    updates, state = tx.update(grads, state, params, **kw)
    params = optax.apply_updates(params, updates)
    info = state[0].info  # newton_cg's state: (ScaleByNewtonCGState, lr state, line-search state)
    return (params, state), (info.loss, info.cg_iterations)

  def chunk(params, state, xs, ys):
    (params, state), out = lax.scan(step, (params, state), (xs, ys))
    return params, state, out

  return jax.jit(
    chunk,
    in_shardings=(replicated, replicated, stacked, stacked),
    out_shardings=(replicated, replicated, replicated),
  )


def train(args, data, curvature: str, n: int, global_batch: int) -> dict[str, Any]:
  """``1 + args.steps // args.chunk`` jitted chunks of ``args.chunk`` steps at ``n`` devices.

  The chunk is compiled ahead of time (its seconds and collective ops are returned); the first
  chunk is the warm-up and is not timed. Returns also the final parameters (numpy), the seconds
  of each timed chunk, and the loss and CG iterations of every step (the warm-up's included).
  """
  dtype = jnp.float64 if args.x64 else jnp.float32
  mesh = mesh_of(n)
  tx = make_optimizer(curvature, args.maxiter, args.hessian_min_damping)
  replicated, stacked = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "data"))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), init_mlp(args.sizes, args.seed))
  params = jax.device_put(params, replicated)
  state = jax.device_put(tx.init(params), replicated)
  fn, compiled = make_chunk(tx, curvature, mesh), None
  seconds, losses, iters = [], [], []
  for c in range(1 + args.steps // args.chunk):
    xs, ys = batches(data, global_batch, c * args.chunk, args.chunk, args.seed)
    xs, ys = jax.device_put((xs.astype(dtype), ys), stacked)
    if compiled is None:
      start = time.perf_counter()
      compiled = fn.lower(params, state, xs, ys).compile()
      compile_s = time.perf_counter() - start
      fn = compiled
    start = time.perf_counter()
    params, state, (loss_c, iters_c) = jax.block_until_ready(fn(params, state, xs, ys))
    if c > 0:
      seconds.append(time.perf_counter() - start)
    else:
      warmup_params = jax.tree.map(np.asarray, params)
    losses += np.asarray(loss_c, np.float64).tolist()
    iters += np.asarray(iters_c).tolist()
  hlo = compiled.as_text()
  return {
    "warmup_params": warmup_params,
    "params": jax.tree.map(np.asarray, params),
    "compile_s": compile_s,
    # Collective ops in the compiled chunk (static count; those in CG's loop run every iteration).
    "collectives": {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in COLLECTIVES},
    "chunk_seconds": seconds,
    "losses": losses,
    "cg_iterations": iters,
  }


def max_abs_diff(a: Any, b: Any) -> float:
  """Max abs difference over the leaves of two parameter trees."""
  return max(
    float(np.max(np.abs(u - v))) for u, v in zip(*map(jax.tree.leaves, (a, b)), strict=True)
  )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The command line, ``--quick`` applied and checked."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8", help="device counts (those present run)")
  parser.add_argument("--curvatures", default=",".join(CURVATURES), help="hessian,gauss_newton")
  parser.add_argument("--modes", default="weak,strong", help="weak (b per device), strong (B)")
  parser.add_argument("--per-device-batch", type=int, default=128, help="b of weak scaling")
  parser.add_argument("--global-batch", type=int, help="B of strong scaling (default 8 b)")
  parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 256, 10], help="MLP")
  parser.add_argument("--maxiter", type=int, default=10, help="CG iterations, all run (tol=0)")
  parser.add_argument("--hessian-min-damping", type=float, default=2.0)
  parser.add_argument("--chunk", type=int, default=5, help="steps per jitted lax.scan call")
  parser.add_argument("--steps", type=int, default=20, help="timed steps, after a warm-up chunk")
  parser.add_argument("--x64", action="store_true", help="train in float64 (jax.enable_x64)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--quick", action="store_true", help="MLP 64-32-10, b 16, 2 chunks of 2 steps, strong only"
  )
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "newton_cg_scaling.json"
    ),
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.sizes, args.per_device_batch, args.chunk, args.steps = [64, 32, 10], 16, 2, 2
    args.modes = "strong"
  args.global_batch = args.global_batch or 8 * args.per_device_batch
  args.curvatures = [c.strip() for c in args.curvatures.split(",") if c.strip()]
  args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  wanted = sorted({int(d) for d in args.devices.split(",") if d.strip()})
  args.devices = [n for n in wanted if 1 <= n <= jax.device_count()]
  args.skipped = [n for n in wanted if n not in args.devices]
  if args.sizes[0] != 64 or args.sizes[-1] != 10:
    parser.error("--sizes must start with 64 (digits' pixels) and end with 10 (classes)")
  if args.steps < args.chunk or args.steps % args.chunk:
    parser.error(f"--steps ({args.steps}) must be a positive multiple of --chunk ({args.chunk})")
  if not set(args.curvatures) <= set(CURVATURES) or not set(args.modes) <= {"weak", "strong"}:
    parser.error(f"--curvatures from {','.join(CURVATURES)}; --modes from weak,strong")
  if args.devices[:1] != [1]:
    parser.error(f"--devices must include 1 (the baseline); {jax.device_count()} present")
  if "strong" in args.modes and any(args.global_batch % n for n in args.devices):
    parser.error(f"--global-batch {args.global_batch} must be divisible by every device count")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the table and writes the JSON.

  Args:
    argv: command-line arguments (default ``sys.argv[1:]``).

  Returns:
    What the JSON holds: ``{"meta": ..., "rows": [...]}``, one row per scaling mode, curvature
    and device count; ``meta`` has the machine, the arguments, ``tolerance``, ``params_match``
    and ``full_cg_iterations``.
  """
  args = parse_args(argv)
  dtype = "float64" if args.x64 else "float32"
  tolerance = TOLERANCE[dtype]
  print(
    f"sops {sops.__version__} | JAX {jax.__version__} | {jax.device_count()} "
    f"{jax.devices()[0].platform} devices | MLP {args.sizes} | Newton-CG maxiter {args.maxiter}"
    f" | {dtype}" + (f" | skipped {args.skipped} (not present)" if args.skipped else "")
  )
  data = load_data()
  runs = {}  # (curvature, devices, global batch) -> train(...), shared by weak and strong rows
  x64 = jax.enable_x64(True) if args.x64 else contextlib.nullcontext()
  with x64:
    for mode in args.modes:
      for curvature in args.curvatures:
        for n in args.devices:
          gb = n * args.per_device_batch if mode == "weak" else args.global_batch
          if (curvature, n, gb) not in runs:
            print(f"  {curvature}: {n} device(s), global batch {gb}", flush=True)
            runs[curvature, n, gb] = train(args, data, curvature, n, gb)

  rows = []
  for mode in args.modes:
    for curvature in args.curvatures:
      gb1 = args.per_device_batch if mode == "weak" else args.global_batch
      t1 = float(np.sum(runs[curvature, 1, gb1]["chunk_seconds"])) / args.steps
      for n in args.devices:
        gb = n * args.per_device_batch if mode == "weak" else args.global_batch
        r = runs[curvature, n, gb]
        ref = runs.get((curvature, 1, gb))  # 1 device, the same global batches
        diff = None if ref is None else max_abs_diff(r["warmup_params"], ref["warmup_params"])
        drift = None if ref is None else max_abs_diff(r["params"], ref["params"])
        t = float(np.sum(r["chunk_seconds"])) / args.steps
        lo, hi = min(r["cg_iterations"]), max(r["cg_iterations"])
        rows.append(
          {
            "mode": mode,
            "curvature": curvature,
            "devices": n,
            "global_batch": gb,
            "per_device_batch": gb // n,
            "mean_step_ms": 1e3 * t,
            "steps_per_s": 1.0 / t,
            "samples_per_s": gb / t,
            # weak: throughput speedup N t(1)/t(N); strong: speedup t(1)/t(N), efficiency / N.
            "speedup": n * t1 / t if mode == "weak" else t1 / t,
            "efficiency": t1 / t if mode == "weak" else t1 / (n * t),
            "cg_iterations": str(lo) if lo == hi else f"{lo}-{hi}",
            "cg_iterations_min": lo,
            "cg_iterations_max": hi,
            "max_abs_diff": diff,
            "max_abs_diff_final": drift,
            "params_match": None if diff is None else diff <= tolerance,
            "final_loss": r["losses"][-1],
            "collectives": sum(r["collectives"].values()),
            "collective_ops": r["collectives"],
            "compile_s": r["compile_s"],
            "chunk_seconds": r["chunk_seconds"],
            "losses": r["losses"],
            "cg_iterations_per_step": r["cg_iterations"],
          }
        )

  checked = [r["params_match"] for r in rows if r["params_match"] is not None]
  meta = {
    "benchmark": "newton_cg_scaling",
    "machine": _common.machine_info(),
    "args": vars(args),
    "dtype": dtype,
    "optimizer": (
      f"sops.newton_cg(maxiter={args.maxiter}, tol=0.0, curvature=...); hessian: damping="
      f"min_damping={args.hessian_min_damping}"
    ),
    "tolerance": tolerance,
    "params_match": all(checked),
    "full_cg_iterations": all(r["cg_iterations_min"] == args.maxiter for r in rows)
    and all(r["cg_iterations_max"] == args.maxiter for r in rows),
  }
  print(
    f"\nNewton-CG data-parallel scaling; mean of {args.steps} timed steps ({args.chunk} per "
    f"jitted lax.scan call, the compiling call excluded). Weak: per-device batch "
    f"{args.per_device_batch}, efficiency t(1)/t(N), speedup N t(1)/t(N). Strong: global batch "
    f"{args.global_batch}, efficiency t(1)/(N t(N)), speedup t(1)/t(N). Max abs diff: parameters "
    f"after {args.chunk} steps vs 1 device on the same global batches ({dtype}).\n"
  )
  _common.write_results(
    "newton_cg_scaling", rows, meta, os.path.dirname(args.out), COLUMNS, out_path=args.out
  )
  print(
    f"Parameters equal to 1 device's within {tolerance:g} ({len(checked)} rows checked): "
    f"{meta['params_match']}. Every step ran {args.maxiter} CG iterations: "
    f"{meta['full_cg_iterations']}."
  )
  if jax.devices()[0].platform == "cpu":
    print("Simulated CPU devices share the host's cores: this efficiency is not a speed figure.")
  return {"meta": meta, "rows": rows}


if __name__ == "__main__":
  main()
