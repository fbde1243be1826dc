# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shampoo's inverse roots: how they are computed (:class:`RootConfig`) and when (the schedule).

Schedule. Roots are refreshed from ``start_preconditioning_step`` on, every ``precondition_every``
steps. Synchronously, every block's root is recomputed on one step (that step is slow). Staggered,
each stack is cut into ``precondition_every`` chunks and one chunk is refreshed per step,
round-robin, so every step carries about ``1/precondition_every`` of the root work and every root
is still refreshed every ``precondition_every`` steps. With ``num_shards`` the chunks are taken
within each shard, so a sharded stack stays evenly split. Delayed (``root_staleness=s``), the
statistics of each root step (staggered: each step's chunk) are kept in the state and their roots
are computed and first used ``s`` steps later, which is what :class:`sops.AsyncRoots` does off
the step.

Each stack entry records the step of its last accepted root (``root_steps``, 0 = none yet): a
block uses Shampoo's direction only once all its factors have a root.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sops._src import eigenbasis, utils
from sops._src import linalg as _linalg

METHODS = ("auto", "eigh", "coupled_newton")


@dataclasses.dataclass(frozen=True)
class RootConfig:
  """How :func:`sops.shampoo` computes the inverse p-th roots of its statistics.

  Attributes:
    method: ``"eigh"`` (eigendecomposition), ``"coupled_newton"`` (matmul-only iteration, see
      :func:`sops.linalg.inverse_pth_root`) or ``"auto"``: ``"eigh"`` on CPU, where a root
      refresh measured 1.6-2.4x cheaper than coupled Newton on the transformer benchmark's
      statistics (``benchmarks/shampoo_step_cost.py``), and ``"coupled_newton"`` on
      accelerators, whose batched ``eigh`` is slow and whose matmuls are fast (not measured here:
      no accelerator was available).
    warm_start: with ``"eigh"``, keep each factor's eigenbasis in the state and refine it with one
      QR step of subspace iteration at each refresh instead of a full ``eigh``; blocks whose basis
      is no longer an eigenbasis to within ``warm_start_tol`` fall back to a cold ``eigh`` (one
      such block makes its whole chunk pay for both). Off by default: on CPU a QR costs half an
      ``eigh``, and in training the fallbacks made it slower than cold ``eigh`` (measured in
      ``docs/shampoo.md``); it pays where ``eigh`` is much dearer than QR.
    warm_start_tol: largest accepted relative off-diagonal mass ``||Q^T A Q - diag||_F /
      ||Q^T A Q||_F`` of a refined basis.
    max_iters: most coupled Newton iterations.
    sequential_eigh: with ``"eigh"``, decompose a stack's blocks one at a time rather than in one
      batched call (same results): on CPU the batched call runs on the process' shared thread
      pool, which serializes it with other CPU devices' computations. :func:`sops.async_shampoo`
      sets it when roots and training share a CPU. ``None`` (default): on where JAX has several
      CPU devices (simulated devices, multi-process jobs), where the batched call can deadlock,
      its pool's threads held by the other devices waiting in a collective; off elsewhere.

  Examples:
    >>> import sops
    >>> cfg = sops.RootConfig("eigh", warm_start=True, warm_start_tol=1e-2)
    >>> tx = sops.shampoo(1e-3, inverse_root=cfg)
    >>> sops.RootConfig("auto").resolved().method  # on a CPU backend
    'eigh'

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018; Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam",
    arXiv:2409.11321 (one QR step per basis refresh).
  """

  method: str = "auto"
  warm_start: bool = False
  warm_start_tol: float = 1e-2
  max_iters: int = 100
  sequential_eigh: bool | None = None

  def __post_init__(self):
    utils.check_choice("method", self.method, METHODS)
    utils.check_choice("warm_start", self.warm_start, (True, False))
    utils.check_scalar("warm_start_tol", self.warm_start_tol, low=0.0, low_inclusive=False)
    utils.check_scalar("max_iters", self.max_iters, low=1, integer=True)
    utils.check_choice("sequential_eigh", self.sequential_eigh, (True, False, None))

  def resolved(self, platform: str | None = None) -> RootConfig:
    """This config with ``"auto"`` replaced by the method chosen for ``platform`` (``"cpu"``,
    ``"gpu"``, ...; default: the default backend), and ``sequential_eigh=None`` decided (on where
    a batched ``eigh`` can deadlock: several CPU devices)."""
    cpu = (platform or jax.default_backend()) == "cpu"
    method = self.method if self.method != "auto" else ("eigh" if cpu else "coupled_newton")
    sequential = self.sequential_eigh
    if sequential is None:
      sequential = method == "eigh" and eigenbasis.batched_lapack_may_deadlock(platform)
    return dataclasses.replace(self, method=method, sequential_eigh=sequential)

  @property
  def tracks_basis(self) -> bool:
    return self.method == "eigh" and self.warm_start


def as_root_config(value: str | RootConfig) -> RootConfig:
  """A :class:`RootConfig` from a method name or a config (``ValueError`` otherwise)."""
  if isinstance(value, RootConfig):
    return value.resolved()
  if not isinstance(value, str):
    raise ValueError(f"inverse_root must be a str or a sops.RootConfig, got {value!r}.")
  utils.check_choice("inverse_root", value, METHODS)
  return RootConfig(value).resolved()


@dataclasses.dataclass(frozen=True)
class StackSchedule:
  """Static refresh plan of one stack viewed as ``(shards, per_shard, n, n)``."""

  shards: int
  per_shard: int
  chunk: int  # entries per shard refreshed on one root step
  phases: int  # root steps to refresh every entry once


def stack_schedule(size: int, shards: int, every: int, stagger: bool) -> StackSchedule:
  per = size // shards
  chunk = -(-per // every) if stagger else per
  return StackSchedule(shards, per, chunk, -(-per // chunk))


def _pad_to(x: jax.Array, n: int, fill: jax.Array) -> jax.Array:
  extra = n - x.shape[0]
  if not extra:
    return x
  return jnp.concatenate([x, jnp.broadcast_to(fill, (extra, *x.shape[1:])).astype(x.dtype)])


def compute_roots(
  mats: jax.Array,
  old: jax.Array,
  basis: jax.Array | None,
  k_real: jax.Array,
  p: int,
  cfg: RootConfig,
  ridge: jax.typing.ArrayLike,
  threshold: jax.typing.ArrayLike,
  precision: str,
) -> tuple[jax.Array, jax.Array | None, jax.Array, jax.Array]:
  """Roots of a stack; returns ``(roots, new_basis_or_None, error, failed)``, failed -> ``old``."""
  if not cfg.tracks_basis:
    roots, info = _linalg.inverse_pth_root(
      mats,
      p,
      method=cfg.method,
      ridge_epsilon=ridge,
      relative_ridge=True,
      max_iters=cfg.max_iters,
      block_sizes=k_real,
      fallback=old,
      fail_threshold=threshold,
      precision=precision,
      sequential_eigh=cfg.sequential_eigh,
    )
    return roots, None, info.error, info.failed
  a, mask2 = eigenbasis.masked(mats, k_real)
  found = eigenbasis.tracked_eigenbasis(a, basis, cfg.warm_start_tol, k_real, cfg.sequential_eigh)
  x = eigenbasis.root_from_eigenbasis(found, p, ridge, mask2)
  err = jnp.where(jnp.all(jnp.isfinite(x), axis=(-1, -2)), found.off_diagonal, jnp.inf)
  failed = ~(err <= threshold)
  roots = jnp.where(failed[..., None, None], old, x)
  new_basis = jnp.where(failed[..., None, None], basis, found.vectors)
  return roots, new_basis, err, failed


def after(mats: jax.Array, previous: jax.Array | None) -> jax.Array:
  """``mats`` made to depend on ``previous`` (a prior stack's roots), so the two run in turn.

  jaxlib's CPU ``eigh``/``qr`` split their batch over the intra-op thread pool and block on it, so
  two such calls at once can deadlock a small pool (seen on 2 cores, jaxlib 0.10.2). XLA keeps
  ``x * 0`` for floats (it is NaN for infinite ``x``), and roots are always finite.
  """
  if previous is None:
    return mats
  return mats + 0.0 * previous[0, 0, 0].astype(mats.dtype)


def split_over_devices(fn, mats, old, basis, k_real, axis_name):
  """Runs ``fn`` (:func:`compute_roots` with the static arguments bound) on this device's share of
  the stack and all-gathers the results; without ``axis_name`` on the whole stack."""
  if axis_name is None:
    return fn(mats, old, basis, k_real)
  n, s = mats.shape[0], mats.shape[-1]
  ndev = lax.axis_size(axis_name)
  per = -(-n // ndev)
  eye = jnp.eye(s, dtype=mats.dtype)
  mats, old = _pad_to(mats, per * ndev, eye), _pad_to(old, per * ndev, eye)
  basis = None if basis is None else _pad_to(basis, per * ndev, eye)
  k_real = _pad_to(k_real, per * ndev, jnp.asarray(s, k_real.dtype))
  start = lax.axis_index(axis_name) * per
  take = functools.partial(lax.dynamic_slice_in_dim, start_index=start, slice_size=per)
  out = fn(take(mats), take(old), None if basis is None else take(basis), take(k_real))
  return jax.tree.map(lambda x: lax.all_gather(x, axis_name, tiled=True)[:n], out)


def chunk(x: jax.Array, sch: StackSchedule, offset: jax.Array) -> jax.Array:
  """Entries ``offset .. offset + sch.chunk`` of every shard of the stack ``x``."""
  x = x.reshape((sch.shards, sch.per_shard, *x.shape[1:]))
  x = lax.dynamic_slice_in_dim(x, offset, sch.chunk, axis=1)
  return x.reshape((sch.shards * sch.chunk, *x.shape[2:]))


def unchunk(full: jax.Array, part: jax.Array, sch: StackSchedule, offset: jax.Array) -> jax.Array:
  """``full`` with the entries that :func:`chunk` takes at ``offset`` replaced by ``part``."""
  full = full.reshape((sch.shards, sch.per_shard, *full.shape[1:]))
  part = part.reshape((sch.shards, sch.chunk, *part.shape[1:]))
  full = lax.dynamic_update_slice_in_dim(full, part.astype(full.dtype), offset, axis=1)
  return full.reshape((sch.shards * sch.per_shard, *full.shape[2:]))


def chunk_offset(sch: StackSchedule, phase: jax.typing.ArrayLike) -> jax.Array:
  """First entry (within each shard) of chunk ``phase``; the last chunk may overlap the one
  before it."""
  return jnp.minimum(phase * sch.chunk, sch.per_shard - sch.chunk)


def take_chunks(stats: tuple[Any, ...], schedules, phase: jax.typing.ArrayLike) -> tuple[Any, ...]:
  """Chunk ``phase`` of every stack (each a pytree of arrays leading with the blocks' axis)."""
  return tuple(
    jax.tree.map(lambda x, sch=sch: chunk(x, sch, chunk_offset(sch, phase)), stack)
    for stack, sch in zip(stats, schedules, strict=True)
  )


def refresh_stack(
  stats: jax.Array,
  roots: jax.Array,
  basis: jax.Array | None,
  root_steps: jax.Array,
  real_sizes: np.ndarray,
  sch: StackSchedule,
  phase: jax.Array,
  count: jax.Array,
  fn,
  axis_name: str | None,
  chunked: bool = False,
):
  """Recomputes chunk ``phase`` of one stack (``stats`` is that chunk already if ``chunked``);
  returns new ``(roots, basis, root_steps)``, the largest error of the accepted roots and the
  number of failed ones."""
  offset = chunk_offset(sch, phase)
  k_real = chunk(jnp.asarray(real_sizes, jnp.int32), sch, offset)
  old = chunk(roots, sch, offset)
  old_basis = None if basis is None else chunk(basis, sch, offset)
  mats = stats if chunked else chunk(stats, sch, offset)
  new, new_basis, err, failed = split_over_devices(fn, mats, old, old_basis, k_real, axis_name)
  steps = jnp.where(failed, chunk(root_steps, sch, offset), count)
  return (
    unchunk(roots, new, sch, offset),
    None if basis is None else unchunk(basis, new_basis, sch, offset),
    unchunk(root_steps, steps, sch, offset),
    jnp.max(jnp.where(failed, 0.0, err)).astype(jnp.float32),
    jnp.sum(failed, dtype=jnp.int32),
  )


class RootResult(NamedTuple):
  """Inverse roots of a statistics snapshot, before they are installed (one entry per stack)."""

  roots: tuple[jax.Array, ...]  # like the statistics; failed blocks hold the identity
  bases: tuple[jax.Array, ...]  # the refined eigenbases, or () for untracked root methods
  failed: tuple[jax.Array, ...]  # (num_factors,) bool per stack
  error: jax.Array  # shape=(), float32: largest error of the accepted roots


def snapshot_roots(
  stats: tuple[jax.Array, ...],
  bases: tuple[jax.Array, ...],
  stack_keys: tuple[tuple[int, int], ...],
  real_sizes: tuple[tuple[int, ...], ...],
  compute,
  axis_name: str | None = None,
) -> RootResult:
  """The roots of every stack of ``stats`` (a snapshot), all at once and independent of the
  preconditioners in use: a failed block's root is the identity here and is replaced by the
  block's current root when the result is installed (:func:`install`). ``bases`` are the
  eigenbases of the previous snapshot (tracked warm starts), else ``()``."""
  roots, new_bases, failed, errs = [], [], [], [jnp.zeros([], jnp.float32)]
  for i, ((_, p), real) in enumerate(zip(stack_keys, real_sizes, strict=True)):
    eye = jnp.broadcast_to(jnp.eye(stats[i].shape[-1], dtype=stats[i].dtype), stats[i].shape)
    mats = after(stats[i], roots[i - 1] if i else None)  # LAPACK stacks in turn
    fn = functools.partial(compute, p=p)
    basis = bases[i] if bases else None
    out, basis, err, bad = split_over_devices(fn, mats, eye, basis, np.asarray(real), axis_name)
    roots.append(out)
    if bases:
      new_bases.append(basis)
    failed.append(bad)
    errs.append(jnp.max(jnp.where(bad, 0.0, err)).astype(jnp.float32))
  return RootResult(tuple(roots), tuple(new_bases), tuple(failed), jnp.max(jnp.stack(errs)))


def install(
  roots: tuple[jax.Array, ...],
  root_steps: tuple[jax.Array, ...],
  result: RootResult,
  step: jax.Array,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], jax.Array]:
  """``(roots, root_steps, failures)`` after installing ``result`` at ``step``: accepted blocks
  take the new root and ``step``, failed blocks keep their current root and step."""
  new_roots = tuple(
    jnp.where(f[:, None, None], r, n.astype(r.dtype))
    for r, n, f in zip(roots, result.roots, result.failed, strict=True)
  )
  new_steps = tuple(
    jnp.where(f, s, step).astype(s.dtype) for s, f in zip(root_steps, result.failed, strict=True)
  )
  failures = sum((jnp.sum(f, dtype=jnp.int32) for f in result.failed), jnp.zeros([], jnp.int32))
  return new_roots, new_steps, failures


def computed_info(info: Any, error: jax.Array, failures: jax.Array) -> Any:
  """A ``ShampooInfo`` after a step that computed roots: their largest accepted ``error`` and
  ``failures`` more failed blocks."""
  return info._replace(
    max_root_error=error,
    root_failures=info.root_failures + failures,
    root_computations=utils.safe_increment(info.root_computations),
    steps_since_root=jnp.zeros([], jnp.int32),
  )


def idle_info(info: Any) -> Any:
  """A ``ShampooInfo`` after a step that computed no roots."""
  return info._replace(steps_since_root=utils.safe_increment(info.steps_since_root))


def install_state(state: Any, result: RootResult, step: jax.Array) -> Any:
  """A ``ScaleByShampooState`` with the roots of a statistics snapshot installed, as first used
  at ``step``: also the diagnostics of a root computation."""
  roots, steps, failures = install(state.preconditioners, state.root_steps, result, step)
  return state._replace(
    preconditioners=roots,
    eigenbases=result.bases if state.eigenbases else (),
    root_steps=steps,
    info=computed_info(state.info, result.error, failures),
  )


def check_pipeline(staleness: int, external, every, stagger) -> tuple[int, int]:
  """Validates ``external_roots`` and the combination with a ``root_staleness`` already checked
  by the caller (a static int ``>= 0``); returns ``(s, snapshot slots)``: one snapshot per root
  step in flight, ``ceil(s / precondition_every)``, or ``s`` chunks when staggered."""
  utils.check_choice("external_roots", external, (True, False))
  if not (staleness or external):
    return 0, 0
  if external:  # also under pmap: there axis_name only keeps the replicas' skips equal
    return staleness, 0
  if not isinstance(every, numbers.Integral) or isinstance(every, bool):
    raise ValueError(f"root_staleness > 0 needs a static int precondition_every, got {every!r}.")
  return staleness, staleness if stagger else -(-staleness // int(every))


def pick_snapshot(pending, slot):
  """Snapshot number ``slot`` (traced) of the pending ones."""
  if len(pending) == 1:
    return pending[0]
  return tuple(lax.select_n(slot, *stacks) for stacks in zip(*pending, strict=True))


def put_snapshot(pending, slot, stats):
  return tuple(
    tuple(jnp.where(slot == i, x, old) for x, old in zip(stats, snap, strict=True))
    for i, snap in enumerate(pending)
  )


@dataclasses.dataclass(frozen=True)
class Timing:
  """When a Shampoo state computes its roots; built once per transform."""

  start: Any  # start_preconditioning_step: an int, or traced under inject_hyperparams
  every: Any  # precondition_every: a static int with stagger or staleness
  stagger: bool
  staleness: int  # s >= 0: steps from a statistics snapshot to the first use of its roots
  slots: int  # snapshots kept in the state (staleness > 0)
  schedules: Any  # part -> one StackSchedule per stack
  compute: Any  # compute_roots with the method's static arguments bound (not p)
  eigh: bool  # LAPACK-based method: stacks run in turn (see after)
  axis_name: str | None


def _refresh(t: Timing, state, mats, count, part, ok, phase, due, chunked=False):
  """Chunk ``phase`` of every stack recomputed from ``mats`` (the statistics, or that chunk of
  a snapshot if ``chunked``) where ``due & ok``; returns ``(roots, bases, root_steps, info)``."""
  roots, bases = list(state.preconditioners), list(state.eigenbases)
  steps = list(state.root_steps)
  errs, fails, any_done = [jnp.zeros([], jnp.float32)], [], jnp.asarray(False)
  for i, ((_, p), sch) in enumerate(zip(part.stack_keys, t.schedules(part), strict=True)):
    m = after(mats[i], roots[i - 1] if i and t.eigh else None)  # LAPACK stacks in turn
    args = (m, roots[i], bases[i] if bases else None, steps[i], np.asarray(part.real_sizes[i]))
    run = due & (phase < sch.phases) & ok

    def work(args=args, sch=sch, p=p):
      fn = functools.partial(t.compute, p=p)
      return refresh_stack(*args, sch, phase, count, fn, t.axis_name, chunked)

    def keep(args=args):
      return args[1], args[2], args[3], jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32)

    with jax.named_scope("shampoo_roots"):
      roots[i], basis, steps[i], err, n_fail = lax.cond(run, work, keep)
    if bases:
      bases[i] = basis
    errs.append(err)
    fails.append(n_fail)
    any_done = any_done | run
  done = computed_info(state.info, jnp.max(jnp.stack(errs)), sum(fails))
  info = jax.tree.map(lambda a, b: jnp.where(any_done, a, b), done, idle_info(state.info))
  return tuple(roots), tuple(bases), tuple(steps), info


def _delayed(t: Timing, state, stats, count, part, ok, since):
  """Installs the roots of the snapshot of step ``count - s``, then snapshots ``stats``
  (neither on a skipped step, ``~ok``)."""
  late = since - t.staleness
  pending = state.pending_statistics

  def work():
    snap = pick_snapshot(pending, (late // t.every) % t.slots)
    result = snapshot_roots(
      snap, state.eigenbases, part.stack_keys, part.real_sizes, t.compute, t.axis_name
    )
    new = install_state(state, result, count)
    return new.preconditioners, new.eigenbases, new.root_steps, new.info

  def keep():
    return state.preconditioners, state.eigenbases, state.root_steps, idle_info(state.info)

  with jax.named_scope("shampoo_roots"):
    out = lax.cond((late >= 0) & (late % t.every == 0) & ok, work, keep)
  slot = (since // t.every) % t.slots
  take = (since >= 0) & (since % t.every == 0) & ok
  pending = lax.cond(take, lambda: put_snapshot(pending, slot, stats), lambda: pending)
  return (*out, pending)


def _delayed_staggered(t: Timing, state, stats, count, part, ok, since):
  """Staggered and delayed: every step installs the roots of the chunk snapshotted ``s`` steps
  ago (``s`` slots, one chunk per step), then snapshots this step's chunk."""
  late = since - t.staleness
  pending = state.pending_statistics
  snap = pick_snapshot(pending, late % t.slots)
  out = _refresh(t, state, snap, count, part, ok, late % t.every, late >= 0, chunked=True)
  chunks = take_chunks(stats, t.schedules(part), since % t.every)
  slot, take = since % t.slots, (since >= 0) & ok
  pending = lax.cond(take, lambda: put_snapshot(pending, slot, chunks), lambda: pending)
  return (*out, pending)


def scheduled_roots(t: Timing, state, stats, count, part, ok):
  """This step's root work by the schedule ``t`` (all at once or staggered, now or delayed by
  ``s`` steps); returns ``(roots, bases, root_steps, info, pending_statistics)``."""
  since = count - jnp.asarray(t.start, jnp.int32)
  if t.staleness:
    delayed = _delayed_staggered if t.stagger else _delayed
    return delayed(t, state, stats, count, part, ok, since)
  if t.stagger:
    phase, due = since % t.every, since >= 0
  else:
    phase = jnp.zeros([], jnp.int32)
    due = (since >= 0) & (since % jnp.asarray(t.every, jnp.int32) == 0)
  return (*_refresh(t, state, stats, count, part, ok, phase, due), state.pending_statistics)
