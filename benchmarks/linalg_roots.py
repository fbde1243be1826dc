# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Time and accuracy of batched inverse p-th roots on Shampoo-like statistics.

Stacks of blocks (default: 16 x 256x256 and 4 x 1024x1024) of gradient statistics (decayed sums of
outer products of low-rank, heavy-tailed gradients; rank-deficient, so the 1e-6 relative ridge
matters) are rooted by sops' ``coupled_newton`` and ``eigh`` methods (float32), sops' float64 path
(with ``--x64``), and optax's ``matrix_inverse_pth_root`` (vmapped). The error is the worst block's
spectral-norm relative error against a float64 numpy eigh root of the same float32 input (with
negative eigenvalues clamped at zero for the eigh methods, as they are defined; as given for the
iterative ones); "reported" is the worst ``info.error`` sops returned.

Usage:
  python benchmarks/linalg_roots.py            # default sizes, p = 4 and p = 3
  python benchmarks/linalg_roots.py --quick    # small sizes, < 1 minute on CPU
  python benchmarks/linalg_roots.py --x64      # adds the precision="float64" path
"""

import argparse
import time

import jax
import numpy as np


def gradient_statistics(rng, blocks, n, steps=50, rank=8, decay=0.95):
  """Decayed sums of outer products of low-rank gradients, as Shampoo accumulates them."""
  out = []
  for _ in range(blocks):
    basis = rng.standard_normal((n, 2 * rank)) * np.logspace(0, -3, 2 * rank)
    cols = []
    for t in range(steps):
      g = basis @ rng.standard_normal((2 * rank, rank)) * rng.standard_t(3)
      cols.append(np.sqrt(decay ** (steps - 1 - t)) * g)
    h = np.concatenate(cols, axis=1)
    out.append(h @ h.T + 1e-3 * np.outer(h[:, 0], h[:, 0]))
  return np.asarray(out, np.float32)


def reference_root(a, p, ridge=1e-6, clamp=True):
  a = np.asarray(a, np.float64)
  w, v = np.linalg.eigh(0.5 * (a + np.swapaxes(a, -1, -2)))
  eps = ridge * w.max(-1, keepdims=True)
  w = np.maximum(w, 0.0) if clamp else w
  return (v * ((w + eps) ** (-1.0 / p))[..., None, :]) @ np.swapaxes(v, -1, -2)


def rel_err(x, ref):
  x = np.asarray(x, np.float64)
  num = np.linalg.norm(x - ref, ord=2, axis=(-1, -2))
  return float(np.max(num / np.linalg.norm(ref, ord=2, axis=(-1, -2))))


def timed(fn, arg, reps):
  out = jax.block_until_ready(fn(arg))  # compile + warm up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - t0)
  return out, float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute on CPU)")
  parser.add_argument("--x64", action="store_true", help="also time precision='float64'")
  parser.add_argument("--reps", type=int, default=1, help="timed repetitions (median)")
  parser.add_argument("--p", type=int, nargs="+", default=[4, 3], help="roots to compute")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.x64:
    jax.config.update("jax_enable_x64", True)
  import optax._src.linear_algebra as optax_la  # noqa: PLC0415 (after the x64 switch)

  import sops  # noqa: PLC0415

  shapes = [(16, 64), (4, 256)] if args.quick else [(16, 256), (4, 1024)]
  rng = np.random.default_rng(args.seed)
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
  header = (
    f"{'stack':>12} {'p':>2} {'method':<24} {'time [s]':>9} {'rel. error':>10} {'reported':>9}"
  )
  print(header)
  print("-" * len(header))
  for blocks, n in shapes:
    a = gradient_statistics(rng, blocks, n)
    a_dev = jax.device_put(a)
    for p in args.p:
      t0 = time.perf_counter()
      ref = reference_root(a, p)
      t_ref = time.perf_counter() - t0
      ref_unclamped = reference_root(a, p, clamp=False)
      rows = [("float64 numpy eigh (ref)", t_ref, 0.0, None)]
      variants = [("sops coupled_newton f32", {}), ("sops eigh f32", {"method": "eigh"})]
      if args.x64:
        variants.append(("sops coupled_newton f64", {"precision": "float64"}))
        variants.append(("sops eigh f64", {"precision": "float64", "method": "eigh"}))
      for name, kw in variants:
        # fail_threshold=inf: measure the computed roots, not the identity fallback.
        fn = jax.jit(
          lambda m, kw=kw, p=p: sops.linalg.inverse_pth_root(m, p, fail_threshold=np.inf, **kw)
        )
        (x, info), t = timed(fn, a_dev, args.reps)
        r = ref if kw.get("method") == "eigh" else ref_unclamped
        rows.append((name, t, rel_err(x, r), float(np.max(info.error))))
      fn = jax.jit(jax.vmap(lambda m, p=p: optax_la.matrix_inverse_pth_root(m, p)[0]))
      x, t = timed(fn, a_dev, args.reps)
      rows.append(("optax matrix_inv_pth_root", t, rel_err(x, ref_unclamped), None))
      for name, t, err, rep in rows:
        rep_s = f"{rep:9.1e}" if rep is not None else f"{'-':>9}"
        stack = f"{blocks}x{n}x{n}"
        print(f"{stack:>12} {p:>2} {name:<24} {t:9.3f} {err:10.1e} {rep_s}", flush=True)


if __name__ == "__main__":
  main()
