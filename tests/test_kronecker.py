# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of the shared Kronecker helpers: grouped preconditioning equals per-leaf products."""

import jax.numpy as jnp
import numpy as np
import pytest

from sops._src import blocking, kronecker


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("group", [False, True])
def test_grouped_preconditioning_equals_per_leaf(rng, transpose, group):
  # q, k, v share their block shape and stacks (one batched product per dimension); the padded
  # (300, 8) and the 3-D leaf form groups of their own; the vector is not preconditioned.
  shapes = [(16, 16), (16, 16), (40, 16), (16, 16), (300, 8), (4, 5, 6), (7,)]
  part = blocking.partition_tree(
    shapes, block_size=16, max_preconditioner_dim=4096, merge_small_dims=False, exponent_override=2
  )
  stacks = tuple(
    jnp.asarray(rng.standard_normal((len(r), s, s)), jnp.float32)
    for (s, _), r in zip(part.stack_keys, part.real_sizes, strict=True)
  )
  leaves = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  blocks = kronecker.to_block_list(leaves, part, jnp.float32)
  got = kronecker.precondition_leaves(blocks, part, stacks, transpose, group)
  for xb, lp, g in zip(blocks, part.leaves, got, strict=True):
    if xb is None:
      assert g is None
      continue
    want = kronecker.precondition(xb, lp, stacks, transpose)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-5)
