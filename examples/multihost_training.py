# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Multi-process training: several JAX processes, one global mesh, Newton-CG, Shampoo and SOAP.

A Flax MLP on the scikit-learn digits, trained data-parallel under ``jit`` with shardings on a
global one-axis mesh ``("data",)`` of every device of every process. Each process builds only its
own rows of every batch and hands them to ``jax.make_array_from_process_local_data``; nothing is
sent between processes but what XLA's collectives send. With ``--fsdp`` the parameters and the
parameter-shaped optimizer state are split over the mesh too (``sops.fsdp_sharding``); Shampoo's
(``--optimizers soap``: SOAP's) statistics and preconditioner stacks are split either way
(``sops.shampoo_state_sharding``), so each device stores and roots ``1/N`` of the blocks.
``--checkpoint-dir`` saves a sharded orbax checkpoint after ``--checkpoint-step`` steps, which
``--restore`` continues from, with any process count.

    python -m sops.launch -n 2 examples/multihost_training.py          # 2 processes x 4 CPU devices
    python -m sops.launch -n 2 examples/multihost_training.py --fsdp   # parameters sharded too
    python examples/multihost_training.py                              # 1 process x 8 devices

One process with 8 devices and two with 4 each train identically (``tests/test_multihost.py``
checks it to 1e-10 in float64). On a cluster, start one process per host with your scheduler
instead of ``sops.launch`` (``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import sops.launch

if __name__ == "__main__" and sops.launch.COORDINATOR not in os.environ:  # before JAX starts
  if "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    _flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import sops  # noqa: E402


class MLP(nn.Module):
  """64 -> 128 -> 128 -> 10, tanh; parameters in the input's dtype (float64 under ``--x64``)."""

  @nn.compact
  def __call__(self, x):
    dense = lambda n: nn.Dense(n, dtype=x.dtype, param_dtype=x.dtype)  # noqa: E731
    x = nn.tanh(dense(128)(x))
    x = nn.tanh(dense(128)(x))
    return dense(10)(x)


def loss_fn(params, batch):
  logits = MLP().apply({"params": params}, batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def make_optimizer(name: str, n_dev: int, x64: bool) -> optax.GradientTransformation:
  if name == "newton_cg":
    return sops.newton_cg(maxiter=10)
  stats = "float64" if x64 else "float32"
  if name == "soap":
    return sops.soap(
      3e-3, block_size=64, precondition_every=5, statistics_dtype=stats, num_shards=n_dev
    )
  return sops.shampoo(
    3e-3,
    block_size=64,
    start_preconditioning_step=2,
    precondition_every=5,
    statistics_dtype=stats,
    num_shards=n_dev,
  )


def state_sharding(name: str, tx, abstract_state, mesh, params_sharding):
  """Shampoo, SOAP: stacks split over the mesh; others: parameter-shaped leaves like the params."""
  if name in ("shampoo", "soap"):
    return sops.shampoo_state_sharding(
      abstract_state, mesh, "data", params_sharding=params_sharding
    )
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
    tx, lambda _, s: s, abstract_state, params_sharding, transform_non_params=lambda _: replicated
  )


class Batches:
  """Step ``t``'s global batch is fixed by ``(seed, t)``; this process builds only its rows."""

  def __init__(self, sharding: NamedSharding, batch_size: int, seed: int, x64: bool):
    x, y = load_digits(return_X_y=True)
    self.x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float64 if x64 else np.float32)
    self.y = y.astype(np.int32)
    self.sharding, self.batch_size, self.seed = sharding, batch_size, seed
    rows = sharding.addressable_devices_indices_map((batch_size,)).values()
    self.rows = slice(min(r[0].start for r in rows), max(r[0].stop for r in rows))

  def __call__(self, t: int) -> dict[str, jax.Array]:
    idx = np.random.default_rng((self.seed, t)).choice(len(self.x), self.batch_size, replace=False)
    local = idx[self.rows]  # only this process's share of the global batch
    make = functools.partial(jax.make_array_from_process_local_data, self.sharding)
    return {
      "x": make(self.x[local], (self.batch_size, self.x.shape[1])),
      "y": make(self.y[local], (self.batch_size,)),
    }


def train(name: str, fsdp: bool, mesh, args) -> tuple[dict, list[float]]:
  """Trains one optimizer for ``args.steps`` steps (resuming from ``--restore``)."""
  n_dev = mesh.shape["data"]
  replicated = NamedSharding(mesh, P())
  batches = Batches(NamedSharding(mesh, P("data")), args.batch_size, args.seed, args.x64)
  model_init = functools.partial(MLP().init, x=jnp.zeros((1, 64), batches.x.dtype))
  init = lambda key: model_init(key)["params"]  # noqa: E731
  abstract = jax.eval_shape(init, jax.random.key(0))
  if fsdp:
    params_sh = sops.fsdp_sharding(abstract, mesh, "data", min_size=1024)
  else:
    params_sh = jax.tree.map(lambda _: replicated, abstract)
  tx = make_optimizer(name, n_dev, args.x64)
  state_sh = state_sharding(name, tx, jax.eval_shape(tx.init, abstract), mesh, params_sh)
  params = jax.jit(init, out_shardings=params_sh)(jax.random.key(args.seed))
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  start = 0
  ckpt_name = f"{name}_{'fsdp' if fsdp else 'dp'}"
  if args.restore:
    params, state, start = restore(os.path.join(args.restore, ckpt_name), params, state)

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    extra = {"value_fn": functools.partial(loss_fn, batch=batch)} if name == "newton_cg" else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, loss

  batch_sh = {"x": batches.sharding, "y": batches.sharding}
  step = jax.jit(
    step, in_shardings=(params_sh, state_sh, batch_sh), out_shardings=(params_sh, state_sh, None)
  )
  losses = []
  for t in range(start, args.steps):
    params, state, loss = step(params, state, batches(t))
    losses.append(float(loss))
    if args.checkpoint_dir and t + 1 == args.checkpoint_step:
      save(os.path.join(args.checkpoint_dir, ckpt_name), params, state, t + 1)
  return params, losses


def save(path: str, params, state, step: int) -> None:
  """A sharded orbax checkpoint: every process writes its own shards."""
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.abspath(path), {"params": params, "state": state, "step": step}, force=True)


def restore(path: str, params, state) -> tuple[dict, object, int]:
  """Restores onto this run's mesh and shardings, whatever the process count that wrote it."""
  import orbax.checkpoint as ocp

  like = {"params": params, "state": state, "step": 0}
  target = jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x
    ),
    like,
  )
  with ocp.StandardCheckpointer() as ckpt:
    out = ckpt.restore(os.path.abspath(path), target)
  return out["params"], out["state"], int(out["step"])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--optimizers", default="newton_cg,shampoo", help="also: soap")
  parser.add_argument("--fsdp", action="store_true", help="shard parameters too")
  parser.add_argument("--layouts", default="", help="dp,fsdp: several in one run (default --fsdp)")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--x64", action="store_true", help="float64 throughout")
  parser.add_argument("--checkpoint-dir", default="", help="save an orbax checkpoint here")
  parser.add_argument("--checkpoint-step", type=int, default=10)
  parser.add_argument("--restore", default="", help="continue from a --checkpoint-dir")
  parser.add_argument("--out", default="", help="write the final parameters (.npz)")
  parser.add_argument("--smoke", action="store_true", help="a few steps (checks that it runs)")
  args = parser.parse_args()
  if args.smoke:
    args.steps = 5
  distributed = sops.launch.initialize()
  jax.config.update("jax_enable_x64", args.x64)
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
  lead = jax.process_index() == 0
  if lead:
    print(
      f"sops {sops.__version__} | JAX {jax.__version__} | {jax.process_count()} process(es) x "
      f"{jax.local_device_count()} {jax.devices()[0].platform} devices | distributed {distributed}"
    )
  layouts = args.layouts.split(",") if args.layouts else ["fsdp" if args.fsdp else "dp"]
  finals = {}
  for name in args.optimizers.split(","):
    for layout in layouts:
      t0 = time.perf_counter()
      params, losses = train(name, layout == "fsdp", mesh, args)
      gathered = multihost_utils.process_allgather(params, tiled=True)  # every process: all of it
      for path, leaf in jax.tree_util.tree_flatten_with_path(gathered)[0]:
        finals[f"{name}/{layout}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
      if lead:
        print(
          f"{name:10s} {layout:4s}: loss {losses[0]:.4f} -> {losses[-1]:.4f} at step {args.steps} "
          f"({time.perf_counter() - t0:.1f} s, compilation included)",
          flush=True,
        )
  if args.out and lead:
    np.savez(args.out, **finals)


if __name__ == "__main__":
  sys.exit(main())
