# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Per-device optimizer-state memory with parameters and state sharded over N devices (FSDP).

The "large" model of ``benchmarks/state_memory.py`` (a 50,000 x 256 embedding and a 4096 x 1024
dense layer with bias, float32) on a one-axis mesh ``("data",)`` over the first N of 8 simulated
CPU devices, N = 1, 2, 4, 8. The parameters get ``sops.fsdp_sharding`` (each matrix split along
its largest evenly divisible dimension, the bias replicated); the optimizer states are created
*allocated*, directly sharded, with ``jax.jit(tx.init, out_shardings=...)``:

* ``adamw`` (``optax.adamw``) and ``newton_cg`` (``sops.newton_cg``: its ``cg_solution``): every
  parameter-shaped leaf sharded like its parameter (``optax.tree_map_params``), the rest
  replicated;
* ``shampoo`` / ``soap`` (``num_shards=N``): ``sops.shampoo_state_sharding`` -- the stacked
  statistics and roots (SOAP: eigenbases) split over the blocks' axis, the moments sharded like the
  parameters;
* ``shampoo, params replicated``: the same stacks split, but parameters and moments replicated
  (``params_sharding=None``: plain data parallelism), to show what FSDP adds.

Bytes per device are summed from the arrays' addressable shards (``shard.data.nbytes`` of each
shard on that device); the table reports the largest and smallest device, the ratio of the
largest to the N = 1 figure and the ideal ``1/N``. Every leaf that is replicated (it counts in
full on every device) is listed in the JSON, with its bytes.

    python benchmarks/sharded_state_memory.py           # the large model (~2 min on a 2-core CPU)
    python benchmarks/sharded_state_memory.py --quick   # 4096 x 256 embedding, 512 x 256 dense

Output: a markdown table on stdout, ``benchmarks/results/sharded_state_memory.json``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from typing import Any

if __name__ == "__main__" and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  _flags = os.environ.get("XLA_FLAGS", "")  # before JAX starts: 8 simulated CPU devices
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import state_memory  # noqa: E402

import sops  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)
# (row label, optimizer, FSDP parameters?)
VARIANTS = (
  ("adamw", "adamw", True),
  ("newton_cg", "newton_cg", True),
  ("shampoo", "shampoo", True),
  ("soap", "soap", True),
  ("shampoo, params replicated", "shampoo", False),
)
MB = 2**20


def model_params(quick: bool = False) -> dict[str, Any]:
  """Abstract parameters: ``state_memory.large_params()``, or a small version of it for tests."""
  if not quick:
    return state_memory.large_params()
  f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
  return {"embed": f32((4096, 256)), "dense": {"kernel": f32((512, 256)), "bias": f32((256,))}}


def make_mesh(n: int) -> Mesh:
  """A one-axis ``("data",)`` Auto mesh over the first ``n`` devices."""
  return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def make_optimizer(kind: str, n: int) -> optax.GradientTransformation:
  """``adamw``, ``newton_cg``, ``shampoo`` or ``soap``; Shampoo/SOAP stacks padded for ``n``."""
  if kind == "adamw":
    return optax.adamw(1e-3, weight_decay=0.01)
  if kind == "newton_cg":
    return sops.newton_cg(maxiter=10)
  if kind in ("shampoo", "soap"):
    return getattr(sops, kind)(1e-3, weight_decay=0.01, num_shards=n)
  raise ValueError(f"unknown optimizer {kind!r}")


def _is_shampoo(x: Any) -> bool:
  return isinstance(x, (sops.ScaleByShampooState, sops.ScaleBySoapState))


def state_sharding(
  tx: optax.GradientTransformation, abstract_state: Any, mesh: Mesh, params_sharding: Any
) -> Any:
  """Shampoo/SOAP stacks split over ``"data"``; parameter-shaped leaves like the parameters.

  ``params_sharding`` is a pytree of shardings shaped like the parameters, or ``None``
  (parameter-shaped state replicated). Everything else is replicated.

  ``optax.tree_map_params`` alone fails on a state holding a Shampoo state: it calls ``tx.init``
  on a placeholder with no leaves, and Shampoo's stacks (one per block shape) then come out as
  empty tuples, a tree structure unlike the real state's. So each Shampoo/SOAP state is swapped for
  a single marker leaf on both sides, ``tree_map_params`` shards the rest, and the Shampoo states
  get :func:`sops.shampoo_state_sharding`'s shardings.

  Args:
    tx: the optimizer.
    abstract_state: ``jax.eval_shape(tx.init, params)``.
    mesh: a mesh with an Auto axis ``"data"``.
    params_sharding: the parameters' shardings, or ``None``.

  Returns:
    A pytree of shardings with the structure of ``abstract_state``.
  """
  replicated = NamedSharding(mesh, P())
  marker = object()  # a leaf standing in for a whole Shampoo/SOAP state
  swap = lambda s: jax.tree.map(lambda x: marker if _is_shampoo(x) else x, s, is_leaf=_is_shampoo)  # noqa: E731
  if params_sharding is None:
    like_params, rest = (lambda _: replicated), ()
  else:
    like_params, rest = (lambda _, s: s), (params_sharding,)
  base = optax.tree_map_params(
    lambda p: swap(tx.init(p)),
    like_params,
    swap(abstract_state),
    *rest,
    transform_non_params=lambda _: replicated,
  )
  stacks = sops.shampoo_state_sharding(
    abstract_state, mesh, "data", params_sharding=params_sharding
  )
  return jax.tree.map(
    lambda s, b, st: st if _is_shampoo(s) else b, abstract_state, base, stacks, is_leaf=_is_shampoo
  )


def per_device_bytes(tree: Any, devices: list) -> dict[Any, int]:
  """Bytes each device holds of the arrays in ``tree``: the sum of its addressable shards."""
  total = collections.Counter({d: 0 for d in devices})
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      total[shard.device] += shard.data.nbytes
  return dict(total)


def replicated_leaves(tree: Any, n: int) -> list[dict[str, Any]]:
  """Leaves stored in full on every device (of ``n > 1``): path, shape, dtype, bytes."""
  if n == 1:
    return []
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if leaf.sharding.is_fully_replicated:
      out.append(
        {
          "path": jax.tree_util.keystr(path),
          "shape": list(leaf.shape),
          "dtype": str(leaf.dtype),
          "bytes": leaf.nbytes,
        }
      )
  return out


def measure(kind: str, n: int, abstract_params: Any, fsdp: bool = True) -> dict[str, Any]:
  """Allocates parameters and ``kind``'s state on ``n`` devices; returns the per-device bytes."""
  mesh = make_mesh(n)
  devices = list(mesh.devices.flat)
  replicated = NamedSharding(mesh, P())
  if fsdp:
    params_sh = sops.fsdp_sharding(abstract_params, mesh, "data")
  else:
    params_sh = jax.tree.map(lambda _: replicated, abstract_params)

  def init_params():
    keys = jax.random.split(jax.random.key(0), len(jax.tree.leaves(abstract_params)))
    leaves, treedef = jax.tree.flatten(abstract_params)
    return jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )

  params = jax.jit(init_params, out_shardings=params_sh)()
  tx = make_optimizer(kind, n)
  abstract_state = jax.eval_shape(tx.init, abstract_params)
  state_sh = state_sharding(tx, abstract_state, mesh, params_sh if fsdp else None)
  state = jax.block_until_ready(jax.jit(tx.init, out_shardings=state_sh)(params))
  state_b = per_device_bytes(state, devices)
  params_b = per_device_bytes(params, devices)
  rep = replicated_leaves(state, n)
  row = {
    "n_devices": n,
    "state_mb_max": max(state_b.values()) / MB,
    "state_mb_min": min(state_b.values()) / MB,
    "params_mb_max": max(params_b.values()) / MB,
    "params_mb_min": min(params_b.values()) / MB,
    "state_total_mb": state_memory.nbytes(abstract_state) / MB,
    "replicated_state_mb": sum(r["bytes"] for r in rep) / MB,
    "replicated_state_leaves": rep,
    "state_bytes_per_device": [state_b[d] for d in devices],
    "params_bytes_per_device": [params_b[d] for d in devices],
  }
  del params, state
  return row


def memory_rows(abstract_params: Any, ns=DEVICE_COUNTS, variants=VARIANTS) -> list[dict[str, Any]]:
  """One row per (variant, N), with ratios of the per-device maxima to that variant's N = 1."""
  rows = []
  for label, kind, fsdp in variants:
    base = None
    for n in ns:
      row = {"optimizer": label, "fsdp": fsdp} | measure(kind, n, abstract_params, fsdp)
      base = base or row
      row["state_ratio"] = row["state_mb_max"] / base["state_mb_max"]
      row["params_ratio"] = row["params_mb_max"] / base["params_mb_max"]
      row["ideal_ratio"] = base["n_devices"] / n
      rows.append(row)
      print(
        f"{label} N={n}: state {row['state_mb_max']:.2f} MB/device (x{row['state_ratio']:.3f})",
        flush=True,
      )
  return rows


COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("n_devices", "N", ""),
  ("state_mb_max", "state MB/device max", ".2f"),
  ("state_mb_min", "min", ".2f"),
  ("params_mb_max", "params MB/device", ".2f"),
  ("state_ratio", "state vs N=1", ".3f"),
  ("params_ratio", "params vs N=1", ".3f"),
  ("ideal_ratio", "ideal 1/N", ".3f"),
  ("replicated_state_mb", "replicated state MB", ".3f"),
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small model (tests, smoke runs)")
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "sharded_state_memory.json"
    ),
  )
  args = parser.parse_args()
  if jax.device_count() < max(DEVICE_COUNTS):
    raise SystemExit(f"needs {max(DEVICE_COUNTS)} devices, found {jax.device_count()}")
  params = model_params(args.quick)
  rows = memory_rows(params)
  pmb = state_memory.nbytes(params) / MB
  print(f"\nPer-device bytes of allocated, sharded state ({pmb:.2f} MB of parameters):\n")
  meta = {
    "benchmark": "sharded_state_memory",
    "machine": _common.machine_info(),
    "args": vars(args),
  }
  meta["param_shapes"] = jax.tree.map(lambda x: list(x.shape), params)
  _common.write_results(
    "sharded_state_memory", rows, meta, os.path.dirname(args.out), COLUMNS, out_path=args.out
  )


if __name__ == "__main__":
  main()
