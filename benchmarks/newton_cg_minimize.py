# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Whole-solve sops.newton_cg_minimize vs scipy's Newton-CG on small full-batch problems.

Three float64 problems from scikit-learn's bundled datasets, features standardized, objective
``mean loss + lambda / 2 ||w||^2`` with ``lambda = 1e-2`` and the bias unregularized; params
``{"w": ..., "b": ...}``, starting from zero:

* breast cancer (569 x 30), logistic regression, labels in {-1, +1};
* wine (178 x 13, 3 classes), softmax regression;
* diabetes (442 x 10), ridge regression on the raw targets (squared error / 2).

scipy's ``minimize(method="Newton-CG")`` gets jitted JAX callbacks (value, gradient and
Hessian-vector product on the flattened parameters, compiled before timing), so the comparison is
of the solvers and their host round trips, not of autodiff. ``sops.newton_cg_minimize`` runs the
whole solve in one jitted ``lax.while_loop``; a warm-up call compiles it. Reported: best-of
``--repeats`` wall-clock of one whole solve, Newton iterations, the final infinity norm of the
gradient, the relative difference ``||x_sops - x_scipy|| / ||x_scipy||`` of all parameters, and the
speed-up. Targets: speed-up >= 10x, <= 12 Newton iterations, relative difference <= 1e-5.

    python benchmarks/newton_cg_minimize.py            # best of 5
    python benchmarks/newton_cg_minimize.py --quick    # best of 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # a script: float64 for the whole process

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import sops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

LAMBDA = 1e-2
TARGET_SPEEDUP, TARGET_ITERATIONS, TARGET_REL_DIFF = 10.0, 12, 1e-5


def logistic(params, x, y, lam):
  z = x @ params["w"] + params["b"]
  return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def softmax(params, x, y, lam):
  z = x @ params["w"] + params["b"]
  nll = jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
  return jnp.mean(nll) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def ridge(params, x, y, lam):
  r = x @ params["w"] + params["b"] - y
  return 0.5 * jnp.mean(r**2) + 0.5 * lam * jnp.sum(params["w"] ** 2)


def problems():
  """``(name, fun, params0, x, y)`` for the three problems."""
  out = []
  x, y = load_breast_cancer(return_X_y=True)
  x = StandardScaler().fit_transform(x)
  p0 = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
  out.append(("breast cancer, logistic", logistic, p0, x, 2.0 * y - 1.0))
  x, y = load_wine(return_X_y=True)
  x = StandardScaler().fit_transform(x)
  p0 = {"w": jnp.zeros((x.shape[1], 3)), "b": jnp.zeros(3)}
  out.append(("wine, softmax", softmax, p0, x, y))
  x, y = load_diabetes(return_X_y=True)
  x = StandardScaler().fit_transform(x)
  p0 = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
  out.append(("diabetes, ridge", ridge, p0, x, y.astype(np.float64)))
  return [(n, f, p, jnp.asarray(x), jnp.asarray(y)) for n, f, p, x, y in out]


def best_of(fn, repeats):
  """``(best seconds, last result)`` over ``repeats`` calls (after one untimed warm-up)."""
  result = jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times), result


def run_scipy(fun, p0, x, y, xtol, repeats):
  flat0, unravel = ravel_pytree(p0)

  def flat_fun(w):
    return fun(unravel(w), x, y, LAMBDA)

  f = jax.jit(flat_fun)
  g = jax.jit(jax.grad(flat_fun))
  hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(flat_fun), (w,), (v,))[1])
  w0 = np.asarray(flat0)
  jax.block_until_ready((f(w0), g(w0), hvp(w0, w0)))  # compile

  def solve():
    return scipy.optimize.minimize(
      lambda w: float(f(w)),
      w0,
      jac=lambda w: np.asarray(g(w)),
      hessp=lambda w, v: np.asarray(hvp(w, v)),
      method="Newton-CG",
      options={"xtol": xtol, "maxiter": 200},
    )

  seconds, res = best_of(solve, repeats)
  grad_norm = float(jnp.max(jnp.abs(g(res.x))))
  return seconds, res.nit, grad_norm, np.asarray(res.x)


def run_sops(fun, p0, x, y, gtol, repeats):
  def solve():
    return sops.newton_cg_minimize(fun, p0, x, y, LAMBDA, gtol=gtol)

  seconds, (params, info) = best_of(solve, repeats)
  assert bool(info.converged), info
  return seconds, int(info.iterations), float(info.grad_norm), np.asarray(ravel_pytree(params)[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--gtol", type=float, default=1e-8, help="sops: max |gradient| to stop")
  parser.add_argument("--xtol", type=float, default=1e-8, help="scipy: mean |step| to stop")
  parser.add_argument("--quick", action="store_true", help="2 repeats")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  repeats = 2 if args.quick else args.repeats

  rows = []
  for name, fun, p0, x, y in problems():
    t_scipy, it_scipy, g_scipy, x_scipy = run_scipy(fun, p0, x, y, args.xtol, repeats)
    t_sops, it_sops, g_sops, x_sops = run_sops(fun, p0, x, y, args.gtol, repeats)
    rel = float(np.linalg.norm(x_sops - x_scipy) / np.linalg.norm(x_scipy))
    speedup = t_scipy / t_sops
    met = speedup >= TARGET_SPEEDUP and it_sops <= TARGET_ITERATIONS and rel <= TARGET_REL_DIFF
    rows.append(
      {
        "problem": name,
        "n_params": int(x_scipy.size),
        "scipy_ms": 1e3 * t_scipy,
        "sops_ms": 1e3 * t_sops,
        "speedup": speedup,
        "scipy_iterations": int(it_scipy),
        "sops_iterations": it_sops,
        "scipy_grad_inf": g_scipy,
        "sops_grad_inf": g_sops,
        "rel_diff": rel,
        "targets": "met" if met else "not met",
      }
    )

  meta = {
    **_common.machine_info(),
    "processor": platform.processor(),
    "platform": platform.platform(),
    "repeats": repeats,
    "lambda": LAMBDA,
    "sops_gtol": args.gtol,
    "scipy_xtol": args.xtol,
    "targets": {
      "speedup_min": TARGET_SPEEDUP,
      "iterations_max": TARGET_ITERATIONS,
      "rel_diff_max": TARGET_REL_DIFF,
    },
  }
  print(f"JAX {jax.__version__}, {meta['cpu']} ({meta['cores']} cores), float64, best of {repeats}")
  print(
    f"targets: speed-up >= {TARGET_SPEEDUP:g}x, sops iterations <= {TARGET_ITERATIONS}, "
    f"rel. diff <= {TARGET_REL_DIFF:g}; sops gtol={args.gtol:g}, scipy xtol={args.xtol:g}\n"
  )
  columns = (
    ("problem", "problem", ""),
    ("n_params", "params", "d"),
    ("scipy_ms", "scipy ms", ".3f"),
    ("sops_ms", "sops ms", ".3f"),
    ("speedup", "speed-up", ".1f"),
    ("scipy_iterations", "scipy its", "d"),
    ("sops_iterations", "sops its", "d"),
    ("scipy_grad_inf", "scipy max abs g", ".1e"),
    ("sops_grad_inf", "sops max abs g", ".1e"),
    ("rel_diff", "rel. diff", ".1e"),
    ("targets", "targets", ""),
  )
  _common.write_results("newton_cg_minimize", rows, meta, args.out, columns=columns)


if __name__ == "__main__":
  main()
