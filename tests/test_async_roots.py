# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Delayed and asynchronous Shampoo roots: exact semantics, bit-for-bit equivalence, checkpoints."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import sops
from sops._src import root_transfer

# Integration-level tests: CI runs them (python -m pytest -m extended); the default suite does not.
pytestmark = pytest.mark.extended

KW = dict(start_preconditioning_step=2, precondition_every=5, block_size=16)
EVERY, START = 5, 2


def _params():
  return {"w": jnp.ones((20, 12)), "v": jnp.ones((6, 30)), "b": jnp.zeros(3)}


def _grads(i, params):
  keys = jax.random.split(jax.random.key(i), len(params))
  return {
    k: jax.random.normal(key, params[k].shape) for key, k in zip(keys, sorted(params), strict=True)
  }


def _run(tx, roots=None, steps=30, params=None, state=None, first=0, wait=False):
  params = _params() if params is None else params
  state = tx.init(params) if state is None else state

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  states = []
  for i in range(first, first + steps):
    params, state = step(params, state, _grads(i, params))
    states.append(state)
    if roots is not None:
      state = roots(state)
      if wait:  # no eigh on one CPU device while another trains: they can deadlock
        roots.wait()
  return params, state, states


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_staleness_zero_is_synchronous_shampoo():
  p0, s0, _ = _run(sops.shampoo(1e-2, **KW))
  p1, s1, _ = _run(sops.shampoo(1e-2, root_staleness=0, **KW))
  _assert_trees_equal((p0, s0), (p1, s1))
  assert s1[0].pending_statistics == ()


@pytest.mark.parametrize("staleness", [pytest.param(1, marks=pytest.mark.slow), 3, 5, 12])
def test_delayed_roots_in_use_at_t_plus_s_are_the_roots_of_the_statistics_at_t(staleness):
  # Every root step t: the preconditioners of the state after step t + s are the roots of the
  # statistics after step t (recomputed here outside the step), and none change in between.
  _, _, states = _run(sops.shampoo(1e-2, root_staleness=staleness, **KW), steps=30)
  tracker = states[0][0]
  plan = root_transfer.root_function(tracker.shampoo_momentum, block_size=16)
  fn = jax.jit(functools.partial(plan.roots, real_sizes=plan.real_sizes))
  root_steps = [t for t in range(START, 31) if (t - START) % EVERY == 0]
  installs = {t + staleness for t in root_steps if t + staleness <= 30}
  assert installs
  for t in range(2, 31):
    before, after = states[t - 2][0], states[t - 1][0]  # after steps t - 1 and t
    if t in installs:
      want = fn(states[t - staleness - 1][0].statistics, ())
      for got, new in zip(after.preconditioners, want.roots, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(new), rtol=1e-6, atol=1e-6)
      assert all(bool(jnp.all(s == t)) for s in after.root_steps)
    else:
      _assert_trees_equal(before.preconditioners, after.preconditioners)
  assert int(states[-1][0].info.root_computations) == len(installs)
  assert len(states[-1][0].pending_statistics) == -(-staleness // EVERY)


@pytest.mark.parametrize(
  "staleness, inverse_root",
  [
    pytest.param(1, "eigh", marks=pytest.mark.slow),
    (5, "eigh"),
    pytest.param(12, "eigh", marks=pytest.mark.slow),
    pytest.param(3, "coupled_newton", marks=pytest.mark.slow),
    (12, sops.RootConfig("eigh", warm_start=True)),
  ],
)
def test_async_pipeline_equals_delayed_roots_bit_for_bit(devices, staleness, inverse_root):
  kw = dict(KW, inverse_root=inverse_root)
  p0, s0, _ = _run(sops.shampoo(1e-2, root_staleness=staleness, **kw))
  tx, roots = sops.async_shampoo(1e-2, root_staleness=staleness, root_device=devices[1], **kw)
  p1, s1, _ = _run(tx, roots)
  _assert_trees_equal(p0, p1)
  for field in ("statistics", "preconditioners", "eigenbases", "root_steps", "shampoo_momentum"):
    _assert_trees_equal(getattr(s0[0], field), getattr(s1[0], field))
  i0, i1 = s0[0].info, s1[0].info
  assert int(i0.root_computations) == int(i1.root_computations) > 0
  assert float(i0.max_root_error) == float(i1.max_root_error)
  # Host timings: one per finished computation (the last may still be in flight), waits >= 0.
  roots.wait()
  snapshots = len(range(START, 30 + 1, EVERY))
  assert len(roots.compute_seconds) == snapshots
  assert all(t > 0 for t in roots.compute_seconds) and roots.wait_seconds >= 0
  # The pipeline installs between steps: one more step has run on the new roots.
  assert int(i1.steps_since_root) == int(i0.steps_since_root) + 1


def test_async_pipeline_resumes_mid_flight_from_a_checkpoint(devices):
  # staleness 12 > precondition_every: two computations in flight at the checkpoint.
  make = lambda: sops.async_shampoo(1e-2, root_staleness=12, root_device=devices[1], **KW)  # noqa: E731
  tx, roots = make()
  params, state, _ = _run(tx, roots, steps=20)
  assert len(roots.state_dict()["pending"]) == 2
  saved = jax.tree.map(np.asarray, (params, state, roots.state_dict()))  # a host round trip
  p_ref, s_ref, _ = _run(tx, roots, steps=15, params=params, state=state, first=20)

  tx2, roots2 = make()
  params2, state2, pipeline = jax.tree.map(jnp.asarray, saved)
  roots2.load_state_dict(pipeline)
  p_new, s_new, _ = _run(tx2, roots2, steps=15, params=params2, state=state2, first=20)
  _assert_trees_equal((p_ref, s_ref), (p_new, s_new))


def test_delayed_roots_resume_from_a_checkpoint():
  tx = sops.shampoo(1e-2, root_staleness=7, **KW)
  params, state, _ = _run(tx, steps=13)
  p_ref, s_ref, _ = _run(tx, steps=10, params=params, state=state, first=13)
  saved = jax.tree.map(np.asarray, (params, state))
  params, state = jax.tree.map(jnp.asarray, saved)
  p_new, s_new, _ = _run(tx, steps=10, params=params, state=state, first=13)
  _assert_trees_equal((p_ref, s_ref), (p_new, s_new))


def test_delayed_roots_under_sharded_jit_match_one_device(devices):
  n = len(devices)
  mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices)
  rep = NamedSharding(mesh, P())
  tx = sops.shampoo(1e-2, root_staleness=7, num_shards=n, **KW)
  state = tx.init(_params())
  shardings = sops.shampoo_state_sharding(state, mesh, "data")
  assert shardings[0].pending_statistics[0][0].spec == P("data")

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  sharded = jax.jit(step, in_shardings=(rep, shardings, rep), out_shardings=(rep, shardings))
  params, state = jax.device_put(_params(), rep), jax.device_put(state, shardings)
  for i in range(20):
    params, state = sharded(params, state, _grads(i, params))
  p_ref, _, _ = _run(tx, steps=20)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_ref), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


STAGGER = dict(KW, stagger_roots=True, inverse_root="eigh")


def test_staggered_delayed_roots_are_the_roots_of_the_statistics_s_steps_earlier():
  # Staggered with staleness s: every block whose root was installed at step t holds the root of
  # its statistics after step t - s, and each step installs one chunk.
  s = 3
  _, _, states = _run(sops.shampoo(1e-2, root_staleness=s, **STAGGER), steps=30)
  plan = root_transfer.root_function(states[0][0].shampoo_momentum, block_size=16)
  fn = jax.jit(functools.partial(plan.roots, real_sizes=plan.real_sizes))
  checked, installs = 0, 0
  for t in range(START + s, 31):
    after = states[t - 1][0]
    want = fn(states[t - s - 1][0].statistics, ()).roots
    fresh_any = False
    for steps, got, new in zip(after.root_steps, after.preconditioners, want, strict=True):
      fresh = np.asarray(steps) == t
      np.testing.assert_allclose(np.asarray(got)[fresh], np.asarray(new)[fresh], atol=1e-6)
      checked += int(fresh.sum())
      fresh_any |= bool(fresh.any())
    installs += fresh_any
    assert int(after.info.root_computations) == installs  # only the steps that installed a chunk
  assert installs > (30 - START - s) // 2  # most steps install a chunk, not one step per cycle
  total = sum(len(x) for x in states[-1][0].root_steps)
  assert checked >= 2 * total  # every block refreshed at least twice (4+ cycles of 5 steps)
  assert all(bool(jnp.all(x > START)) for x in states[-1][0].root_steps)
  assert len(states[-1][0].pending_statistics) == s


@pytest.mark.parametrize("staleness", [3, pytest.param(7, marks=pytest.mark.slow)])
def test_staggered_async_pipeline_equals_delayed_roots_bit_for_bit(devices, staleness):
  # One chunk snapshotted per step; 7 > precondition_every: chunks of two cycles in flight.
  p0, s0, _ = _run(sops.shampoo(1e-2, root_staleness=staleness, **STAGGER))
  make = lambda: sops.async_shampoo(  # noqa: E731
    1e-2, root_staleness=staleness, root_device=devices[1], **STAGGER
  )
  tx, roots = make()
  p1, _, states = _run(tx, roots, wait=True)
  s1 = states[-1]  # before the install for step 31, which the delayed run has not done
  _assert_trees_equal(p0, p1)
  for field in ("statistics", "preconditioners", "root_steps", "shampoo_momentum"):
    _assert_trees_equal(getattr(s0[0], field), getattr(s1[0], field))
  assert int(s0[0].info.root_computations) == int(s1[0].info.root_computations)
  assert float(s0[0].info.max_root_error) == float(s1[0].info.max_root_error)

  # A checkpoint with `staleness` chunks in flight resumes bit for bit.
  tx, roots = make()
  params, state, _ = _run(tx, roots, steps=18, wait=True)
  saved = jax.tree.map(np.asarray, (params, state, roots.state_dict()))
  phases = [(t - START) % EVERY for t in range(20 - staleness, 19)]  # installed after step 19+
  assert [p["phase"] for p in saved[2]["pending"]] == [k for k in phases if roots._ids(k)]
  assert saved[2]["pending"]
  tx2, roots2 = make()
  roots2.load_state_dict(saved[2])
  p2, s2, _ = _run(tx2, roots2, steps=12, params=saved[0], state=saved[1], first=18, wait=True)
  _, s_ref, _ = _run(tx, roots, steps=12, params=params, state=state, first=18, wait=True)
  _assert_trees_equal(p1, p2)
  _assert_trees_equal(s_ref, s2)


def _sharded_run(tx, roots, mesh, steps, params=None, state=None, first=0):
  """``steps`` steps of ``tx`` under ``jit`` with the state split by ``shampoo_state_sharding``
  over ``mesh``, the pipeline ``roots`` (or None) called after each."""
  rep = NamedSharding(mesh, P())
  shardings = sops.shampoo_state_sharding(tx.init(_params()), mesh, "data")

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  sharded = jax.jit(step, in_shardings=(rep, shardings, rep), out_shardings=(rep, shardings))
  params = jax.device_put(_params() if params is None else params, rep)
  state = jax.device_put(tx.init(_params()) if state is None else state, shardings)
  for i in range(first, first + steps):
    params, state = sharded(params, state, _grads(i, params))
    if roots is not None:
      state = roots(state)
      roots.wait()  # eigh on one CPU device next to training on others can deadlock
  return params, state, shardings


def test_async_pipeline_with_a_sharded_state_computes_each_share_apart(devices):
  # shampoo_state_sharding over 4 devices: the pipeline copies each device's blocks to the root
  # device, computes their roots there one share at a time and sends each share back to the
  # device holding it; nothing is gathered. Same as the delayed mode under the same sharded jit.
  n = 4
  mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])
  kw = dict(KW, inverse_root="eigh", num_shards=n)
  p0, s0, _ = _sharded_run(sops.shampoo(1e-2, root_staleness=3, **kw), None, mesh, 17)
  make = lambda: sops.async_shampoo(1e-2, root_staleness=3, root_device=devices[n], **kw)  # noqa: E731
  tx, roots = make()
  p1, s1, shardings = _sharded_run(tx, roots, mesh, 17)
  assert [share.devices for share in roots._shares] == [(d,) for d in devices[:n]]
  _assert_trees_equal(p0, p1)
  for field in ("statistics", "preconditioners", "root_steps"):
    _assert_trees_equal(getattr(s0[0], field), getattr(s1[0], field))
    for x, want in zip(getattr(s1[0], field), getattr(shardings[0], field), strict=True):
      assert x.sharding == want  # the installed roots stay split like the state
  assert int(s1[0].info.root_computations) == int(s0[0].info.root_computations) == 3
  assert float(s1[0].info.max_root_error) == float(s0[0].info.max_root_error)

  # A checkpoint with a computation in flight (snapshot of step 7, installed before step 10).
  tx, roots = make()
  params, state, _ = _sharded_run(tx, roots, mesh, 8)
  saved = jax.tree.map(np.asarray, (params, state, roots.state_dict()))
  assert saved[2]["pending"][0]["statistics"][0].shape == s1[0].statistics[0].shape  # all blocks
  tx2, roots2 = make()
  roots2.load_state_dict(saved[2])
  p2, s2, _ = _sharded_run(tx2, roots2, mesh, 9, params=saved[0], state=saved[1], first=8)
  _assert_trees_equal((p1, s1), (p2, s2))


def _pmap_run(tx, roots, devices, steps):
  """``steps`` steps of ``tx`` under ``pmap`` over ``devices`` (the same gradients on every
  replica), the pipeline ``roots`` (or None) called after each."""
  n = len(devices)
  rep = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), t)  # noqa: E731

  @functools.partial(jax.pmap, axis_name="i", devices=devices)
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  params = _params()
  p, s = rep(params), rep(tx.init(params))
  for i in range(steps):
    p, s = step(p, s, rep(_grads(i, params)))
    if roots is not None:
      s = roots(s)
      roots.wait()  # eigh on one CPU device next to training on others can deadlock
  assert n == jax.tree.leaves(p)[0].shape[0]
  return p, s


def test_delayed_roots_under_pmap_match_one_device(devices):
  tx = sops.shampoo(1e-2, root_staleness=3, axis_name="i", **KW)
  p, _ = _pmap_run(tx, None, devices, 15)
  p_ref, _, _ = _run(sops.shampoo(1e-2, root_staleness=3, **KW), steps=15)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref), strict=True):
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_async_pipeline_under_pmap_equals_delayed_roots_bit_for_bit(devices):
  # A pmap-replicated state: the snapshot comes from replica 0, the roots go to every replica.
  kw = dict(KW, inverse_root="eigh", axis_name="i")
  p0, s0 = _pmap_run(sops.shampoo(1e-2, root_staleness=3, **kw), None, devices[:2], 17)
  tx, roots = sops.async_shampoo(1e-2, root_staleness=3, root_device=devices[2], **kw)
  p1, s1 = _pmap_run(tx, roots, devices[:2], 17)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(b[0]), np.asarray(b[1]))
  for field in ("preconditioners", "root_steps"):
    _assert_trees_equal(getattr(s0[0], field), getattr(s1[0], field))
  assert [int(x) for x in s1[0].info.root_computations] == [3, 3]  # steps 2, 7, 12 (+3 <= 17)
  assert int(s0[0].info.root_computations[0]) == 3


def test_staggered_async_pipeline_under_pmap_and_sharded_jit(devices):
  # pmap: chunks from replica 0, installed on every replica; sharded jit: chunks taken where the
  # state lives and installed back into its split arrays. Both equal the delayed mode.
  kw = dict(STAGGER, axis_name="i")
  p0, _ = _pmap_run(sops.shampoo(1e-2, root_staleness=3, **kw), None, devices[:2], 17)
  tx, roots = sops.async_shampoo(1e-2, root_staleness=3, root_device=devices[2], **kw)
  p1, s1 = _pmap_run(tx, roots, devices[:2], 17)
  _assert_trees_equal(p0, p1)
  assert int(s1[0].info.root_computations[0]) == int(s1[0].info.root_computations[1]) > 5

  n = 4
  mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])
  kw = dict(STAGGER, num_shards=n)
  p0, s0, _ = _sharded_run(sops.shampoo(1e-2, root_staleness=3, **kw), None, mesh, 17)
  tx, roots = sops.async_shampoo(1e-2, root_staleness=3, root_device=devices[n], **kw)
  p1, s1, shardings = _sharded_run(tx, roots, mesh, 17)
  _assert_trees_equal(p0, p1)
  for x, want in zip(s1[0].preconditioners, shardings[0].preconditioners, strict=True):
    assert x.sharding == want


def test_async_pipeline_in_a_root_process_equals_delayed_roots_bit_for_bit():
  # Roots computed in a separate process (the CPU stand-in for the paper's host): same roots,
  # whole and staggered, as the delayed mode.
  for kw, staleness in ((dict(KW, inverse_root="eigh"), 5), (STAGGER, 3)):
    p0, s0, _ = _run(sops.shampoo(1e-2, root_staleness=staleness, **kw), steps=17)
    process = sops.RootProcess()
    tx, roots = sops.async_shampoo(1e-2, root_staleness=staleness, root_device=process, **kw)
    with roots:
      p1, _, states = _run(tx, roots, steps=17, wait=True)
    assert process._process is None  # closing the pipeline closed its process
    with pytest.raises(RuntimeError, match="closed"):
      roots(states[-1])
    roots.close()  # closing twice is harmless
    _assert_trees_equal(p0, p1)
    for field in ("preconditioners", "root_steps"):
      _assert_trees_equal(getattr(s0[0], field), getattr(states[-1][0], field))
    assert int(states[-1][0].info.root_computations) == int(s0[0].info.root_computations) > 0


def test_root_process_computes_in_the_parents_float64():
  # The process follows the parent's jax_enable_x64 (set here by a context, not at import).
  kw = dict(KW, inverse_root="eigh", statistics_dtype="float64")
  with jax.enable_x64(True):
    p0, s0, _ = _run(sops.shampoo(1e-2, root_staleness=5, **kw), steps=12)
    process = sops.RootProcess()
    tx, roots = sops.async_shampoo(1e-2, root_staleness=5, root_device=process, **kw)
    p1, s1, _ = _run(tx, roots, steps=12, wait=True)
    process.close()
  assert jax.tree.leaves(s1[0].preconditioners)[0].dtype == jnp.float64
  _assert_trees_equal(p0, p1)
  _assert_trees_equal(s0[0].preconditioners, s1[0].preconditioners)


def test_root_process_failures_raise_a_clear_error():
  # A failed request raises the process' traceback here (the process keeps serving); a request
  # to a process that has ended, or was never started, raises instead of hanging.
  process = sops.RootProcess()
  with pytest.raises(RuntimeError, match="not running"):
    process("roots", (), 0)
  process.start(_params(), EVERY, False, {"block_size": 16})
  with pytest.raises(RuntimeError, match="KeyError: 'bogus'"):
    process("bogus", (), 0)
  with pytest.raises(RuntimeError, match="failed during 'roots'"):
    process("roots", (np.zeros(3),), 0)
  process._process.kill()
  process._process.join()
  with pytest.raises(RuntimeError, match="ended"):
    process("roots", (), 0)
  process.close()
  with pytest.raises(RuntimeError, match="failed during start"):
    sops.RootProcess().start(_params(), EVERY, False, {"block_size": "x"})
  # Arguments that cannot be sent to the process raise at start and leave nothing half-started.
  unsent = sops.RootProcess()
  with pytest.raises(Exception, match="pickle"):
    unsent.start(_params(), EVERY, False, {"matrix_epsilon": lambda: 1e-6})
  with pytest.raises(RuntimeError, match="not running"):
    unsent("roots", (), 0)


def test_invalid_pipeline_arguments_raise():
  with pytest.raises(ValueError, match="root_staleness"):
    sops.shampoo(1e-2, root_staleness=-1)
  with pytest.raises(ValueError, match="warm_start"):
    sops.async_shampoo(1e-2, stagger_roots=True, inverse_root=sops.RootConfig(warm_start=True))
  with pytest.raises(ValueError, match="precondition_every"):
    sops.scale_by_shampoo(root_staleness=2, precondition_every=jnp.asarray(5.0))
  with pytest.raises(ValueError, match="external_roots"):
    sops.shampoo(1e-2, external_roots="yes")
  with pytest.raises(ValueError, match="root_staleness"):
    sops.async_shampoo(1e-2, root_staleness=0)
  with pytest.raises(ValueError, match="root_device"):
    sops.async_shampoo(1e-2, root_device="cpu:1")
  with pytest.raises(ValueError, match="cpus"):
    sops.RootProcess(cpus=())
  with pytest.raises(ValueError, match="external_roots"):
    sops.async_shampoo(1e-2, external_roots=False)
  _, roots = sops.async_shampoo(1e-2)
  with pytest.raises(ValueError, match="exactly one ScaleByShampooState"):
    roots(optax.adam(1e-3).init(_params()))


def test_async_pipeline_in_a_chain_with_inject_hyperparams(devices):
  # The pipeline finds the Shampoo state inside wrappers; the learning rate stays injectable.
  tx, roots = sops.async_shampoo(1e-2, root_staleness=2, root_device=devices[1], **KW)
  chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
  _, state, _ = _run(chained, roots, steps=12)
  assert int(optax.tree.get(state, "info").root_computations) == 2


def test_roots_next_to_cpu_training_use_sequential_eigh(devices):
  # Both on CPU devices: a batched eigh would wait for the training's work on the shared pool.
  _, roots = sops.async_shampoo(1e-2, root_device=devices[1])
  cfg = roots._root_kwargs["inverse_root"]
  assert (cfg.method, cfg.sequential_eigh) == ("eigh", True)
  cfg = sops.RootConfig("coupled_newton")
  _, roots = sops.async_shampoo(1e-2, root_device=devices[1], inverse_root=cfg)
  assert roots._root_kwargs["inverse_root"].method == "coupled_newton"


def test_sequential_eigh_roots_equal_batched_ones(rng):
  a = rng.standard_normal((5, 12, 12)).astype(np.float32)
  a = jnp.asarray(a @ a.transpose(0, 2, 1))
  k = jnp.asarray([12, 7, 12, 3, 1])
  for p in (2, 4):
    x0, i0 = sops.linalg.inverse_pth_root(a, p, method="eigh", block_sizes=k)
    x1, i1 = sops.linalg.inverse_pth_root(a, p, method="eigh", block_sizes=k, sequential_eigh=True)
    _assert_trees_equal((x0, i0), (x1, i1))


def test_root_staleness_with_inject_hyperparams():
  # Not injected by default (None); works as a static arg; injected, an error says what to do.
  tx = optax.inject_hyperparams(sops.shampoo)(learning_rate=1e-2)
  assert "root_staleness" not in tx.init(_params()).hyperparams
  static = ("root_staleness", "precondition_every", "block_size")  # they fix the state shapes
  make = optax.inject_hyperparams(sops.shampoo, static_args=static)
  _run(make(learning_rate=1e-2, root_staleness=3, **KW), steps=3)
  with pytest.raises((TypeError, ValueError), match="static"):
    optax.inject_hyperparams(sops.shampoo)(learning_rate=1e-2, root_staleness=3).init(_params())
