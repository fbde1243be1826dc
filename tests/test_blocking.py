# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of the static Shampoo partitioner against explicit numpy slicing."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from sops._src import blocking


def _part(shapes, block_size=4, max_dim=100, merge=True, override=None):
  return blocking.partition_tree(
    shapes,
    block_size=block_size,
    max_preconditioner_dim=max_dim,
    merge_small_dims=merge,
    exponent_override=override,
  )


@pytest.mark.parametrize(
  "shape,max_dim,expected",
  [
    ((3, 3, 64, 128), 1024, (576, 128)),
    ((3, 3, 64, 128), 128, (9, 64, 128)),
    ((1, 300, 1), 128, (300,)),
    ((2, 2, 2, 2), 16, (16,)),
    ((5, 7), 34, (5, 7)),
  ],
)
def test_merge_dims_merges_adjacent_dims_up_to_max(shape, max_dim, expected):
  assert blocking.merge_dims(shape, max_dim) == expected


@pytest.mark.parametrize("shape", [(10, 7), (3, 9, 5), (4, 4), (2, 3, 5, 6), (9,)])
def test_blocks_equal_numpy_slices_and_round_trip(shape):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape).astype(np.float32)
  leaf = _part([shape], block_size=4, merge=False).leaves[0]
  xb = np.asarray(blocking.to_blocks(jnp.asarray(x), leaf))
  if len(shape) > 1:
    # Independent reference: slice every block in row-major grid order and zero-pad it.
    ranges = [[(i, min(i + 4, d)) for i in range(0, d, 4)] for d in shape]
    for k, corner in enumerate(itertools.product(*ranges)):
      sl = tuple(slice(a, b) for a, b in corner)
      ref = np.zeros(leaf.block_shape, np.float32)
      ref[tuple(slice(0, b - a) for a, b in corner)] = x[sl]
      np.testing.assert_array_equal(xb[k], ref)
  np.testing.assert_array_equal(np.asarray(blocking.from_blocks(jnp.asarray(xb), leaf)), x)


def test_factor_statistics_and_apply_match_unfolded_products():
  rng = np.random.default_rng(1)
  xb = rng.standard_normal((3, 2, 4, 5))
  m = rng.standard_normal((3, 4, 4))
  got = np.asarray(blocking.factor_statistics(jnp.asarray(xb), 1))
  unfold = np.moveaxis(xb, 2, 1).reshape(3, 4, -1)  # mode-1 unfolding of each block
  np.testing.assert_allclose(got, unfold @ np.swapaxes(unfold, 1, 2), rtol=1e-5)
  got = np.asarray(blocking.apply_factor(jnp.asarray(xb), 1, jnp.asarray(m)))
  np.testing.assert_allclose(got, np.einsum("zik,zakc->zaic", m, xb), rtol=1e-5, atol=1e-5)


def test_partition_groups_factors_by_size_and_exponent():
  # (10, 7) with blocks of 4: grid 3x2, row factors of sizes 4,4,2 (padded), col factors 4,3.
  # (3, 4, 2) unmerged: rank 3, p=6, its own stacks even for size 4. Vectors: graft only.
  part = _part([(10, 7), (3,), (3, 4, 2)], block_size=4, merge=False)
  assert part.stack_keys == ((4, 4), (3, 6), (4, 6), (2, 6))
  assert part.stack_counts == (12, 1, 1, 1)
  # Row factors (block rows 0,0,1,1,2,2) then column factors (block cols 0,1,0,1,0,1).
  assert part.real_sizes[0] == (4, 4, 4, 4, 2, 2, 4, 3, 4, 3, 4, 3)
  assert not part.leaves[1].preconditioned
  assert part.leaves[0].p == 4 and part.leaves[2].p == 6


def test_dims_above_max_preconditioner_dim_get_no_factor():
  part = _part([(50, 3), (50, 60)], block_size=8, max_dim=40)
  emb, both_big = part.leaves
  assert [f.dim for f in emb.factors] == [1] and emb.p == 2 and emb.grid == (1, 1)
  assert emb.block_shape == (50, 3)
  assert not both_big.preconditioned


def test_exponent_override_applies_to_every_factor():
  part = _part([(5, 6), (2, 3, 4)], block_size=8, merge=False, override=3)
  assert {p for _, p in part.stack_keys} == {3}
