# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""What :class:`sops.AsyncRoots` computes off the training step and how it moves the results.

The root functions of a snapshot (whole stacks, a device's share of them, or a staggered chunk),
the share layout of a state split over devices, and the pure functions that install finished
roots into a :class:`sops.ScaleByShampooState`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sops._src import roots as _roots
from sops._src import storage as _storage
from sops._src.shampoo import (
  _DEFAULT_BLOCK_SIZE,
  _DEFAULT_MAX_PRECONDITIONER_DIM,
  ScaleByShampooState,
  _partition,
  _root_kernel,
  _static_int,
)

ROOT_ARGS = (
  "block_size",
  "max_preconditioner_dim",
  "merge_small_dims",
  "exponent_override",
  "num_shards",
  "inverse_root",
  "matrix_epsilon",
  "inverse_failure_threshold",
  "statistics_dtype",
)


class Plan(NamedTuple):
  """What a pipeline computes, for one model and the transform's hyperparameters."""

  real_sizes: tuple[tuple[int, ...], ...]  # per stack: the unpadded size of each block
  schedules: tuple[_roots.StackSchedule, ...]  # per stack: its staggered chunks (or whole)
  roots: Any  # (statistics, eigenbases, real_sizes) -> RootResult
  chunk_roots: Any  # (chunks, k_reals, ids) -> per stack in ids: (roots, failed, error)


def root_function(momentum: Any, every: int = 1, stagger: bool = False, **kwargs: Any) -> Plan:
  """The roots as :func:`sops.shampoo` with the hyperparameters ``kwargs`` (among
  ``ROOT_ARGS``) computes them, for parameters shaped like ``momentum`` and statistics in their
  stored form: ``roots`` of whole stacks, or of one share of their blocks with the matching
  ``real_sizes`` (a static argument), not yet installed (failed blocks hold the identity); and
  ``chunk_roots`` of the staggered chunks of the stacks ``ids`` (static), as the delayed mode
  computes them."""
  get = kwargs.get
  sdt = _storage.compute_dtype(get("statistics_dtype", "float32"))
  shards = _static_int("num_shards", get("num_shards"), 1, 1)
  part = _partition(
    tuple(tuple(jnp.shape(x)) for x in jax.tree.leaves(momentum)),
    _static_int("block_size", get("block_size"), _DEFAULT_BLOCK_SIZE, 1),
    _static_int(
      "max_preconditioner_dim", get("max_preconditioner_dim"), _DEFAULT_MAX_PRECONDITIONER_DIM, 1
    ),
    get("merge_small_dims", True),
    _static_int("exponent_override", get("exponent_override"), None, 1),
    shards,
  )
  cfg = _roots.as_root_config(get("inverse_root", "auto"))
  ridge, threshold = get("matrix_epsilon", 1e-6), get("inverse_failure_threshold", 1.0)
  compute = _root_kernel(cfg, sdt, ridge, threshold)

  def roots(stats, bases, real_sizes):
    stats = tuple(_storage.decode(x, sdt) for x in stats)
    return _roots.snapshot_roots(stats, bases, part.stack_keys, real_sizes, compute)

  def chunk_roots(chunks, k_reals, ids):
    out, previous = [], None
    for i in ids:
      mats = _roots.after(_storage.decode(chunks[i], sdt), previous)  # LAPACK stacks in turn
      eye = jnp.broadcast_to(jnp.eye(mats.shape[-1], dtype=mats.dtype), mats.shape)
      previous, _, err, failed = compute(mats, eye, None, k_reals[i], p=part.stack_keys[i][1])
      out.append((previous, failed, jnp.max(jnp.where(failed, 0.0, err)).astype(jnp.float32)))
    return tuple(out)

  schedules = tuple(_roots.stack_schedule(len(r), shards, every, stagger) for r in part.real_sizes)
  return Plan(part.real_sizes, schedules, roots, chunk_roots)


def install_chunks(state, result, phase, step, ids, schedules):
  """Installs the roots of a staggered snapshot (chunk ``phase`` of the stacks ``ids``) as first
  used at ``step``, as the delayed mode's staggered refresh does: failed blocks keep their root
  and step."""
  dtype = result[0][0].dtype if result else jnp.float32
  fields = ("preconditioners",)
  full = _storage.decode_state(state, dtype, fields)
  roots, steps = list(full.preconditioners), list(full.root_steps)
  errs, fails = [jnp.zeros([], jnp.float32)], jnp.zeros([], jnp.int32)
  for i, (new, failed, err) in zip(ids, result, strict=True):
    sch = schedules[i]
    off = _roots.chunk_offset(sch, phase)
    old = _roots.chunk(roots[i], sch, off)
    roots[i] = _roots.unchunk(roots[i], jnp.where(failed[:, None, None], old, new), sch, off)
    kept = jnp.where(failed, _roots.chunk(steps[i], sch, off), step)
    steps[i] = _roots.unchunk(steps[i], kept, sch, off)
    errs.append(err)
    fails = fails + jnp.sum(failed, dtype=jnp.int32)
  info = _roots.computed_info(full.info, jnp.max(jnp.stack(errs)), fails)
  new_state = full._replace(preconditioners=tuple(roots), root_steps=tuple(steps), info=info)
  return _storage.encode_state(new_state, state, fields)


class Share(NamedTuple):
  """The blocks of every stack that one group of devices holds (all of them if not split)."""

  devices: tuple[Any, ...] | None  # the devices holding these blocks; None: whole stacks
  slices: tuple[slice, ...]  # per stack: its blocks in this share


def share_layout(node: ScaleByShampooState, split: bool) -> tuple[Share, ...]:
  """The shares of a state whose stacks are split over devices (``shampoo_state_sharding``): one
  per distinct block range that this process holds, in order of the blocks. A state whose stacks
  are not split (or with ``split=False``, a ``pmap``-replicated one) is one share of whole
  stacks."""
  stacks = [jax.tree.leaves(x)[0] for x in node.statistics]
  whole = (Share(None, tuple(slice(None) for _ in stacks)),)
  if not (split and stacks):
    return whole
  maps = [x.sharding.addressable_devices_indices_map(x.shape) for x in stacks]

  def rows(i, device):
    return maps[i][device][0].indices(stacks[i].shape[0])[:2]  # (start, stop) of its blocks

  groups: dict[tuple[tuple[int, int], ...], list[Any]] = {}  # slices are unhashable before 3.12
  for device in maps[0]:
    groups.setdefault(tuple(rows(i, device) for i in range(len(stacks))), []).append(device)
  (only,) = groups if len(groups) == 1 else (None,)
  if only is not None and all(r == (0, x.shape[0]) for r, x in zip(only, stacks, strict=True)):
    return whole
  return tuple(Share(tuple(groups[key]), tuple(slice(*r) for r in key)) for key in sorted(groups))


def shard_on(x: jax.Array, device: Any) -> jax.Array:
  """The shard of ``x`` that ``device`` holds."""
  return next(s.data for s in x.addressable_shards if s.device == device)


def install(state: ScaleByShampooState, result: _roots.RootResult, step: jax.Array):
  """:func:`sops._src.roots.install_state` on a state whose roots may be stored compactly."""
  dtype = result.roots[0].dtype if result.roots else jnp.float32
  fields = ("preconditioners",)
  full = _storage.decode_state(state, dtype, fields)
  return _storage.encode_state(_roots.install_state(full, result, step), state, fields)


def replica_devices(node: ScaleByShampooState) -> list[Any] | None:
  """The devices of a ``pmap``-replicated state (a leading replica axis), else ``None``."""
  count = node.shampoo_count
  if jnp.ndim(count) == 0:
    return None
  n = jnp.shape(count)[0]
  shards = sorted(getattr(count, "addressable_shards", []), key=lambda x: x.index[0].start or 0)
  if len(shards) == n:  # one replica per device, in the order of the replica axis
    return [x.device for x in shards]
  return jax.local_devices()[:n]
