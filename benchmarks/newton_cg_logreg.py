# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Full-batch L2-regularized logistic regression: sops.newton_cg vs scipy Newton-CG, to 1e-9.

Objective (float64), scikit-learn's breast-cancer data standardized, labels y in {-1, +1}:

    f(w, b) = (1/n) sum_i log(1 + exp(-y_i (x_i . w + b))) + ||w||^2 / (2n)

(scikit-learn's LogisticRegression(C=1) objective divided by n). Both solvers start from zero and
stop when f - f* <= 1e-9, with f* the best value either reaches in a long run. scipy gets jitted
JAX value/grad/hessp callbacks, so the comparison is of the solvers, not of autodiff. Both check
the objective once per iteration (scipy in its callback). Prints a table of wall-clock seconds
(best of --repeats, compile excluded) and iterations.

    python benchmarks/newton_cg_logreg.py
    python benchmarks/newton_cg_logreg.py --quick
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)  # a script: float64 for the whole process

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.optimize  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import sops  # noqa: E402

TARGET = 1e-9


def make_problem():
  x, y = load_breast_cancer(return_X_y=True)
  x = jnp.asarray(StandardScaler().fit_transform(x))
  y = jnp.asarray(2.0 * y - 1.0)
  n = x.shape[0]

  def loss(w):
    z = x @ w[:-1] + w[-1]
    return jnp.mean(jnp.logaddexp(0.0, -y * z)) + 0.5 / n * jnp.sum(w[:-1] ** 2)

  return loss, x.shape[1] + 1


def run_scipy(loss, dim, f_star, xtol=1e-12):
  f = jax.jit(loss)
  g = jax.jit(jax.grad(loss))
  hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(loss), (w,), (v,))[1])
  w0 = np.zeros(dim)
  f(w0), g(w0), hvp(w0, w0)  # compile
  hit = {}
  start = time.perf_counter()

  def callback(xk):
    k = hit.setdefault("k", 0) + 1
    hit["k"] = k
    if "t" not in hit and float(f(xk)) - f_star <= TARGET:
      hit["t"], hit["its"] = time.perf_counter() - start, k

  res = scipy.optimize.minimize(
    lambda w: float(f(w)),
    w0,
    jac=lambda w: np.asarray(g(w)),
    hessp=lambda w, v: np.asarray(hvp(w, v)),
    method="Newton-CG",
    callback=callback,
    options={"xtol": xtol, "maxiter": 100},
  )
  return hit.get("t", float("nan")), hit.get("its", -1), float(res.fun), res


def run_sops(loss, dim, f_star, tx, max_steps=100):
  """A Python loop over a jitted step; the objective is checked on the host every step."""

  @jax.jit
  def step(w, state):
    updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    w = optax.apply_updates(w, updates)
    return w, state, loss(w)

  w = jnp.zeros(dim)
  state = tx.init(w)
  # Compile; twice, since optax line-search states start weakly typed and retrace once.
  jax.block_until_ready(step(*step(w, state)[:2]))
  start = time.perf_counter()
  best = np.inf
  for k in range(1, max_steps + 1):
    w, state, value = step(w, state)
    best = min(best, float(value))
    if best - f_star <= TARGET:
      return time.perf_counter() - start, k, best
  return float("nan"), -1, best


def run_sops_on_device(loss, dim, f_star, tx, max_steps=100):
  """The whole solve in one jitted ``lax.while_loop`` with the same stopping rule."""

  @jax.jit
  def solve(w):
    def cond(c):
      k, _, _, value = c
      return (k < max_steps) & (value - f_star > TARGET)

    def body(c):
      k, w, state, _ = c
      updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
      w = optax.apply_updates(w, updates)
      return k + 1, w, state, loss(w)

    state = tx.init(w)
    state = jax.tree.map(lambda a: jnp.asarray(a, a.dtype), state)  # drop weak types
    return jax.lax.while_loop(cond, body, (0, w, state, loss(w)))

  w = jnp.zeros(dim)
  jax.block_until_ready(solve(w))  # compile
  start = time.perf_counter()
  k, _, _, value = jax.block_until_ready(solve(w))
  seconds = time.perf_counter() - start
  if float(value) - f_star > TARGET:
    return float("nan"), -1, float(value)
  return seconds, int(k), float(value)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="2 repeats")
  args = parser.parse_args()
  repeats = 2 if args.quick else args.repeats

  loss, dim = make_problem()
  # f*: the better of a long scipy run and a long sops run.
  _, _, f_scipy, _ = run_scipy(loss, dim, -np.inf, xtol=1e-14)
  exact = sops.newton_cg(damping=0.0, adaptive_damping=False, maxiter=200, tol=1e-10)
  _, _, f_sops = run_sops(loss, dim, -np.inf, exact, max_steps=30)
  f_star = min(f_scipy, f_sops)

  plain = dict(damping=0.0, adaptive_damping=False, maxiter=100, tol=1e-3)
  backtracking = optax.scale_by_backtracking_linesearch(15)
  solvers = [
    ("scipy Newton-CG (jitted JAX callbacks)", None, None),
    ("newton_cg(damping=0, tol=1e-3)", sops.newton_cg(**plain), run_sops),
    ("  same, whole solve in lax.while_loop", sops.newton_cg(**plain), run_sops_on_device),
    (
      "newton_cg(damping=0, ...) + backtracking",
      sops.newton_cg(linesearch=backtracking, **plain),
      run_sops,
    ),
    (
      "  same, whole solve in lax.while_loop",
      sops.newton_cg(linesearch=backtracking, **plain),
      run_sops_on_device,
    ),
    ("newton_cg(maxiter=100), other defaults", sops.newton_cg(maxiter=100), run_sops),
  ]
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; breast cancer, n=569, d={dim}, "
    f"float64; target f - f* <= {TARGET:g} (f* = {f_star:.15f}); best of {repeats}"
  )
  header = f"{'solver':<44}{'seconds':>10}{'iterations':>12}{'speed-up':>10}"
  print(header)
  print("-" * len(header))
  t_scipy = None
  for name, tx, runner in solvers:
    runs = [
      run_scipy(loss, dim, f_star)[:2] if tx is None else runner(loss, dim, f_star, tx)[:2]
      for _ in range(repeats)
    ]
    t, its = min(r[0] for r in runs), runs[0][1]
    t_scipy = t if tx is None else t_scipy
    print(f"{name:<44}{t:>10.4f}{its:>12d}{t_scipy / t:>9.1f}x")


if __name__ == "__main__":
  main()
