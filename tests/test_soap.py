# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of sops.scale_by_soap / sops.soap against a float64 numpy reference and in use."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops
from sops._src import blocking, kronecker

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

# ---------------------------------------------------------------------------------------------
# Float64 numpy reference, one block at a time on its real (unpadded) part. A cold eigh basis is
# not unique (signs, order, and any basis of a degenerate eigenspace such as the null space of
# rank-deficient statistics), so the reference checks that the implementation's basis is an
# eigenbasis of its own statistics and then uses it; every QR refresh it computes itself.


def _mode(x, m, d):
  """``m`` applied along dimension ``d`` of ``x``."""
  return np.moveaxis(np.tensordot(m, x, axes=(1, d)), 0, d)


def _unfold(x, d):
  return np.moveaxis(x, d, 0).reshape(x.shape[d], -1)


def _ref_qr(s, q):
  aq = s @ q
  order = np.argsort(-np.sum(q * aq, axis=0), kind="stable")
  qn, r = np.linalg.qr(aq[:, order])
  return qn * np.where(np.diag(r) < 0, -1.0, 1.0)


def _check_eigenbasis(q, s):
  np.testing.assert_allclose(q.T @ q, np.eye(len(q)), atol=1e-10)
  d = q.T @ s @ q
  off = d - np.diag(np.diag(d))
  assert np.linalg.norm(off) <= 1e-9 * max(np.linalg.norm(s), 1e-300)


def _leaf_bases(state, lp, part):
  """Per block and preconditioned dim: the basis restricted to the block's real size."""
  out = {}
  for f, (dim, mats) in zip(
    lp.factors, kronecker.leaf_factors(lp, state.soap_eigenbases), strict=True
  ):
    for b in range(lp.num_blocks):
      k = part.real_sizes[f.stack][f.offset + b]
      out[b, dim] = np.asarray(mats[b], np.float64)[:k, :k]
  return out


def _real_shape(lp, part, b):
  """Block ``b``'s unpadded shape (dimensions without a factor are never padded)."""
  shape = list(lp.block_shape)
  for f in lp.factors:
    shape[f.dim] = part.real_sizes[f.stack][f.offset + b]
  return tuple(shape)


def reference_soap(
  grads, states, lp, part, *, b1, b2, sb2, eps, every, stats_every, refresh, nesterov=False
):
  """Updates of SOAP for one preconditioned leaf; ``states`` are the implementation's states."""
  padded = [np.asarray(blocking.to_blocks(jnp.asarray(g), lp), np.float64) for g in grads]
  real = [_real_shape(lp, part, b) for b in range(lp.num_blocks)]
  dims = [f.dim for f in lp.factors]
  blk = [
    {
      "S": {d: np.zeros((r[d], r[d])) for d in dims},
      "Q": {d: np.eye(r[d]) for d in dims},
      "m": np.zeros(r),
      "v": np.zeros(r),
    }
    for r in real
  ]
  outs = []
  for t, (gp, state) in enumerate(zip(padded, states, strict=True), start=1):
    out = np.zeros_like(gp)
    bases = _leaf_bases(state, lp, part)
    for b, st in enumerate(blk):
      sl = (b,) + tuple(slice(0, n) for n in real[b])
      g = gp[sl]
      gr = g
      for d in dims:
        gr = _mode(gr, st["Q"][d].T, d)
      st["m"] = b1 * st["m"] + (1 - b1) * gr
      st["v"] = b2 * st["v"] + (1 - b2) * gr**2
      if nesterov:  # NAdam (optax.scale_by_adam(nesterov=True))
        num = b1 * st["m"] / (1 - b1 ** (t + 1)) + (1 - b1) * gr / (1 - b1**t)
      else:
        num = st["m"] / (1 - b1**t)
      u = num / (np.sqrt(st["v"] / (1 - b2**t)) + eps)
      for d in dims:
        u = _mode(u, st["Q"][d], d)
      out[sl] = u
      if (t - 1) % stats_every == 0:
        for d in dims:
          st["S"][d] = sb2 * st["S"][d] + (1 - sb2) * _unfold(g, d) @ _unfold(g, d).T
      if (t - 1) % every == 0:
        for d in dims:
          if t == 1 or refresh == "eigh":
            qn = bases[b, d]
            _check_eigenbasis(qn, st["S"][d])
          else:
            qn = _ref_qr(st["S"][d], st["Q"][d])
            np.testing.assert_allclose(bases[b, d], qn, atol=1e-8)
          rot = qn.T @ st["Q"][d]
          st["m"], st["v"] = _mode(st["m"], rot, d), _mode(st["v"], rot * rot, d)
          st["Q"][d] = qn
    outs.append(np.asarray(blocking.from_blocks(jnp.asarray(out), lp)))
  return outs


def _run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  outs, states = [], []
  for g in grads:
    u, state = update(g, state)
    outs.append(u)
    states.append(state)
  return outs, states


CASES = [
  # shape, block_size, merge, max_dim, refresh
  ((6, 6), 8, False, None, "eigh"),
  ((6, 6), 8, False, None, "qr"),
  ((10, 6), 4, False, None, "qr"),  # padded blocks
  ((3, 4, 5), 8, False, None, "qr"),
  ((5, 40), 8, False, 20, "qr"),  # the 40-dim keeps the identity
  ((4, 2, 3), 8, True, None, "eigh"),  # merged to 8x3
]


@pytest.mark.parametrize("shape,block,merge,max_dim,refresh", CASES)
@pytest.mark.parametrize("every,stats_every", [(2, 1), (3, 2)])
def test_matches_float64_reference(shape, block, merge, max_dim, refresh, every, stats_every, rng):
  _check_reference(shape, block, merge, max_dim, refresh, every, stats_every, False, rng)


@pytest.mark.parametrize("shape,block,merge,max_dim,refresh", [CASES[1], CASES[3], CASES[4]])
def test_nesterov_matches_float64_reference(shape, block, merge, max_dim, refresh, rng):
  _check_reference(shape, block, merge, max_dim, refresh, 2, 1, True, rng)


def _check_reference(shape, block, merge, max_dim, refresh, every, stats_every, nesterov, rng):
  kw = dict(b1=0.9, b2=0.99, sb2=0.95, eps=1e-8, every=every, stats_every=stats_every)
  with jax.enable_x64(True):
    tx = sops.scale_by_soap(
      b1=kw["b1"],
      b2=kw["b2"],
      shampoo_beta2=kw["sb2"],
      eps=kw["eps"],
      nesterov=nesterov,
      precondition_every=every,
      statistics_every=stats_every,
      refresh=refresh,
      block_size=block,
      merge_small_dims=merge,
      max_preconditioner_dim=max_dim,
      statistics_dtype="float64",
    )
    grads = [rng.standard_normal(shape) for _ in range(8)]
    outs, states = _run(tx, jnp.zeros(shape), [jnp.asarray(g) for g in grads])
    part = blocking.partition_tree(
      [shape],
      block_size=block,
      max_preconditioner_dim=max_dim or 4096,
      merge_small_dims=merge,
      exponent_override=1,
    )
    (lp,) = part.leaves
    assert lp.preconditioned
    ref = reference_soap(grads, states, lp, part, refresh=refresh, nesterov=nesterov, **kw)
  for t, (o, r) in enumerate(zip(outs, ref, strict=True)):
    np.testing.assert_allclose(np.asarray(o), r, rtol=1e-7, atol=1e-9, err_msg=f"step {t + 1}")


def _adam_pair(nesterov=False, **kw):
  soap = sops.scale_by_soap(b1=0.9, b2=0.99, nesterov=nesterov, **kw)
  adam = optax.scale_by_adam(0.9, 0.99, nesterov=nesterov)
  return soap._replace(update=jax.jit(soap.update)), adam._replace(update=jax.jit(adam.update))


@pytest.mark.parametrize("nesterov", [False, True])
def test_diagonal_gradients_give_exactly_adam(nesterov, rng):
  # Diagonal gradients have diagonal statistics: every eigenbasis (eigh refresh) is a signed
  # permutation, so SOAP is Adam (NAdam with nesterov=True) up to rounding, through reorders of
  # the basis and the moment rotations that follow them.
  params = {"w": jnp.zeros((6, 6)), "b": jnp.zeros(6)}
  soap, adam = _adam_pair(nesterov, precondition_every=3, refresh="eigh", merge_small_dims=False)
  s1, s2 = soap.init(params), adam.init(params)
  for _ in range(15):
    g = {
      "w": jnp.diag(jnp.asarray(rng.standard_normal(6) * np.arange(1, 7), jnp.float32)),
      "b": jnp.asarray(rng.standard_normal(6), jnp.float32),
    }
    u1, s1 = soap.update(g, s1)
    u2, s2 = adam.update(g, s2)
    for k in params:
      np.testing.assert_allclose(u1[k], u2[k], rtol=1e-5, atol=1e-6)
  assert int(s1.info.basis_refreshes) == 5


def test_unpreconditioned_leaves_and_first_step_are_adam(rng):
  # Vectors, scalars and leaves whose dimensions all exceed max_preconditioner_dim run Adam; the
  # first step of every leaf is Adam (identity basis).
  params = {
    "v": jnp.zeros(7),
    "s": jnp.zeros(()),
    "big": jnp.zeros((30, 40)),
    "w": jnp.zeros((5, 4)),
  }
  soap, adam = _adam_pair(max_preconditioner_dim=20, merge_small_dims=False)
  s1, s2 = soap.init(params), adam.init(params)
  for t in range(5):
    g = {k: jnp.asarray(rng.standard_normal(p.shape), jnp.float32) for k, p in params.items()}
    u1, s1 = soap.update(g, s1)
    u2, s2 = adam.update(g, s2)
    for k in ("v", "s", "big") if t else params:
      np.testing.assert_allclose(u1[k], u2[k], rtol=1e-5, atol=1e-6)
  assert [x.shape for x in s1.soap_statistics] == [(1, 5, 5), (1, 4, 4)]


def test_refresh_schedule_and_info(rng):
  tx = sops.scale_by_soap(precondition_every=4, merge_small_dims=False)
  params = jnp.zeros((8, 3))
  state = tx.init(params)
  update = jax.jit(tx.update)
  seen = []
  for _ in range(10):
    _, state = update(jnp.asarray(rng.standard_normal((8, 3)), jnp.float32), state)
    seen.append(int(state.info.basis_refreshes))
  assert seen == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]  # after steps 1, 5, 9
  assert int(state.info.basis_failures) == 0
  assert 0.0 < float(state.info.max_basis_drift) <= 1.0
  q = np.asarray(state.soap_eigenbases[0], np.float64)
  np.testing.assert_allclose(
    np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(8), q.shape), atol=1e-5
  )


def test_soap_trains_faster_than_adam_on_an_ill_conditioned_problem(rng):
  # Least squares with a badly scaled, rotated design (cond ~30): SOAP's rotation undoes the
  # coupling that Adam's diagonal scaling cannot. Each gets its best learning rate of a grid (SOAP
  # moves fewer rotated coordinates per step, so its best rate is larger); same steps.
  x = rng.standard_normal((256, 16)) @ np.diag(np.logspace(0, 1.5, 16))
  x = x @ np.linalg.qr(rng.standard_normal((16, 16)))[0]
  w_true = rng.standard_normal((16, 4))
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(x @ w_true, jnp.float32)

  def loss(w):
    return jnp.mean((x @ w - y) ** 2)

  def train(tx):
    w = jnp.zeros((16, 4))
    state = tx.init(w)

    @jax.jit
    def step(w, state):
      u, state = tx.update(jax.grad(loss)(w), state, w)
      return optax.apply_updates(w, u), state

    for _ in range(300):
      w, state = step(w, state)
    return float(loss(w))

  grid = (1e-2, 3e-2, 1e-1)
  l_soap = min(train(sops.soap(lr)) for lr in grid)
  l_adam = min(train(optax.adam(lr)) for lr in grid)
  # Ratio of the best rates over 15 seeds: median 0.03, worst 0.21 (seed 3340764161, which failed
  # a 0.2 bound in CI); the same seed puts the lr-1e-1 QR paths at 0.10 and 0.21.
  assert l_soap < 0.3 * l_adam, (l_soap, l_adam)
  # The accelerator's QR path (CholeskyQR3) trains as well as the Householder one: both beat
  # Adam by the same margin (their final losses, ~1e-2 of Adam's, differ by rounding-sensitive
  # factors of a few on this degenerate problem: blockwise and batched LAPACK calls differ).
  l_chol = train(sops.soap(1e-1, refresh="qr_cholesky"))
  l_hh = train(sops.soap(1e-1, refresh="qr_householder"))
  assert max(l_chol, l_hh) < 0.3 * l_adam, (l_chol, l_hh, l_adam)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_nonfinite_or_overflowing_gradients_skip_the_step(bad, rng):
  # 1e30 is finite but its square overflows float32 statistics: skipped like a NaN.
  tx = sops.scale_by_soap(precondition_every=2)
  params = {"w": jnp.zeros((6, 4)), "b": jnp.zeros(4)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    g = {k: jnp.asarray(rng.standard_normal(p.shape), jnp.float32) for k, p in params.items()}
    _, state = update(g, state)
  g_bad = {"w": jnp.full((6, 4), bad, jnp.float32), "b": jnp.zeros(4)}
  u, new = update(g_bad, state)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  assert int(new.info.nonfinite_skips) == 1
  same = jax.tree.map(
    lambda a, b: bool(np.array_equal(a, b)), new._replace(info=None), state._replace(info=None)
  )
  assert all(jax.tree.leaves(same))
  u, new = update(jax.tree.map(jnp.ones_like, params), new)  # and it recovers
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves((u, new)))
  assert int(new.soap_count) == 4


@pytest.mark.parametrize(
  "kw,name",
  [
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(shampoo_beta2=0.0), "shampoo_beta2"),
    (dict(eps=-1.0), "eps"),
    (dict(precondition_every=0), "precondition_every"),
    (dict(statistics_every=1.5), "statistics_every"),
    (dict(refresh="power"), "refresh"),
    (dict(nesterov="yes"), "nesterov"),
    (dict(block_size=0), "block_size"),
    (dict(statistics_dtype="int32"), "statistics_dtype"),
    (dict(axis_name=3), "axis_name"),
  ],
)
def test_invalid_hyperparameters_raise_naming_them(kw, name):
  with pytest.raises(ValueError, match=name):
    sops.scale_by_soap(**kw)


def test_invalid_learning_rate_and_tree_mismatch():
  with pytest.raises(ValueError, match="learning_rate"):
    sops.soap(-1.0)
  tx = sops.soap(1e-3)
  state = tx.init({"a": jnp.zeros((3, 3))})
  with pytest.raises(ValueError, match="shape"):
    tx.update({"a": jnp.zeros((3, 4))}, state)


def test_wrappers_jit_without_retracing(rng):
  params = {"w": jnp.zeros((12, 5)), "b": jnp.zeros(5)}
  txs = {
    "inject": optax.inject_hyperparams(sops.soap)(learning_rate=1e-2, b1=0.9),
    "multisteps": optax.MultiSteps(sops.soap(1e-2), every_k_schedule=2),
    "masked": optax.chain(
      optax.masked(sops.scale_by_soap(), {"w": True, "b": False}), optax.scale(-1e-2)
    ),
    "schedule": sops.soap(optax.cosine_decay_schedule(1e-2, 20), weight_decay=1e-4),
  }
  for name, tx in txs.items():
    traces = []

    @jax.jit
    def step(p, s, g, tx=tx, traces=traces):
      traces.append(1)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, s)
    for _ in range(6):
      g = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in params.items()}
      p, s = step(p, s, g)
    assert len(traces) == 1, name
    assert jax.tree.map(lambda x: x.dtype, s) == dtypes, name
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(p)), name


def test_bfloat16_params_keep_float32_moments(rng):
  params = {"w": jnp.zeros((8, 6), jnp.bfloat16)}
  tx = sops.soap(1e-2)
  state = tx.init(params)
  assert state[0].soap_mu["w"].dtype == jnp.float32
  update = jax.jit(tx.update)
  for _ in range(4):
    g = {"w": jnp.asarray(rng.standard_normal((8, 6)), jnp.bfloat16)}
    u, state = update(g, state, params)
  assert u["w"].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(u["w"], np.float32)))


def test_pmap_split_refresh_equals_single_device_in_float64(devices, rng):
  # With axis_name each device refreshes its share of the bases; gradients are already averaged.
  with jax.enable_x64(True):
    params = {"a": jnp.zeros((9, 7)), "c": jnp.zeros((5, 3, 4))}
    kw = dict(precondition_every=2, statistics_dtype="float64", block_size=4)
    single = sops.scale_by_soap(**kw)
    multi = sops.scale_by_soap(axis_name="d", **kw)
    n = len(devices)
    s1 = single.init(params)
    single_update = jax.jit(single.update)
    s8 = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), multi.init(params))
    up8 = jax.pmap(multi.update, axis_name="d")
    for _ in range(5):
      g = {k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in params.items()}
      u1, s1 = single_update(g, s1)
      u8, s8 = up8(jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), g), s8)
      for k in params:
        np.testing.assert_allclose(np.asarray(u8[k][3]), np.asarray(u1[k]), rtol=1e-9, atol=1e-12)


def test_state_sharding_splits_the_stacks(devices, rng):
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  params = {"w": jnp.zeros((20, 12)), "b": jnp.zeros(12)}
  tx = sops.soap(1e-2, block_size=4, num_shards=len(devices))
  state = tx.init(params)
  shardings = sops.shampoo_state_sharding(state, mesh, "data")
  assert shardings[0].soap_statistics[0].spec == jax.sharding.PartitionSpec("data")
  assert shardings[0].soap_mu["w"].spec == jax.sharding.PartitionSpec()
  state = jax.device_put(state, shardings)
  step = jax.jit(tx.update, out_shardings=(None, shardings))
  ref_state = tx.init(params)
  for _ in range(3):
    g = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in params.items()}
    u, state = step(g, state, params)
    u_ref, ref_state = tx.update(g, ref_state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(u_ref["w"]), rtol=1e-4, atol=1e-6)
  assert state[0].soap_eigenbases[0].sharding.spec == jax.sharding.PartitionSpec("data")


def test_state_is_a_checkpointable_tree_of_arrays():
  params = {"w": jnp.zeros((6, 5)), "v": jnp.zeros(5)}
  state = sops.soap(1e-3).init(params)
  leaves, treedef = jax.tree.flatten(state)
  assert all(isinstance(x, jax.Array) for x in leaves)
  again = jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves])
  u, _ = sops.soap(1e-3).update(jax.tree.map(jnp.ones_like, params), again, params)
  assert np.all(np.isfinite(np.asarray(u["w"])))


def test_integer_zero_size_and_scalar_leaves_pass_or_train(rng):
  # As Shampoo (docs/failure.md): int/bool leaves and their float0 gradients pass through
  # unchanged, a zero-size leaf gives an empty update, a scalar trains like Adam.
  params = {
    "w": jnp.ones((5, 3)),
    "s": jnp.array(0.5),
    "z": jnp.zeros((0, 3)),
    "step": jnp.arange(3, dtype=jnp.int32),
  }

  def loss(p):
    return jnp.sum((p["w"] - 2.0) ** 2) + (p["s"] - 1.0) ** 2 + jnp.sum(p["z"])

  tx = sops.soap(0.1)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    g = jax.grad(loss, allow_int=True)(params)
    u, state = update(g, state, params)
    assert u["step"].dtype == jax.dtypes.float0 and u["z"].shape == (0, 3)
    floats = {k: params[k] for k in ("w", "s", "z")}
    params = {**params, **optax.apply_updates(floats, {k: u[k] for k in floats})}
  assert float(loss(params)) < float(loss({**params, "w": jnp.ones((5, 3)), "s": jnp.array(0.5)}))
  assert int(state[0].info.nonfinite_skips) == 0


def test_float64_statistics_keep_float32_moments_through_refreshes(rng):
  # The moment rotation at a refresh multiplies by float64 bases: the moments must come back in
  # their own dtype (a float64 result would change the state's types between steps).
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((6, 4), jnp.float32)}
    tx = sops.scale_by_soap(precondition_every=2, statistics_dtype="float64")
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(4):
      g = {"w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)}
      u, state = update(g, state)
    assert state.soap_mu["w"].dtype == jnp.float32 and state.soap_nu["w"].dtype == jnp.float32
    assert u["w"].dtype == jnp.float32 and int(state.info.basis_refreshes) == 2
