# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Accuracy sweep of float32 inverse p-th roots over prescribed condition numbers.

Blocks are float32 SPD matrices with log-spaced eigenvalues 1 .. 1/cond and random eigenvectors.
For each condition number, root p and method (sops ``coupled_newton``, sops ``eigh``, scipy's
float32 LAPACK ``eigh`` as the spec's baseline) it prints the median and the worst spectral-norm
relative error, over seeds and blocks (``fail_threshold=inf``, so no identity fallbacks),
against a float64 numpy eigh root of the same float32 input (relative ridge 1e-6).

Usage:
  python benchmarks/linalg_accuracy.py                 # 20 seeds x 3 blocks of 48x48
  python benchmarks/linalg_accuracy.py --seeds 5 --cond 1e3
"""

import argparse

import jax
import numpy as np
import scipy.linalg

import sops


def prescribed(rng, batch, n, cond):
  out = []
  for _ in range(batch):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    out.append((q * np.logspace(0, -np.log10(cond), n)) @ q.T)
  return np.asarray(out, np.float32)


def eigh_root(a32, p, dtype, ridge=1e-6):
  a = np.asarray(a32).astype(dtype)
  roots = []
  for m in a:
    w, v = scipy.linalg.eigh(0.5 * (m + m.T))
    w = np.maximum(w, 0.0)
    roots.append((v * ((w + ridge * w.max()) ** (-1.0 / p))) @ v.T)
  return np.stack(roots)


def rel_err(x, ref):
  x = np.asarray(x, np.float64)
  num = np.linalg.norm(x - ref, ord=2, axis=(-1, -2))
  return num / np.linalg.norm(ref, ord=2, axis=(-1, -2))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=20)
  parser.add_argument("--n", type=int, default=48)
  parser.add_argument("--cond", type=float, nargs="+", default=[1e1, 1e3, 1e5, 1e6])
  parser.add_argument("--p", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, n={args.n}")
  print(f"{'cond':>7} {'p':>2} {'method':<16} {'median':>9} {'worst':>9}")
  for cond in args.cond:
    for p in args.p:
      fns = {
        # fail_threshold=inf: measure the computed roots, not the identity fallback.
        m: jax.jit(
          lambda a, m=m, p=p: sops.linalg.inverse_pth_root(a, p, method=m, fail_threshold=np.inf)[0]
        )
        for m in ("coupled_newton", "eigh")
      }
      errs = {"coupled_newton": [], "eigh": [], "scipy eigh f32": []}
      for seed in range(args.seeds):
        a = prescribed(np.random.default_rng(seed), 3, args.n, cond)
        ref = eigh_root(a, p, np.float64)
        for m, fn in fns.items():
          errs[m].append(rel_err(fn(a), ref))
        errs["scipy eigh f32"].append(rel_err(eigh_root(a, p, np.float32), ref))
      for m, e in errs.items():
        e = np.concatenate(e)
        print(f"{cond:7.0e} {p:>2} {m:<16} {np.median(e):9.1e} {e.max():9.1e}", flush=True)


if __name__ == "__main__":
  main()
