# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Communication volume per device of one sharded-``jit`` training step, read from compiled HLO.

One training step (``grads = jax.grad(loss)(params, batch)``, ``tx.update``,
``optax.apply_updates``) of the character transformer of ``benchmarks/transformer_lm.py`` (2
layers, d = 128, every weight 2-D; ``--quick``: 1 layer, d = 64, 32 characters) is compiled for 8
simulated CPU devices on a one-axis mesh ``("data",)``, for AdamW, Shampoo (``num_shards=8``) and
Newton-CG (``maxiter=10``), in three layouts:

* ``dp``: data parallel: batch ``P("data")``, parameters and parameter-shaped state replicated,
  Shampoo's statistics/root stacks split (``sops.shampoo_state_sharding``);
* ``fsdp``: parameters and parameter-shaped state ``sops.fsdp_sharding(..., min_size=1024)``
  (every matrix split over the 8 devices, LayerNorm scales and biases replicated), stacks split;
  XLA's sharding propagation decides how the forward and backward passes run;
* ``fsdp_gather``: the same shardings, but the loss gathers the whole parameters first
  (``jax.lax.with_sharding_constraint`` to replicated: ZeRO-3 / FSDP proper), so the model runs
  data parallel and only the weights (all-gather) and gradients (reduce-scatter) move.

:func:`collectives` lists every ``all-gather``, ``all-reduce``, ``reduce-scatter``,
``collective-permute`` and ``all-to-all`` (and their async ``-start`` forms) of the compiled
per-device program with its result bytes, and classifies it structurally by where its computation
is called from: ``every_step`` (the entry computation and what it calls), ``some_steps`` (inside a
branch of a ``conditional``) or ``per_iteration`` (the body or condition of a ``while`` with no
known trip count: Newton-CG's CG loop; loops with a known trip count multiply their contents
instead). Which branch runs is a run-time fact, so :func:`summarize` adds one rule from outside
the HLO: conditionals from the ``shampoo_roots`` / ``soap_basis`` named scopes run their costly
branch on root steps only ("extra on a root step"); every other conditional (the guard that skips
a step with a non-finite gradient, into whose normal branch XLA sinks most of Shampoo's update)
takes the same branch every step; per conditional only the largest branch counts. Per-device
traffic is estimated for ring algorithms: all-gather ``(N-1)/N`` x its (gathered) result,
reduce-scatter ``(N-1)/N`` x the full (unscattered) operand, all-reduce ``2 (N-1)/N`` x its
result, all-to-all ``(N-1)/N`` x its result, collective-permute its result; ``N`` is the size of
the replica group. The table shows this estimate (and the raw result bytes every step).

    python benchmarks/comm_volume.py           # the transformer (~6 min on a 2-core CPU)
    python benchmarks/comm_volume.py --quick   # a smaller transformer (~4 min: compilation)

Output: a markdown table on stdout, ``benchmarks/results/comm_volume.json`` (per program: count
and bytes of each collective kind and class; ``--details``: every collective, with its HLO
computation, class and ``op_name``).
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import re
import sys
import time
from typing import Any

if __name__ == "__main__" and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  _flags = os.environ.get("XLA_FLAGS", "")  # before JAX starts: 8 simulated CPU devices
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import sharded_state_memory as ssm  # noqa: E402
import transformer_lm as lm  # noqa: E402

import sops  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
EVERY_STEP, SOME_STEPS, PER_ITERATION = "every_step", "some_steps", "per_iteration"
# Named scopes of the conditionals that run only on root steps (see ``summarize``).
ROOT_SCOPES = ("shampoo_roots", "soap_basis")
# dp: data parallel; fsdp: parameters sharded, XLA's propagation decides the rest; fsdp_gather:
# parameters sharded, gathered whole (with_sharding_constraint) for the forward/backward pass.
LAYOUTS = ("dp", "fsdp", "fsdp_gather")
_BITS = {"pred": 8, "token": 0, "c64": 64, "c128": 128}

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]+m[0-9]+\w*)?)\[([^\]]*)\]")
_CALLS = re.compile(
  r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation|"
  r"called_computations|select|scatter)=(\{[^}]*\}|%?[\w.\-]+)"
)
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


def _split_shape(rest: str) -> tuple[str, str]:
  """Splits ``"<shape> <opcode>(..."`` into the shape text and the remainder (tuples nest)."""
  if not rest.startswith("("):
    shape, _, tail = rest.partition(" ")
    return shape, tail
  depth = 0
  for i, c in enumerate(rest):
    depth += (c == "(") - (c == ")")
    if depth == 0:
      return rest[: i + 1], rest[i + 1 :].lstrip()
  return rest, ""


def _arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """Every array ``dtype[dims]`` of an HLO shape (a tuple gives several), in order."""
  out = []
  for dtype, dims in _ARRAY.findall(shape):
    sizes = tuple(int(d.strip().lstrip("<=")) for d in dims.split(",") if d.strip())
    out.append((dtype, sizes))
  return out


def _nbytes(dtype: str, dims: tuple[int, ...]) -> int:
  bits = _BITS.get(dtype)
  if bits is None:
    digits = re.findall(r"\d+", dtype)
    bits = int(digits[0]) if dtype[0] in "fsub" and digits else 0
    bits = 8 if dtype.startswith("f8") else bits
  return math.ceil(math.prod(dims) * bits / 8)


def _group_size(line: str, default: int) -> int:
  """Devices in one replica group of a collective (``default``: every partition)."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
    return math.prod(sizes[k] for k in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[([\d,]+)\]<=", line)  # iota form [groups,size]<=[...]
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
  if m:
    return len(m.group(1).split(","))
  return default


def parse_hlo(hlo_text: str) -> tuple[dict[str, list[str]], str, int]:
  """The computations of an HLO module: ``{name: instruction lines}``, the entry's name and
  ``num_partitions`` (1 if absent)."""
  comps, entry, current = {}, None, None
  m = re.search(r"num_partitions=(\d+)", hlo_text)
  partitions = int(m.group(1)) if m else 1
  for line in hlo_text.splitlines():
    if current is None:
      h = _HEADER.match(line)
      if h and " = " not in line.split("->")[0]:
        current = h.group(2)
        comps[current] = []
        entry = current if h.group(1) else entry
    elif line.strip() == "}":
      current = None
    elif line.strip():
      comps[current].append(line)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry, partitions


def _callees(line: str) -> list[tuple[str, str, int]]:
  """``(computation, kind, branch index)`` called by one instruction; kind is ``call``,
  ``branch`` or ``loop`` (``loop`` with the known trip count, or 0, in place of the index)."""
  out = []
  trip = _TRIP.search(line)
  for key, value in _CALLS.findall(line):
    names = [v.strip().lstrip("%") for v in value.strip("{}").split(",") if v.strip()]
    if key == "branch_computations":
      out += [(name, "branch", i) for i, name in enumerate(names)]
    elif key in ("true_computation", "false_computation"):
      out += [(names[0], "branch", int(key == "false_computation"))]
    elif key in ("body", "condition"):
      out += [(names[0], "loop", int(trip.group(1)) if trip else 0)]
    else:
      out += [(name, "call", 0) for name in names]
  return out


def collectives(hlo_text: str) -> list[dict[str, Any]]:
  """Every collective of a compiled (per-device) HLO module, with where it runs.

  Walks the call graph from the entry computation (``calls=``, ``to_apply=``, ``body=``,
  ``condition=``, ``branch_computations=``, ``true_computation=``, ``false_computation=``) and
  returns one dict per collective and calling context (a computation called from two places
  appears twice):

  * ``op`` (``all-reduce``, ...; an async ``-start`` keeps its name, ``-done`` is skipped),
    ``name``, ``computation``, ``op_name`` (JAX's metadata), ``dtypes``, ``shapes``;
  * ``result_bytes``: bytes of the result (of every tuple element; for ``all-gather-start`` only
    its gathered outputs, for ``collective-permute-start`` only its output), ``group_size`` and
    ``traffic_bytes``, the ring-algorithm estimate of the bytes each device sends;
  * ``kind``: ``"per_iteration"`` inside a ``while`` without a known trip count, else
    ``"some_steps"`` inside a branch of a ``conditional``, else ``"every_step"``;
    ``conditionals`` lists the enclosing conditionals, outermost first, as ``{"name", "branch",
    "op_name"}``; ``multiplier`` is the product of the known trip counts of the loops around it.

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    A list of dicts, in the order the walk meets them.
  """
  comps, entry, partitions = parse_hlo(hlo_text)
  out, seen = [], set()

  def walk(comp: str, conds: tuple, loop: bool, mult: int) -> None:
    if (comp, conds, loop, mult) in seen or comp not in comps:
      return
    seen.add((comp, conds, loop, mult))
    for line in comps[comp]:
      m = _INSTR.match(line)
      if not m:
        continue
      name, rest = m.groups()
      shape, tail = _split_shape(rest)
      opcode = tail.split("(", 1)[0].strip()
      if opcode.removesuffix("-start") in COLLECTIVES:  # -done: a different opcode, skipped
        out.append(_record(name, opcode, shape, line, comp, partitions, conds, loop, mult))
      for callee, kind, extra in _callees(line):
        if kind == "branch":
          walk(callee, (*conds, (name, extra, _op_name(line))), loop, mult)
        elif kind == "loop":
          walk(callee, conds, loop or extra == 0, mult * max(extra, 1))
        else:
          walk(callee, conds, loop, mult)

  walk(entry, (), False, 1)
  return out


def _op_name(line: str) -> str:
  m = re.search(r'op_name="([^"]*)"', line)
  return m.group(1) if m else ""


def _record(name, opcode, shape, line, comp, partitions, conds, loop, mult) -> dict[str, Any]:
  arrays = _arrays(shape)
  if opcode == "all-gather-start":  # (operands..., outputs...)
    arrays = arrays[len(arrays) // 2 :]
  elif opcode == "collective-permute-start":  # (operand, output, contexts...)
    arrays = arrays[1:2]
  result = sum(_nbytes(d, s) for d, s in arrays)
  base = opcode.removesuffix("-start")
  n = 1 if base == "collective-permute" else _group_size(line, partitions)
  factor = {
    "all-gather": (n - 1) / n,
    "reduce-scatter": n - 1,  # the result is 1/n of the operand: (n-1)/n of n x result
    "all-reduce": 2 * (n - 1) / n,
    "all-to-all": (n - 1) / n,
    "collective-permute": 1.0,
  }[base]
  return {
    "op": opcode,
    "name": name,
    "computation": comp,
    "op_name": _op_name(line),
    "dtypes": [d for d, _ in arrays],
    "shapes": [list(s) for _, s in arrays],
    "result_bytes": result,
    "group_size": n,
    "traffic_bytes": result * factor,
    "kind": PER_ITERATION if loop else SOME_STEPS if conds else EVERY_STEP,
    "conditionals": [{"name": c, "branch": b, "op_name": o} for c, b, o in conds],
    "multiplier": mult,
  }


def _largest_path(ops: list[dict[str, Any]], key: str, depth: int = 0) -> float:
  """Bytes of ``ops`` along the costliest path: per conditional only its largest branch."""
  total = sum(o[key] * o["multiplier"] for o in ops if len(o["conditionals"]) == depth)
  branches = collections.defaultdict(lambda: collections.defaultdict(list))
  for o in ops:
    if len(o["conditionals"]) > depth:
      c = o["conditionals"][depth]
      branches[c["name"]][c["branch"]].append(o)
  for by_branch in branches.values():
    total += max(_largest_path(b, key, depth + 1) for b in by_branch.values())
  return total


def summarize(
  ops: list[dict[str, Any]], root_scopes: tuple[str, ...] = ROOT_SCOPES
) -> dict[str, Any]:
  """Bytes per step class, each as raw result bytes (``result_*``) and ring traffic
  (``traffic_*``), and the number of collectives of each class.

  Whether a branch runs is decided at run time, so the split needs one fact from outside the
  HLO: a conditional whose ``op_name`` contains one of ``root_scopes`` (Shampoo's
  ``shampoo_roots``, SOAP's ``soap_basis`` named scopes) runs its costly branch only on root
  steps, every other conditional (``sops``' guard that skips steps with a non-finite gradient,
  into whose normal branch XLA sinks most of the optimizer's work) takes the same branch every
  step. ``every_step``: outside root conditionals and unknown-trip loops; ``root_step``: the extra
  inside root conditionals; ``per_iteration``: inside unknown-trip loops (Newton-CG's CG loop);
  for every conditional only its largest branch counts.
  """

  def is_root(o):
    return any(s in c["op_name"] for c in o["conditionals"] for s in root_scopes)

  classes = {
    "every_step": [o for o in ops if o["kind"] != PER_ITERATION and not is_root(o)],
    "root_step": [o for o in ops if o["kind"] != PER_ITERATION and is_root(o)],
    "per_iteration": [o for o in ops if o["kind"] == PER_ITERATION],
  }
  out = {}
  for key in ("result_bytes", "traffic_bytes"):
    prefix = key.removesuffix("_bytes")
    for cls, members in classes.items():
      out[f"{prefix}_{cls}"] = _largest_path(members, key)
  for cls, members in classes.items():
    out[f"count_{cls}"] = len(members)
  out["count_in_conditional_every_step"] = sum(
    bool(o["conditionals"]) for o in classes["every_step"]
  )
  out["loop_in_root_conditional"] = any(is_root(o) for o in classes["per_iteration"])
  return out


def make_model(quick: bool, seed: int = 0) -> tuple[Any, Any, jax.Array]:
  """``(params, loss_fn(params, batch), batch)``: the transformer benchmark's model and one of its
  batches, or (``quick``) a 1-layer d = 64 version on random characters."""
  if not quick:
    task = lm.make_task(seed, 20, 1)
    return task.params, task.loss_fn, jnp.asarray(task.sample(0)[0])
  model = lm.CharLM(vocab=32, d=64, heads=4, layers=1, context=32)
  batch = jax.random.randint(jax.random.key(seed), (lm.BATCH, 33), 0, 32)
  params = model.init(jax.random.key(seed), batch[:, :-1])

  def loss_fn(params, batch):
    logits = model.apply(params, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  return params, loss_fn, batch


def make_optimizer(kind: str, n: int) -> optax.GradientTransformation:
  """``adamw``, ``shampoo`` (stacks padded for ``n`` devices) or ``newton_cg`` (10 CG steps)."""
  if kind == "adamw":
    return optax.adamw(1e-3, weight_decay=0.01)
  if kind == "shampoo":
    return sops.shampoo(3e-3, weight_decay=0.01, num_shards=n)
  if kind == "newton_cg":
    return sops.newton_cg(maxiter=10)
  raise ValueError(f"unknown optimizer {kind!r}")


def compiled_step(kind: str, layout: str, params, loss_fn, batch, n: int = 8) -> str:
  """The compiled HLO text of one training step of ``kind`` in ``layout`` (see ``LAYOUTS``)."""
  mesh = ssm.make_mesh(n)
  replicated = NamedSharding(mesh, P())
  if layout in ("fsdp", "fsdp_gather"):
    params_sh = sops.fsdp_sharding(params, mesh, "data", min_size=1024)
  elif layout == "dp":
    params_sh = jax.tree.map(lambda _: replicated, params)
  else:
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
  if layout == "fsdp_gather":  # ZeRO-3 style: the whole weights for the forward/backward pass
    full = jax.tree.map(lambda _: replicated, params)
    loss_fn = functools.partial(_gathered_loss, loss_fn, full)
  tx = make_optimizer(kind, n)
  abstract_state = jax.eval_shape(tx.init, params)
  state_sh = ssm.state_sharding(tx, abstract_state, mesh, None if layout == "dp" else params_sh)
  batch_sh = NamedSharding(mesh, P("data"))

  def step(params, state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    extra = {"value_fn": functools.partial(loss_fn, batch=batch)} if kind == "newton_cg" else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(
    step, in_shardings=(params_sh, state_sh, batch_sh), out_shardings=(params_sh, state_sh)
  )
  abstract_params = jax.eval_shape(lambda: params)
  lowered = jitted.lower(
    abstract_params, abstract_state, jax.ShapeDtypeStruct(batch.shape, batch.dtype)
  )
  return lowered.compile().as_text()


def _gathered_loss(loss_fn, shardings, params, batch):
  return loss_fn(jax.lax.with_sharding_constraint(params, shardings), batch)


def comm_rows(quick: bool, kinds=("adamw", "shampoo", "newton_cg"), layouts=LAYOUTS):
  """One row per optimizer x layout and every collective found (``ops``)."""
  params, loss_fn, batch = make_model(quick)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  rows, ops = [], {}
  for kind in kinds:
    for layout in layouts:
      t0 = time.perf_counter()
      found = collectives(compiled_step(kind, layout, params, loss_fn, batch))
      row = {"optimizer": kind, "layout": layout, "param_bytes": param_bytes} | summarize(found)
      for key in list(row):
        if key.startswith(("traffic_", "result_")):
          row[f"{key}_x_params"] = row[key] / param_bytes
      row["compile_s"] = time.perf_counter() - t0
      rows.append(row)
      ops[f"{kind}/{layout}"] = found
      print(
        f"{kind} {layout}: {len(found)} collectives, compiled in {row['compile_s']:.1f} s",
        flush=True,
      )
  return rows, ops


COLUMNS = (
  ("optimizer", "optimizer", ""),
  ("layout", "layout", ""),
  ("param_bytes", "param bytes", ",d"),
  ("traffic_every_step", "every step", ",.0f"),
  ("traffic_every_step_x_params", "x params", ".2f"),
  ("traffic_root_step", "extra on a root step", ",.0f"),
  ("traffic_root_step_x_params", "x params", ".2f"),
  ("traffic_per_iteration", "per CG iteration", ",.0f"),
  ("traffic_per_iteration_x_params", "x params", ".2f"),
  ("result_every_step_x_params", "raw every step x params", ".2f"),
  ("count_every_step", "# every step", ""),
  ("count_root_step", "# root step", ""),
  ("count_per_iteration", "# per iteration", ""),
)


def _aggregate(ops: dict[str, list[dict]]) -> dict[str, list[dict]]:
  """Per program: count, result bytes and traffic of each (op, class), for a small JSON."""
  out = {}
  for key, found in ops.items():
    acc = collections.defaultdict(lambda: {"count": 0, "result_bytes": 0, "traffic_bytes": 0.0})
    for c in found:
      a = acc[(c["op"], c["kind"])]
      a["count"] += 1
      a["result_bytes"] += c["result_bytes"]
      a["traffic_bytes"] += c["traffic_bytes"]
    out[key] = [{"op": op, "kind": kind, **a} for (op, kind), a in sorted(acc.items())]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1-layer d=64 transformer")
  parser.add_argument("--details", action="store_true", help="every collective in the JSON")
  parser.add_argument(
    "--out",
    default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "comm_volume.json"),
  )
  args = parser.parse_args()
  if jax.device_count() < 8:
    raise SystemExit(f"needs 8 devices, found {jax.device_count()}")
  rows, ops = comm_rows(args.quick)
  print(
    "\nPer-device bytes sent per step (ring estimate), 8 devices; 'extra on a root step': inside "
    "the shampoo_roots conditionals; 'per CG iteration': inside the CG while loop:\n"
  )
  meta = {"benchmark": "comm_volume", "machine": _common.machine_info(), "args": vars(args)}
  _common.write_results(
    "comm_volume",
    rows,
    meta,
    os.path.dirname(args.out),
    COLUMNS,
    extra={"collectives": ops if args.details else _aggregate(ops)},
    out_path=args.out,
  )


if __name__ == "__main__":
  main()
