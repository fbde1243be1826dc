# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Kronecker-factored statistics and preconditioning of blocked parameters.

The functions here are the parts of Shampoo that act on every step and are shared with the methods
that reuse Shampoo's statistics (SOAP): cutting a gradient tree into blocks
(:mod:`sops._src.blocking` decides how), accumulating the per-dimension statistics
``G_(d) G_(d)^T`` of every block into one stack per ``(size, p)`` group, and multiplying the blocks
by per-dimension matrices taken from such stacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sops._src import blocking, grafting


def to_block_list(
  leaves: Sequence[jax.Array], part: blocking.Partition, dtype: jnp.dtype
) -> list[jax.Array | None]:
  """Each preconditioned leaf as blocks ``(num_blocks, *block_shape)`` in ``dtype``, else None."""
  return [
    blocking.to_blocks(x.astype(dtype), lp) if lp.preconditioned else None
    for x, lp in zip(leaves, part.leaves, strict=True)
  ]


def factor_contributions(
  blocks: Sequence[jax.Array | None],
  part: blocking.Partition,
  stack_sizes: Sequence[int],
) -> tuple[jax.Array, ...]:
  """``G_(d) G_(d)^T`` of every block and factor, concatenated into one array per stack.

  Args:
    blocks: from :func:`to_block_list`.
    part: the partition the blocks come from.
    stack_sizes: number of entries of each stack; entries past the partition's factors (the
      padding to a multiple of ``num_shards``) get zeros.

  Returns:
    One ``(stack_size, size, size)`` array per stack.
  """
  contrib: list[list[jax.Array]] = [[] for _ in part.stack_keys]
  for xb, lp in zip(blocks, part.leaves, strict=True):
    for f in lp.factors:
      contrib[f.stack].append(blocking.factor_statistics(xb, f.dim))
  out = []
  for c, n in zip(contrib, stack_sizes, strict=True):
    pad = n - sum(x.shape[0] for x in c)
    if pad:
      c.append(jnp.zeros((pad, *c[0].shape[1:]), c[0].dtype))
    out.append(jnp.concatenate(c))
  return tuple(out)


def update_statistics(
  stats: tuple[jax.Array, ...],
  blocks: Sequence[jax.Array | None],
  part: blocking.Partition,
  b2: jax.typing.ArrayLike,
) -> tuple[jax.Array, ...]:
  """EMA (running sum when ``b2 == 1``) of the factor statistics, one batched update per stack."""
  contrib = factor_contributions(blocks, part, [s.shape[0] for s in stats])
  w_old, w_new = grafting.ema_weights(b2)
  return tuple((w_old * s + w_new * c).astype(s.dtype) for s, c in zip(stats, contrib, strict=True))


def scheduled_statistics(
  stats: tuple[jax.Array, ...],
  blocks: Sequence[jax.Array | None],
  part: blocking.Partition,
  b2: jax.typing.ArrayLike,
  count: jax.Array,
  every: jax.typing.ArrayLike,
  active: jax.typing.ArrayLike = True,
) -> tuple[jax.Array, ...]:
  """:func:`update_statistics` on steps ``1, 1 + every, ...`` (``count`` from 1), else ``stats``
  (also when ``active`` is False: a skipped step).

  The caller keeps the result finite by skipping steps whose gradient could overflow ``G G^T``
  (``utils.guarded_update``). The conditional stays even for ``every == 1``: it measured no slower,
  and it keeps the statistics computed identically in programs that do and do not also compute
  roots from them (the bit-for-bit equality of ``sops.async_shampoo`` and delayed roots).
  """
  due = ((count - 1) % jnp.asarray(every, jnp.int32) == 0) & active
  return jax.lax.cond(due, lambda: update_statistics(stats, blocks, part, b2), lambda: stats)


def leaf_factors(
  lp: blocking.LeafPartition, stacks: tuple[jax.Array, ...]
) -> list[tuple[int, jax.Array]]:
  """``(dim, matrices)`` of every factor of a leaf: its ``num_blocks`` entries of each stack."""
  return [(f.dim, stacks[f.stack][f.offset : f.offset + lp.num_blocks]) for f in lp.factors]


def precondition(
  xb: jax.Array,
  lp: blocking.LeafPartition,
  stacks: tuple[jax.Array, ...],
  transpose: bool = False,
) -> jax.Array:
  """Multiplies every block of a leaf by its factor matrices along each preconditioned dimension.

  With roots ``L^{-1/4}, R^{-1/4}`` of a matrix block ``G`` this is ``L^{-1/4} G R^{-1/4}``; with
  eigenbases ``Q_L, Q_R`` it is ``Q_L G Q_R^T``, and ``Q_L^T G Q_R`` when ``transpose``.
  """
  for dim, mats in leaf_factors(lp, stacks):
    xb = blocking.apply_factor(xb, dim, mats, transpose)
  return xb


def blocks_ready(lp: blocking.LeafPartition, ready: tuple[jax.Array, ...]) -> jax.Array:
  """``(num_blocks,)`` bool: every factor of the block has a root (``ready`` per stack entry)."""
  out = jnp.ones((lp.num_blocks,), bool)
  for _, entries in leaf_factors(lp, ready):
    out = out & entries
  return out


def _take(stack: jax.Array, rows: np.ndarray) -> jax.Array:
  """``stack[rows]`` for static ``rows``: a (strided) slice when they are evenly spaced."""
  if len(rows) == 1:
    return stack[rows[0] : rows[0] + 1]
  step = rows[1] - rows[0]
  if step > 0 and np.all(np.diff(rows) == step):
    return stack[rows[0] : rows[-1] + 1 : step]
  return jnp.take(stack, jnp.asarray(rows), axis=0)


def precondition_leaves(
  blocks: Sequence[jax.Array | None],
  part: blocking.Partition,
  stacks: tuple[jax.Array, ...],
  transpose: bool = False,
  group: bool = True,
) -> list[jax.Array | None]:
  """:func:`precondition` of every leaf given as blocks (``None`` stays ``None``).

  With ``group``, leaves with the same block shape and the same stacks per dimension (the query,
  key and value matrices of a transformer layer, say) are concatenated and multiplied in one
  batched product per dimension, so a step launches a few large products instead of one small one
  per leaf (for accelerators; on CPU the copies cost more than they save).
  """
  groups: dict[tuple, list[int]] = {}
  for i, (xb, lp) in enumerate(zip(blocks, part.leaves, strict=True)):
    if xb is not None:
      key = (lp.block_shape, tuple((f.dim, f.stack) for f in lp.factors))
      key = key if group else (i,)
      groups.setdefault(key, []).append(i)
  out = list(blocks)
  for idx in groups.values():
    if len(idx) == 1:
      out[idx[0]] = precondition(blocks[idx[0]], part.leaves[idx[0]], stacks, transpose)
      continue
    xb = jnp.concatenate([blocks[i] for i in idx])
    for dim, stack in ((f.dim, f.stack) for f in part.leaves[idx[0]].factors):
      rows = np.concatenate(
        [
          np.arange(f.offset, f.offset + part.leaves[i].num_blocks)
          for i in idx
          for f in part.leaves[i].factors
          if f.dim == dim
        ]
      )
      xb = blocking.apply_factor(xb, dim, _take(stacks[stack], rows), transpose)
    sizes = np.cumsum([part.leaves[i].num_blocks for i in idx])[:-1]
    for i, piece in zip(idx, jnp.split(xb, sizes), strict=True):
      out[i] = piece
  return out
