# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Cost of one Newton-CG update in units of naive Hessian-vector products.

MLP 784-256-256-10 (tanh, softmax cross-entropy), a batch of random data, ``maxiter=10, tol=0``
(so CG runs exactly 10 iterations). Prints the time of one jitted ``update`` divided by 10 times the
time of one jitted naive HVP ``jax.jvp(jax.grad(loss))`` (forward and backward pass redone on
every call). Target: <= 1.1; linearizing the gradient once gets below 1.0.

    python benchmarks/newton_cg_step_cost.py           # batch 512, 20 repeats
    python benchmarks/newton_cg_step_cost.py --quick   # < 1 minute
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import sops


def init_mlp(key, sizes):
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True):
    params.append({"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros(n)})
  return params


def mlp(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def best_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--maxiter", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="5 repeats")
  args = parser.parse_args()
  repeats = 5 if args.quick else args.repeats

  key = jax.random.key(0)
  params = init_mlp(key, [784, 256, 256, 10])
  x = jax.random.normal(jax.random.key(1), (args.batch, 784))
  y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y).mean()

  grads = jax.grad(loss)(params)
  v = jax.tree.map(jnp.ones_like, params)

  naive_hvp = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])
  grad_fn = jax.jit(jax.grad(loss))
  t_hvp = best_time(naive_hvp, params, v, repeats=repeats)
  t_grad = best_time(grad_fn, params, repeats=repeats)

  configs = [
    ("hessian, fixed damping, no warm start", dict(adaptive_damping=False, warm_start=False), {}),
    ("hessian, defaults (LM damping, warm start)", {}, {}),
    (
      "gauss_newton, fixed damping, no warm start",
      dict(curvature="gauss_newton", adaptive_damping=False, warm_start=False),
      "gn",
    ),
  ]
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].platform}; MLP 784-256-256-10, "
    f"batch {args.batch}, maxiter={args.maxiter}, tol=0; best of {repeats}"
  )
  print(f"naive jvp(grad) HVP: {1e3 * t_hvp:.2f} ms   gradient: {1e3 * t_grad:.2f} ms")
  header = f"{'configuration':<46}{'update ms':>11}{'CG its':>8}{'update / (10 x HVP)':>22}"
  print(header)
  print("-" * len(header))
  for name, kw, extra in configs:
    tx = sops.scale_by_newton_cg(maxiter=args.maxiter, tol=0.0, **kw)
    state = tx.init(params)
    if extra == "gn":
      fn_kw = dict(
        value_fn=loss,
        predict_fn=lambda p: mlp(p, x),
        output_loss_fn=lambda z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
      )
    else:
      fn_kw = dict(value_fn=loss)
    update = jax.jit(lambda g, s, p, fn_kw=fn_kw, tx=tx: tx.update(g, s, p, **fn_kw))
    t = best_time(update, grads, state, params, repeats=repeats)
    its = int(update(grads, state, params)[1].info.cg_iterations)
    ratio = t / (args.maxiter * t_hvp)
    print(f"{name:<46}{1e3 * t:>11.2f}{its:>8d}{ratio:>22.3f}")


if __name__ == "__main__":
  main()
