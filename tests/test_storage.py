# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Compact storage of Shampoo's state (sops.StateStorage): codecs against float64 references,
exact re-encoding, training with every option, and the state under jit, sharding and async roots.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sops
from sops._src import storage as st

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

S = sops.StateStorage
# Packed float storage alone is tested against full storage below; "compact" is the last one
# without the bfloat16 momentum.
OPTIONS = {
  "bf16": S(statistics="bfloat16", preconditioners="bfloat16"),
  "int16": S(statistics="int16", preconditioners="int16"),
  "compact-bf16-momentum": S(True, "int16", "int8", "bfloat16"),
}
KW = dict(block_size=8, start_preconditioning_step=2, precondition_every=3)


def _sym(rng, batch, n):
  a = rng.standard_normal((batch, n, n))
  return a @ np.swapaxes(a, -1, -2) / n


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_pack_unpack_round_trips_symmetric_matrices(rng, n):
  a = _sym(rng, 3, n)
  v = st.pack(jnp.asarray(a))
  assert v.shape == (3, n * (n + 1) // 2)
  np.testing.assert_array_equal(np.asarray(st.unpack(v, n)), a.astype(np.float32))
  # Every entry of the upper triangle is stored once (no entry dropped or duplicated).
  rows, cols = np.triu_indices(n)
  upper = a[..., rows, cols].astype(np.float32)
  np.testing.assert_array_equal(np.sort(np.asarray(v), -1), np.sort(upper, -1))


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantisation_error_is_within_half_a_step_and_the_diagonal_is_exact(rng, dtype, symmetric):
  # Row i of the strict upper triangle has step s_i <= 2 max_j |a_ij| / qmax (a power of two):
  # every entry is off by at most s_i / 2 <= max_j |a_ij| / qmax; the diagonal is kept exactly.
  n, qmax = 12, np.iinfo(dtype).max
  a = _sym(rng, 4, n).astype(np.float32)
  dec = np.asarray(st.decode(st.encode(jnp.asarray(a), jnp.dtype(dtype), symmetric), jnp.float32))
  np.testing.assert_array_equal(np.diagonal(dec, axis1=-2, axis2=-1), np.diagonal(a, 0, -2, -1))
  np.testing.assert_array_equal(dec, np.swapaxes(dec, -1, -2))
  upper = np.triu(np.abs(a.astype(np.float64)), 1)
  row = np.minimum(np.arange(n)[:, None], np.arange(n)[None, :])
  bound = (upper.max(-1) / qmax)[..., row] * (1 + 1e-6)
  err = np.abs(dec.astype(np.float64) - a)
  assert np.all(err <= bound + 1e-12), np.max(err / (bound + 1e-30))
  assert np.max(err) > 0  # a real quantisation, not a copy


def test_bfloat16_and_packed_float_storage_are_rounding_and_lossless(rng):
  a = _sym(rng, 2, 9).astype(np.float32)
  x = jnp.asarray(a)
  np.testing.assert_array_equal(np.asarray(st.decode(st.encode(x, None, True), jnp.float32)), a)
  bf = np.asarray(st.decode(st.encode(x, jnp.dtype("bfloat16"), True), jnp.float32))
  np.testing.assert_allclose(bf, a, rtol=2.0**-8, atol=0)


@pytest.mark.parametrize("dtype", [None, "bfloat16", "int8", "int16"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_encoding_a_decoded_value_gives_it_back_bit_for_bit(rng, dtype, symmetric):
  # So roots kept between root computations (and snapshots kept in the state) never drift.
  x = jnp.asarray(_sym(rng, 3, 10), jnp.float32)
  enc = st.encode(x, None if dtype is None else jnp.dtype(dtype), symmetric)
  again = st.encode_like(st.decode(enc, jnp.float32), enc)
  for u, v in zip(jax.tree.leaves(enc), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_zero_row_and_an_identity_are_stored_exactly():
  eye = jnp.broadcast_to(jnp.eye(5), (2, 5, 5))
  for dtype in ("int8", "int16"):
    enc = st.encode(eye, jnp.dtype(dtype), True)
    np.testing.assert_array_equal(np.asarray(st.decode(enc, jnp.float32)), np.asarray(eye))
    np.testing.assert_array_equal(np.asarray(enc.scales), 1.0)  # all-zero rows: scale 1


def _problem(rng):
  params = {
    "w": jnp.asarray(rng.standard_normal((20, 12)) * 0.3, jnp.float32),
    "v": jnp.asarray(rng.standard_normal((12, 5)) * 0.3, jnp.float32),
    "b": jnp.zeros(12, jnp.float32),
  }
  x = jnp.asarray(rng.standard_normal((64, 20)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((64, 5)), jnp.float32)

  def loss(p):
    return jnp.mean((jnp.tanh(x @ p["w"] + p["b"]) @ p["v"] - y) ** 2)

  return params, loss


def _step(tx, loss):
  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  return step


def _train(tx, params, loss, steps=15, state=None):
  step = _step(tx, loss)
  state = tx.init(params) if state is None else state
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_packed_float_storage_follows_the_full_storage_trajectory(rng):
  # Lossless but for the rounding asymmetry of G G^T (the packed form keeps the mean of the two
  # triangles). Compared in float64: in float32 early roots of rank-deficient statistics amplify
  # any rounding difference to ~1e-4 within 15 steps (see tests/test_sharding.py).
  with jax.enable_x64(True):
    params, loss = _problem(rng)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    kw = dict(KW, statistics_dtype="float64")
    p_full, s_full = _train(sops.shampoo(1e-2, **kw), params, loss)
    p_sym, s_sym = _train(sops.shampoo(1e-2, storage=S(symmetric=True), **kw), params, loss)
    for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_sym), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    full, packed = s_full[0].statistics[0], s_sym[0].statistics[0]
    assert packed.shape == (full.shape[0], 8 * 9 // 2)
    dec = np.asarray(st.decode(packed, jnp.float64))
    np.testing.assert_allclose(dec, np.asarray(full), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_training_with_each_storage_option_stays_finite_and_near_full_precision(rng, name):
  params, loss = _problem(rng)
  p_full, _ = _train(sops.shampoo(1e-2, **KW), params, loss)
  p, state = _train(sops.shampoo(1e-2, storage=OPTIONS[name], **KW), params, loss)
  node = state[0]
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(node))
  assert int(node.info.root_failures) == 0 and int(node.info.nonfinite_skips) == 0
  assert int(node.info.root_computations) == 5
  assert float(loss(p)) < 0.9 * float(loss(params))
  # Same hyperparameters, storage only: the final loss stays within 5% of full precision.
  assert abs(float(loss(p)) - float(loss(p_full))) < 0.05 * float(loss(p_full))
  if name == "compact-bf16-momentum":
    assert node.shampoo_momentum["w"].dtype == jnp.bfloat16


def test_compact_state_is_smaller_and_its_parts_have_the_stored_dtypes(rng):
  params, _ = _problem(rng)
  full = jax.eval_shape(sops.shampoo(1e-2, **KW).init, params)
  compact = jax.eval_shape(sops.shampoo(1e-2, storage="compact", **KW).init, params)

  def nbytes(t):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(t))

  assert nbytes(compact) < 0.7 * nbytes(full)
  stats, roots = compact[0].statistics[0], compact[0].preconditioners[0]
  assert isinstance(stats, st.Quantized) and stats.values.dtype == jnp.int16
  assert roots.values.dtype == jnp.int8 and roots.values.shape[-1] == 8 * 9 // 2
  assert stats.diagonal.dtype == jnp.float32


def test_async_roots_equal_delayed_roots_bit_for_bit_with_compact_storage(rng):
  params, loss = _problem(rng)
  kw = dict(KW, storage="compact")
  p_delayed, _ = _train(sops.shampoo(1e-2, root_staleness=2, **kw), params, loss, steps=12)
  tx, roots = sops.async_shampoo(1e-2, root_staleness=2, root_device=jax.devices()[1], **kw)
  step = _step(tx, loss)
  p, state = params, tx.init(params)
  for _ in range(12):
    p, state = step(p, state)
    state = roots(state)
  roots.wait()
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_delayed), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Snapshots at steps 2, 5, 8 and 11, installed before steps 4, 7, 10 and 13.
  assert int(state[0].info.root_computations) == 4


def test_compact_state_shards_and_sharded_jit_matches_one_device(devices):
  # In float64, as tests/test_sharding.py: another reduction order changes float32 trajectories
  # at the rounding level of early roots, which says nothing about the sharding.
  n_dev = len(devices)
  mesh = jax.make_mesh((n_dev,), ("data",), axis_types=(AxisType.Auto,), devices=devices)
  rep = NamedSharding(mesh, P())
  kw = dict(KW, storage="compact", statistics_dtype="float64")
  with jax.enable_x64(True):
    params, loss = _problem(np.random.default_rng(0))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    multi = sops.shampoo(1e-2, num_shards=n_dev, **kw)
    state = multi.init(params)
    shardings = sops.shampoo_state_sharding(state, mesh, "data")
    assert shardings[0].statistics[0].values.spec == P("data")
    assert shardings[0].preconditioners[0].scales.spec == P("data")

    def step(p, s):
      u, s = multi.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u), s

    sharded = jax.jit(step, in_shardings=(rep, shardings), out_shardings=(rep, shardings))
    p_m, s_m = jax.device_put(params, rep), jax.device_put(state, shardings)
    for _ in range(8):
      p_m, s_m = sharded(p_m, s_m)
    p_s, _ = _train(sops.shampoo(1e-2, **kw), params, loss, steps=8)
    assert s_m[0].statistics[0].values.sharding.spec == P("data")
    assert len(s_m[0].statistics[0].values.addressable_shards) == n_dev
    # float64 agreement (~1e-8 measured: the int8 roots round the 1e-16 differences coarsely).
    for a, b in zip(jax.tree.leaves(p_m), jax.tree.leaves(p_s), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_checkpoint_round_trip_through_numpy_resumes_bit_for_bit(rng):
  params, loss = _problem(rng)
  tx = sops.shampoo(1e-2, storage="compact", **KW)
  p_end, _ = _train(tx, params, loss, steps=10)
  p, state = _train(tx, params, loss, steps=4)
  leaves, treedef = jax.tree.flatten((p, state))
  saved = [np.asarray(x).copy() for x in leaves]  # e.g. np.savez
  p, state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in saved])
  p, _ = _train(tx, p, loss, steps=6, state=state)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_end), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(statistics="int32"), "statistics"),
    (dict(preconditioners="complex64"), "preconditioners"),
    (dict(momentum="int8"), "momentum"),
    (dict(symmetric=1), "symmetric"),
    (dict(statistics="not a dtype"), "statistics"),
  ],
)
def test_invalid_storage_options_raise_naming_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    S(**kwargs)


def test_invalid_storage_argument_raises():
  with pytest.raises(ValueError, match="storage"):
    sops.shampoo(1e-3, storage="small")
  with pytest.raises(ValueError, match="storage"):
    sops.shampoo(1e-3, storage={"symmetric": True})


def test_storage_survives_inject_hyperparams(rng):
  params, loss = _problem(rng)
  inject = optax.inject_hyperparams(sops.shampoo, static_args=("block_size",))
  tx = inject(learning_rate=1e-2, storage="compact", **KW)
  p, state = _train(tx, params, loss, steps=6)
  assert isinstance(state.inner_state[0].statistics[0], st.Quantized)
  assert float(loss(p)) < float(loss(params))


def test_soap_with_compact_storage_trains_near_full_precision(rng):
  params, loss = _problem(rng)
  kw = dict(block_size=8, precondition_every=3)
  p_full, _ = _train(sops.soap(3e-2, **kw), params, loss)
  storage = S(True, "int16", "bfloat16", "bfloat16")
  p, state = _train(sops.soap(3e-2, storage=storage, **kw), params, loss)
  node = state[0]
  assert isinstance(node.soap_statistics[0], st.Quantized)
  assert node.soap_statistics[0].values.shape[-1] == 8 * 9 // 2
  assert node.soap_eigenbases[0].dtype == jnp.bfloat16
  assert node.soap_mu["w"].dtype == jnp.bfloat16 and node.soap_nu["w"].dtype == jnp.float32
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(node))
  assert int(node.info.basis_failures) == 0 and int(node.info.nonfinite_skips) == 0
  assert float(loss(p)) < 0.9 * float(loss(params))
  assert abs(float(loss(p)) - float(loss(p_full))) < 0.05 * float(loss(p_full))
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  sharded = sops.soap(3e-2, storage="compact", num_shards=8, **kw).init(params)
  spec = sops.shampoo_state_sharding(sharded, mesh, "data")[0].soap_statistics[0]
  assert spec.values.spec == P("data") and spec.scales.spec == P("data")


def test_soap_rejects_integer_eigenbases():
  with pytest.raises(ValueError, match="eigenbases"):
    sops.soap(1e-3, storage=S(preconditioners="int8"))
