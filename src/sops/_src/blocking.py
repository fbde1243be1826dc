# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Static partitioning of parameters into Shampoo blocks.

Everything here is decided from parameter *shapes* at trace time (plain Python, no traced values):

1. size-1 dimensions are dropped; tensors left with rank <= 1 are not preconditioned;
2. adjacent small dimensions are merged while their product stays <= ``block_size`` (a conv kernel
   3x3x64x128 becomes 576x128 for ``block_size >= 576``);
3. dimensions above ``max_preconditioner_dim`` get no factor (the block spans them whole);
4. other dimensions above ``block_size`` are split into blocks of ``block_size``; the last block is
   zero-padded to ``block_size`` (its statistics are identity-padded by the root, see
   ``real_sizes``).

A merged tensor with ``k`` preconditioned dimensions and a grid of ``n_1 x ... x n_r`` blocks gives
``n_1 ... n_r`` factors per preconditioned dimension. Factors are grouped by ``(size, p)`` -- the
factor size and the root exponent -- into one stack per group, so that statistics updates and roots
are one batched operation per group.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Factor:
  """One preconditioned dimension of a leaf: ``num_blocks`` consecutive entries of a stack."""

  dim: int  # merged dimension it acts on
  stack: int  # index of its (size, p) stack
  offset: int  # first entry in that stack


@dataclasses.dataclass(frozen=True)
class LeafPartition:
  """How one parameter leaf is reshaped, padded and cut into blocks."""

  shape: tuple[int, ...]  # original shape
  merged_shape: tuple[int, ...]  # after dropping size-1 dims and merging small dims
  block_shape: tuple[int, ...]  # extent of one block along each merged dim
  grid: tuple[int, ...]  # number of blocks along each merged dim
  factors: tuple[Factor, ...]  # empty: graft only
  p: int  # root exponent: the factors are raised to the power -1/p

  @property
  def num_blocks(self) -> int:
    return math.prod(self.grid)

  @property
  def preconditioned(self) -> bool:
    return bool(self.factors)


@dataclasses.dataclass(frozen=True)
class Partition:
  """The partition of a whole parameter tree (leaves in ``jax.tree.leaves`` order)."""

  leaves: tuple[LeafPartition, ...]
  stack_keys: tuple[tuple[int, int], ...]  # (size, p) of each stack
  stack_counts: tuple[int, ...]  # number of factors in each stack
  real_sizes: tuple[tuple[int, ...], ...]  # per stack entry: its unpadded size; entries past
  #   stack_counts (size 0) only round the stack up to a multiple of `stack_multiple`


def merge_dims(shape: Sequence[int], max_dim: int) -> tuple[int, ...]:
  """Drops size-1 dimensions and merges adjacent dimensions while their product is <= ``max_dim``.

  Examples:
    >>> merge_dims((3, 3, 64, 128), 1024)
    (576, 128)
    >>> merge_dims((1, 300, 1), 128)
    (300,)
  """
  out: list[int] = []
  for d in shape:
    if d == 1:
      continue
    if out and out[-1] * d <= max_dim:
      out[-1] *= d
    else:
      out.append(int(d))
  return tuple(out)


def partition_tree(
  shapes: Sequence[tuple[int, ...]],
  *,
  block_size: int,
  max_preconditioner_dim: int,
  merge_small_dims: bool,
  exponent_override: int | None,
  stack_multiple: int = 1,
) -> Partition:
  """Builds the static :class:`Partition` of a list of leaf shapes.

  Args:
    shapes: leaf shapes in tree order.
    block_size: largest factor size; larger dimensions are split into blocks of this size.
    max_preconditioner_dim: dimensions larger than this get no factor.
    merge_small_dims: whether adjacent small dimensions are merged.
    exponent_override: root exponent ``p`` for every factor; ``None`` gives ``2k`` for a tensor
      with ``k`` preconditioned dimensions.
    stack_multiple: each stack is rounded up to a multiple of this with empty (size 0) entries,
      so that it splits evenly over that many devices.

  Returns:
    The partition; stacks are ordered by first appearance.
  """
  keys: list[tuple[int, int]] = []
  counts: list[int] = []
  real: list[list[int]] = []
  leaves = []
  for shape in shapes:
    shape = tuple(int(s) for s in shape)
    squeezed = tuple(d for d in shape if d != 1)
    if len(squeezed) <= 1 or 0 in squeezed:  # vectors, scalars and empty leaves: graft only
      merged = squeezed or (1,)
      leaves.append(LeafPartition(shape, merged, merged, (1,) * len(merged), (), 1))
      continue
    if merge_small_dims:
      merged = merge_dims(squeezed, min(block_size, max_preconditioner_dim))
    else:
      merged = squeezed
    pre = [d <= max_preconditioner_dim for d in merged]
    block = tuple(min(d, block_size) if q else d for d, q in zip(merged, pre, strict=True))
    grid = tuple(-(-d // b) for d, b in zip(merged, block, strict=True))
    k = sum(pre)
    if k == 0:
      leaves.append(LeafPartition(shape, merged, merged, (1,) * len(merged), (), 1))
      continue
    p = int(exponent_override) if exponent_override is not None else 2 * k
    nb = math.prod(grid)
    factors = []
    for dim, q in enumerate(pre):
      if not q:
        continue
      key = (block[dim], p)
      if key not in keys:
        keys.append(key)
        counts.append(0)
        real.append([])
      s = keys.index(key)
      factors.append(Factor(dim, s, counts[s]))
      counts[s] += nb
      # Real size of each block along `dim`, in block (row-major grid) order.
      sizes_dim = [min(block[dim], merged[dim] - i * block[dim]) for i in range(grid[dim])]
      idx = np.unravel_index(np.arange(nb), grid)[dim]
      real[s].extend(sizes_dim[i] for i in idx)
    leaves.append(LeafPartition(shape, merged, block, grid, tuple(factors), p))
  for r in real:
    r.extend([0] * (-len(r) % stack_multiple))
  return Partition(tuple(leaves), tuple(keys), tuple(counts), tuple(tuple(r) for r in real))


def to_blocks(x: jax.Array, leaf: LeafPartition) -> jax.Array:
  """Reshapes a leaf to its blocks: shape ``(num_blocks, *block_shape)``, zero-padded."""
  x = x.reshape(leaf.merged_shape)
  pads = [
    (0, n * b - d) for d, b, n in zip(leaf.merged_shape, leaf.block_shape, leaf.grid, strict=True)
  ]
  if any(hi for _, hi in pads):
    x = jnp.pad(x, pads)
  r = len(leaf.merged_shape)
  split = [v for n, b in zip(leaf.grid, leaf.block_shape, strict=True) for v in (n, b)]
  x = x.reshape(split)
  x = x.transpose([2 * i for i in range(r)] + [2 * i + 1 for i in range(r)])
  return x.reshape((leaf.num_blocks, *leaf.block_shape))


def from_blocks(xb: jax.Array, leaf: LeafPartition) -> jax.Array:
  """Inverse of :func:`to_blocks`: drops the padding and restores the original shape."""
  r = len(leaf.merged_shape)
  x = xb.reshape((*leaf.grid, *leaf.block_shape))
  x = x.transpose([v for i in range(r) for v in (i, r + i)])
  x = x.reshape([n * b for n, b in zip(leaf.grid, leaf.block_shape, strict=True)])
  x = x[tuple(slice(0, d) for d in leaf.merged_shape)]
  return x.reshape(leaf.shape)


def _letters(r: int) -> str:
  return string.ascii_lowercase[:r]


def factor_statistics(xb: jax.Array, dim: int) -> jax.Array:
  """Batched ``G_(dim) G_(dim)^T`` of blocks ``(nb, *block)``: contracts every other dimension.

  For a matrix block this is ``G G^T`` for ``dim=0`` and ``G^T G`` for ``dim=1``.
  """
  r = xb.ndim - 1
  a = _letters(r)
  b = a[:dim] + "Z" + a[dim + 1 :]
  return jnp.einsum(f"y{a},y{b}->y{a[dim]}Z", xb, xb, precision=jax.lax.Precision.HIGHEST)


def apply_factor(xb: jax.Array, dim: int, mats: jax.Array, transpose: bool = False) -> jax.Array:
  """Batched product along ``dim``: ``y[.., i, ..] = sum_k M[i, k] x[.., k, ..]`` per block
  (``M^T`` in place of ``M`` when ``transpose``)."""
  r = xb.ndim - 1
  a = _letters(r)
  b = a[:dim] + "Z" + a[dim + 1 :]
  m = f"yZ{a[dim]}" if transpose else f"y{a[dim]}Z"
  return jnp.einsum(f"{m},y{b}->y{a}", mats, xb, precision=jax.lax.Precision.HIGHEST)
