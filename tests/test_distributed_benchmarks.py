# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""The multi-device benchmarks: the HLO collective parser of ``benchmarks/comm_volume.py`` and the
per-device state memory of ``benchmarks/sharded_state_memory.py``, on the 8 test devices."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import comm_volume  # noqa: E402
import sharded_state_memory  # noqa: E402

pytestmark = pytest.mark.extended


def _sharded_vector(devices):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
  x = jax.device_put(jnp.arange(64, dtype=jnp.float32), NamedSharding(mesh, P("data")))
  return mesh, x


def test_parser_finds_the_one_all_reduce_of_a_sharded_sum(devices):
  _, x = _sharded_vector(devices)
  ops = comm_volume.collectives(jax.jit(jnp.sum).lower(x).compile().as_text())
  assert [o["op"] for o in ops] == ["all-reduce"]
  (op,) = ops
  assert op["shapes"] == [[]] and op["dtypes"] == ["f32"]
  assert op["result_bytes"] == 4 and op["group_size"] == 8
  assert op["traffic_bytes"] == pytest.approx(4 * 2 * 7 / 8)
  assert op["kind"] == "every_step" and op["multiplier"] == 1


def test_parser_sizes_an_all_gather_to_the_gathered_result(devices):
  mesh, x = _sharded_vector(devices)
  gather = jax.jit(lambda v: v * 2, out_shardings=NamedSharding(mesh, P()))
  ops = comm_volume.collectives(gather.lower(x).compile().as_text())
  assert [o["op"] for o in ops] == ["all-gather"]
  assert ops[0]["shapes"] == [[64]] and ops[0]["result_bytes"] == 256
  assert ops[0]["traffic_bytes"] == pytest.approx(256 * 7 / 8)


def test_parser_classifies_a_compiled_cond_and_while_loops(devices):
  _, x = _sharded_vector(devices)

  def f(x, n):
    branch = jax.lax.cond(jnp.sum(x) > 0, lambda: jnp.sum(x * 2), lambda: 0.0)
    body = lambda c: (c[0] + 1, c[1] + jnp.sum(c[1]))  # noqa: E731
    _, y = jax.lax.while_loop(lambda c: c[0] < n, body, (0, x))  # trip count unknown
    z = jax.lax.fori_loop(0, 3, lambda _, v: v * jnp.sum(v), x)  # trip count 3
    return branch + jnp.sum(y) + jnp.sum(z)

  ops = comm_volume.collectives(jax.jit(f).lower(x, 5).compile().as_text())
  assert all(o["op"] == "all-reduce" for o in ops)
  by_kind = {k: [o for o in ops if o["kind"] == k] for k in ("every_step", "some_steps")}
  assert len([o for o in ops if o["kind"] == "per_iteration"]) == 1, ops
  assert len(by_kind["some_steps"]) == 1, ops
  assert by_kind["some_steps"][0]["conditionals"][0]["branch"] == 1  # lax.cond's true branch
  assert [o["multiplier"] for o in by_kind["every_step"]].count(3) == 1, ops


SYNTHETIC = """\
HloModule synthetic, is_scheduled=true, num_partitions=4

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%cg_body (p: (s32[], f32[16])) -> (s32[], f32[16]) {
  %p = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[16]{0} get-tuple-element(%p), index=1
  %ar = f32[16]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %t = (s32[], f32[16]{0}) tuple(%i, %ar)
}

%cg_cond (p: (s32[], f32[16])) -> pred[] {
  %p = (s32[], f32[16]{0}) parameter(0)
  %y = f32[16]{0} get-tuple-element(%p), index=1
  %dot = (f32[], f32[]) all-reduce(%y, %y), replica_groups=[1,4]<=[4], to_apply=%add
  ROOT %c = pred[] constant(true)
}

%fixed_body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ag3 = f32[32]{0} all-gather(%x), replica_groups=[1,4]<=[4], dimensions={0}
  %sl = f32[8]{0} slice(%ag3), slice={[0:8]}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %sl)
}

%fixed_cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%roots (x: f32[16]) -> f32[64] {
  %x = f32[16]{0} parameter(0)
  ROOT %ag = f32[64]{0} all-gather(%x), replica_groups={{0,1,2,3}}, dimensions={0}
}

%keep (x: f32[16]) -> f32[64] {
  %x = f32[16]{0} parameter(0)
  ROOT %z = f32[64]{0} broadcast(f32[] constant(0)), dimensions={}
}

%guarded (x: f32[16]) -> f32[64] {
  %x = f32[16]{0} parameter(0)
  %cp = f32[16]{0} collective-permute(%x), source_target_pairs={{0,1},{1,2},{2,3},{3,0}}
  %k = pred[] constant(true)
  ROOT %r = f32[64]{0} conditional(%k, %cp, %cp), true_computation=%roots, \
false_computation=%keep, metadata={op_name="jit(step)/shampoo_roots/cond"}
}

%skipped (x: f32[16]) -> f32[64] {
  %x = f32[16]{0} parameter(0)
  ROOT %z = f32[64]{0} broadcast(f32[] constant(0)), dimensions={}
}

ENTRY %main (x: f32[16], k: s32[]) -> f32[4] {
  %x = f32[16]{0} parameter(0)
  %k = s32[] parameter(1)
  %rs = f32[4]{0} reduce-scatter(%x), replica_groups={{0,1,2,3}}, dimensions={0}, to_apply=%add
  %g = f32[64]{0} conditional(%k, %x, %x), \
branch_computations={%skipped, %guarded}, metadata={op_name="jit(step)/cond"}
  %t0 = (s32[], f32[16]{0}) tuple(%k, %x)
  %w = (s32[], f32[16]{0}) while(%t0), condition=%cg_cond, body=%cg_body
  %x8 = f32[8]{0} slice(%x), slice={[0:8]}
  %t1 = (s32[], f32[8]{0}) tuple(%k, %x8)
  %w2 = (s32[], f32[8]{0}) while(%t1), condition=%fixed_cond, body=%fixed_body, \
backend_config={"known_trip_count":{"n":"3"}}
  %ars = f32[16]{0} all-reduce-start(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  %ard = f32[16]{0} all-reduce-done(%ars)
  ROOT %out = f32[4]{0} slice(%rs), slice={[0:4]}
}
"""


def test_parser_classifies_branches_and_loops_of_a_synthetic_module():
  ops = {o["name"]: o for o in comm_volume.collectives(SYNTHETIC)}
  assert set(ops) == {"rs", "cp", "ag", "ag3", "ar", "dot", "ars"}  # -done skipped, each found once
  assert ops["rs"]["kind"] == "every_step" and ops["rs"]["traffic_bytes"] == 3 * 16
  assert ops["ars"]["op"] == "all-reduce-start" and ops["ars"]["kind"] == "every_step"
  # Inside the guard conditional's branch 1, and the root conditional's true branch (0).
  assert ops["cp"]["kind"] == "some_steps" and ops["cp"]["traffic_bytes"] == 64
  assert [(c["name"], c["branch"]) for c in ops["ag"]["conditionals"]] == [("g", 1), ("r", 0)]
  assert ops["ag"]["result_bytes"] == 256 and ops["ag"]["traffic_bytes"] == 192
  # Unknown trip count: per iteration (body and condition); known (3): every step, 3 times.
  assert ops["ar"]["kind"] == ops["dot"]["kind"] == "per_iteration"
  assert ops["dot"]["result_bytes"] == 8 and ops["dot"]["group_size"] == 4
  assert ops["ag"]["kind"] == "some_steps" and ops["ag"]["multiplier"] == 1
  assert ops["ag3"]["kind"] == "every_step" and ops["ag3"]["multiplier"] == 3

  s = comm_volume.summarize(list(comm_volume.collectives(SYNTHETIC)))
  # every step: rs 48 + all-gather f32[32] 3 x 128 x 3/4 + ars 64 x 1.5 + the guard's permute 64.
  assert s["traffic_every_step"] == pytest.approx(48 + 3 * 96 + 96 + 64)
  assert s["traffic_root_step"] == pytest.approx(192)
  assert s["traffic_per_iteration"] == pytest.approx(64 * 1.5 + 8 * 1.5)
  assert s["count_root_step"] == 1 and s["count_per_iteration"] == 2


# Shampoo's and SOAP's stacks hold 36 blocks of 256 x 256 in the quick model (the 4096 x 256
# embedding: 16 blocks x 2 factors, the 512 x 256 kernel: 2 x 2); num_shards=8 pads them to 40,
# and the stacks are 2/3 of the state (the moments the other 1/3), so the largest device holds
# (2/3 * 40/36 + 1/3) / 8 = 1.074 / 8 of the one-device state. AdamW: 1/8 plus the replicated
# bias moments (2 KB of 9 MB).
BOUNDS = {"adamw": 1.01, "shampoo": 1.1, "soap": 1.1}


@pytest.mark.parametrize("kind", sorted(BOUNDS))
def test_fsdp_state_per_device_is_about_one_eighth(kind, devices):
  params = sharded_state_memory.model_params(quick=True)
  one = sharded_state_memory.measure(kind, 1, params)
  eight = sharded_state_memory.measure(kind, 8, params)
  assert one["state_mb_max"] == pytest.approx(one["state_total_mb"])  # all of it on one device
  assert eight["state_mb_max"] <= BOUNDS[kind] / 8 * one["state_mb_max"]
  assert eight["state_mb_max"] == eight["state_mb_min"]  # balanced
  assert eight["params_mb_max"] == pytest.approx(one["params_mb_max"] / 8, rel=0.01)
