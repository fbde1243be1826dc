# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Multi-device training: sharded-jit Shampoo and Newton-CG, and the split of the root work.

Trajectories are compared in float64: in float32 the roots of early, rank-deficient statistics
amplify the rounding differences of another reduction order to ~1e-2 within tens of steps for any
implementation, which says nothing about the distribution logic; in float64 they agree to ~1e-12.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sops

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended


def _mesh(devices, name="data"):
  return jax.make_mesh((len(devices),), (name,), axis_types=(AxisType.Auto,), devices=devices)


def _eigh_batch_sizes(hlo: str, n: int, dtype: str) -> set[int]:
  """Leading (stack) sizes of the ``n x n`` operands of every LAPACK eigh call in compiled HLO."""
  sizes = set()
  for line in hlo.splitlines():
    if "syevd" in line and "custom-call(" in line:
      sizes |= {int(k) for k in re.findall(rf"{dtype}\[(\d+),{n},{n}\]", line)}
  return sizes


def _params(rng, dtype):
  return {
    "w": jnp.asarray(rng.standard_normal((40, 24)), dtype),  # 5 x 3 blocks of 8: 30 factors
    "v": jnp.asarray(rng.standard_normal((12, 5)), dtype),  # 2 x 1 blocks: 2 + 2 factors
    "b": jnp.zeros(24, dtype),  # graft only
  }


SHAMPOO_KW = dict(block_size=8, start_preconditioning_step=2, precondition_every=2)


def test_sharded_jit_shampoo_equals_single_device_in_float64(devices):
  n_dev = len(devices)
  mesh = _mesh(devices)
  rep = NamedSharding(mesh, P())
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    params = _params(rng, jnp.float64)
    kw = dict(SHAMPOO_KW, statistics_dtype="float64")
    single = sops.shampoo(1e-2, **kw)
    multi = sops.shampoo(1e-2, num_shards=n_dev, **kw)
    state = multi.init(params)
    # 30 + 2 factors of size 8 are padded to 32, the 2 factors of size 5 to 8.
    assert [s.shape[0] for s in state[0].statistics] == [32, 8]
    shardings = sops.shampoo_state_sharding(state, mesh, "data")
    assert shardings[0].statistics[0].spec == P("data")
    assert shardings[0].shampoo_momentum["w"].spec == P()

    def step(tx):
      def f(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

      return f

    sharded = jax.jit(
      step(multi), in_shardings=(rep, shardings, rep), out_shardings=(rep, shardings)
    )
    plain = jax.jit(step(single))
    p_m, s_m = jax.device_put(params, rep), jax.device_put(state, shardings)
    p_s, s_s = params, single.init(params)
    for _ in range(7):
      g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), params)
      p_m, s_m = sharded(p_m, s_m, g)
      p_s, s_s = plain(p_s, s_s, g)
    assert s_m[0].statistics[0].sharding.spec == P("data")
    assert len(s_m[0].statistics[0].addressable_shards) == n_dev
    assert s_m[0].statistics[0].addressable_shards[0].data.shape == (32 // n_dev, 8, 8)
    for a, b in zip(jax.tree.leaves(p_m), jax.tree.leaves(p_s), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    # Padding entries are empty blocks: their roots are the identity and never fail.
    assert int(s_m[0].info.root_failures) == 0
    np.testing.assert_array_equal(
      np.asarray(s_m[0].preconditioners[1][2:]), np.broadcast_to(np.eye(5), (6, 5, 5))
    )


def test_sharded_jit_root_work_per_device_is_one_nth(devices):
  # The compiled per-device program runs eigh on its 32 / 8 = 4 blocks only, never on all 32.
  n_dev = len(devices)
  mesh = _mesh(devices)
  rep = NamedSharding(mesh, P())
  params = _params(np.random.default_rng(1), jnp.float32)
  batched = sops.RootConfig("eigh", sequential_eigh=False)  # one batched eigh call per stack
  tx = sops.shampoo(1e-2, inverse_root=batched, num_shards=n_dev, **SHAMPOO_KW)
  state = tx.init(params)
  shardings = sops.shampoo_state_sharding(state, mesh, "data")

  def f(p, s, g):
    return tx.update(g, s, p)

  hlo = (
    jax.jit(f, in_shardings=(rep, shardings, rep), out_shardings=(rep, shardings))
    .lower(params, state, params)
    .compile()
    .as_text()
  )
  assert _eigh_batch_sizes(hlo, 8, "f32") == {32 // n_dev}
  unsharded = jax.jit(f).lower(params, tx.init(params), params).compile().as_text()
  assert _eigh_batch_sizes(unsharded, 8, "f32") == {32}


def test_pmap_root_work_per_device_is_one_nth(devices):
  # Under pmap each device roots ceil(32 / 8) = 4 blocks of the size-8 stack and all-gathers.
  n_dev = len(devices)
  params = _params(np.random.default_rng(2), jnp.float32)
  batched = sops.RootConfig("eigh", sequential_eigh=False)  # one batched eigh call per stack
  tx = sops.shampoo(1e-2, inverse_root=batched, axis_name="dev", **SHAMPOO_KW)
  state = tx.init(params)
  rep = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n_dev, *x.shape)), t)  # noqa: E731
  pstep = jax.pmap(lambda p, s, g: tx.update(g, s, p), axis_name="dev", devices=devices)
  hlo = pstep.lower(rep(params), rep(state), rep(params)).compile().as_text()
  assert _eigh_batch_sizes(hlo, 8, "f32") == {32 // n_dev}
  assert "all-gather" in hlo


def test_state_sharding_shards_param_shaped_state_like_params(devices):
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)
  params = _params(np.random.default_rng(3), jnp.float32)
  tx = optax.chain(optax.clip_by_global_norm(1.0), sops.shampoo(1e-2, num_shards=4, block_size=8))
  state = jax.eval_shape(tx.init, params)
  p_sh = {
    "w": NamedSharding(mesh, P(None, "model")),
    "v": NamedSharding(mesh, P()),
    "b": NamedSharding(mesh, P("model")),
  }
  shardings = sops.shampoo_state_sharding(state, mesh, "data", params_sharding=p_sh)
  inner = shardings[1][0]
  assert isinstance(inner, sops.ScaleByShampooState)
  assert all(s.spec == P("data") for s in inner.statistics + inner.preconditioners)
  assert inner.shampoo_momentum["w"].spec == P(None, "model")
  assert inner.graft_nu["b"].spec == P("model")
  assert inner.info.max_root_error.spec == P()
  # The shardings are usable as they are.
  placed = jax.device_put(tx.init(params), shardings)
  assert placed[1][0].statistics[0].sharding.spec == P("data")


def test_state_sharding_rejects_uneven_stacks_and_unknown_axes(devices):
  mesh = _mesh(devices)
  state = sops.shampoo(1e-2, block_size=8).init(_params(np.random.default_rng(4), jnp.float32))
  with pytest.raises(ValueError, match="num_shards=8"):
    sops.shampoo_state_sharding(state, mesh, "data")
  with pytest.raises(ValueError, match="axis"):
    sops.shampoo_state_sharding(state, mesh, "model")


def test_num_shards_is_validated():
  with pytest.raises(ValueError, match="num_shards"):
    sops.scale_by_shampoo(num_shards=0)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
def test_newton_cg_with_batch_sharded_jit_equals_single_device(devices, curvature):
  # No axis_name: the loss is a mean over a batch sharded across the mesh, and XLA inserts the
  # reductions. Same result as the unsharded computation (float64: only the reduction order
  # differs).
  mesh = _mesh(devices)
  with jax.enable_x64(True):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((64, 6)))
    y = jnp.asarray(rng.integers(0, 3, 64))
    params = {"w": jnp.asarray(0.3 * rng.standard_normal((6, 3))), "b": jnp.zeros(3)}

    def predict(p, x):
      return jnp.tanh(x @ p["w"]) + p["b"]

    def out_loss(z, y):
      return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    tx = sops.newton_cg(curvature=curvature, maxiter=8)

    def step(p, s, x, y):
      value_fn = lambda q: out_loss(predict(q, x), y)  # noqa: E731
      extra = dict(value_fn=value_fn)
      if curvature == "gauss_newton":
        extra.update(predict_fn=lambda q: predict(q, x), output_loss_fn=lambda z: out_loss(z, y))
      u, s = tx.update(jax.grad(value_fn)(p), s, p, **extra)
      return optax.apply_updates(p, u), s

    batch = NamedSharding(mesh, P("data"))
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    sharded, plain = jax.jit(step), jax.jit(step)
    p_m, s_m = params, tx.init(params)
    p_s, s_s = params, tx.init(params)
    for _ in range(4):
      p_m, s_m = sharded(p_m, s_m, xs, ys)
      p_s, s_s = plain(p_s, s_s, x, y)
    assert len(xs.addressable_shards) == len(devices)
    # The batch really is split: XLA reduces the per-device partial sums across devices.
    assert "all-reduce" in sharded.lower(params, tx.init(params), xs, ys).compile().as_text()
    for a, b in zip(jax.tree.leaves(p_m), jax.tree.leaves(p_s), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    assert int(s_m[0].info.cg_iterations) == int(s_s[0].info.cg_iterations) > 0


def test_state_sharding_rejects_explicit_mesh_axes(devices):
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Explicit,))
  state = sops.shampoo(1e-2, num_shards=8).init({"w": jnp.ones((16, 16))})
  with pytest.raises(ValueError, match="Auto"):
    sops.shampoo_state_sharding(state, mesh, "data")


def test_fsdp_sharding_splits_the_largest_divisible_dimension(devices):
  mesh = _mesh(devices)
  tree = {
    "embed": jax.ShapeDtypeStruct((1000, 64), jnp.float32),  # 1000 % 8 == 0: rows split
    "w": jax.ShapeDtypeStruct((30, 4096), jnp.float32),  # 30 does not divide: columns split
    "odd": jax.ShapeDtypeStruct((999, 33), jnp.float32),  # nothing divides: replicated
    "b": jax.ShapeDtypeStruct((4096,), jnp.float32),  # under min_size: replicated
  }
  sh = sops.fsdp_sharding(tree, mesh, "data", min_size=2**14)
  assert sh["embed"].spec == P("data", None)
  assert sh["w"].spec == P(None, "data")
  assert sh["odd"].spec == P() and sh["b"].spec == P()
  assert sops.fsdp_sharding(tree, mesh, "data", min_size=0)["b"].spec == P("data")
  # Usable as they are: every device stores 1/8 of a split array.
  x = jax.device_put(jnp.ones((1000, 64)), sh["embed"])
  assert {s.data.shape for s in x.addressable_shards} == {(125, 64)}


def test_fsdp_sharding_validates_its_arguments(devices):
  mesh = _mesh(devices)
  with pytest.raises(ValueError, match="axis"):
    sops.fsdp_sharding({"w": jnp.ones((8, 8))}, mesh, "model")
  with pytest.raises(ValueError, match="min_size"):
    sops.fsdp_sharding({"w": jnp.ones((8, 8))}, mesh, "data", min_size=-1)
