# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shampoo's inverse roots computed on another device while training goes on (seed paper, Sec. 5).

The optax transform stays pure: built with ``external_roots=True`` it never computes roots and
preconditions with whatever its state holds. An :class:`AsyncRoots` pipeline, called once after
every optimizer step, takes a snapshot of the statistics at each root step ``t``, dispatches their
root computation to the root device (JAX's asynchronous dispatch: the call returns at once) and
installs the finished roots into the state with a pure jitted function just before step ``t + s``.
With the same hyperparameters this is exactly ``sops.shampoo(..., root_staleness=s)``, whose pure
``jit`` "delayed roots" mode computes the same roots inside step ``t + s``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sops._src import root_transfer as rt
from sops._src import roots as _roots
from sops._src import utils
from sops._src.root_process import RootProcess
from sops._src.shampoo import (
  ScaleByShampooState,
  shampoo,
)


def _is_shampoo(x: Any) -> bool:
  return isinstance(x, ScaleByShampooState)


def _shampoo_state(opt_state: Any) -> ScaleByShampooState:
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_shampoo) if _is_shampoo(x)]
  if len(found) != 1:
    raise ValueError(
      f"AsyncRoots needs an optimizer state holding exactly one ScaleByShampooState, found "
      f"{len(found)}: pass the state of the optimizer returned by sops.async_shampoo."
    )
  if found[0].pending_statistics:
    raise ValueError("AsyncRoots installs roots itself: build Shampoo without root_staleness.")
  return found[0]


class AsyncRoots:
  r"""Computes Shampoo's inverse roots on a second device while training runs (seed paper's
  pipeline); made by :func:`sops.async_shampoo`, called once after every optimizer step.

  At each root step ``t`` (``start_preconditioning_step + j * precondition_every``) the call
  copies the statistics to ``device`` and dispatches their root computation there without
  waiting for it (JAX's asynchronous dispatch); the call after step ``t + s - 1`` installs the
  roots with a pure jitted function, so step ``t + s`` is the first to use them
  (``s = root_staleness``; installing waits for the roots only if they are not done by then).
  Trajectories equal ``sops.shampoo(..., root_staleness=s)`` (same hyperparameters) bit for bit
  when both run on the same kind of device. The schedule counts calls, so call it after every
  step (a step skipped for non-finite gradients still counts here, not in ``shampoo_count``).

  Under ``pmap`` (the transform built with ``axis_name``, its state replicated with a leading
  device axis) the snapshot is taken from the first replica, whose statistics equal the others'
  when the gradients are averaged over the axis, and the roots are installed on every replica
  with a ``pmap``-ed function.

  With a state split over devices by :func:`sops.shampoo_state_sharding` (built with
  ``num_shards``), nothing is gathered: each device's share of the blocks is copied to ``device``
  on its own, their roots are computed one share after the other and each share's roots go back
  to the devices holding it. Across processes each process computes the shares it holds; the
  reported ``max_root_error`` is then the largest over those.

  With ``stagger_roots=True`` every call from ``start`` on snapshots one chunk of each stack
  (chunk ``(step - start) % every``, as the staggered schedule refreshes it) and installs its
  roots ``staleness`` steps later, as ``sops.shampoo(..., stagger_roots=True,
  root_staleness=s)`` does; a chunk is copied whole to ``device`` (not by shares).

  Checkpoint :meth:`state_dict` (a pytree of arrays and ints: the snapshots in flight) with the
  optimizer state; :meth:`load_state_dict` on a fresh pipeline recomputes them, so a run resumed
  mid-flight installs the same roots at the same steps.

  Attributes:
    staleness: steps from a snapshot to the first step using its roots (``root_staleness``).
    every: steps between snapshots (``precondition_every``).
    start: first snapshot step (``start_preconditioning_step``).
    stagger: whether each step snapshots one chunk (``stagger_roots``).
    device: the device computing the roots.
    step: calls so far (optimizer steps seen).
    compute_seconds: wall-clock seconds of each finished root computation on ``device``, from
      its statistics snapshot being ready to its roots being ready (for tuning
      ``root_staleness``: the pipeline keeps up when a computation takes less than
      ``root_staleness`` training steps).
    wait_seconds: total seconds the calls spent blocked on roots not done by their install
      step (0 when the root device keeps up). With asynchronous dispatch the training device
      may still run queued steps meanwhile, so this bounds the training time lost from above.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, sops
    >>> params = {"w": jnp.ones((8, 4))}
    >>> tx, roots = sops.async_shampoo(0.1, root_staleness=2, precondition_every=5,
    ...                                start_preconditioning_step=1)
    >>> state = tx.init(params)
    >>> loss = lambda p: jnp.sum((p["w"] - 2.0) ** 2)
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(20):
    ...   params, state = step(params, state)
    ...   state = roots(state)  # dispatches root computations, installs finished ones
    >>> int(state[0].info.root_computations)
    4

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018, Section 5.
  """

  def __init__(
    self,
    root_kwargs: dict,
    staleness: int,
    every: int,
    start: int,
    device: Any,
    stagger: bool = False,
  ):
    self._root_kwargs = root_kwargs
    self.staleness, self.every, self.start, self.device = staleness, every, start, device
    self.stagger = stagger
    self.step = 0
    self.compute_seconds: list[float] = []
    self.wait_seconds = 0.0
    self._plan: rt.Plan | None = None  # built at the first call, from the parameter shapes
    self._jit: dict[str, Any] = {}
    self._replicas = None  # the devices of a pmap-replicated state, found at the first call
    self._shares: tuple[rt.Share, ...] = ()  # the state's shares of its blocks (first call)
    self._reals: tuple[Any, ...] = ()  # per share: the unpadded block sizes of its stacks
    # One worker thread runs the computations in order (JAX releases the GIL while they run);
    # each entry is [install_at, per-share statistics on device, Future of (per-share input
    # eigenbases, per-share results), staggered chunk or None].
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sops-roots")
    self._pending: list[list[Any]] = []
    self._restored: list[list[Any]] = []  # [install_at, statistics, eigenbases, phase]
    self._closed = False

  def _ids(self, phase: int) -> tuple[int, ...]:
    """The stacks with a chunk ``phase`` (a stack of few blocks has fewer chunks)."""
    return tuple(i for i, sch in enumerate(self._plan.schedules) if phase < sch.phases)

  def _k_reals(self, phase: int) -> tuple[jax.Array, ...]:
    """Per stack: the unpadded sizes of the blocks of chunk ``phase``."""
    reals = tuple(np.asarray(r, np.int32) for r in self._plan.real_sizes)
    return _roots.take_chunks(reals, self._plan.schedules, phase)

  def _submit(self, stats: list[Any], bases: Any, phase: int | None) -> concurrent.futures.Future:
    """Computes the roots of each share of ``stats`` (of chunk ``phase`` if staggered) on the
    worker, one share after the other; ``bases`` (per share) may be the Future of the previous
    computation, whose output eigenbases warm-start this one."""

    def run():
      if isinstance(bases, concurrent.futures.Future):
        inputs = [r.bases for r in bases.result()[1]]
      else:
        inputs = bases
      jax.block_until_ready((stats, inputs))  # the training steps before the snapshot are done
      t0 = time.perf_counter()
      if phase is None:
        results = [
          self._compute("roots", (share_stats, share_bases), real)
          for share_stats, share_bases, real in zip(stats, inputs, self._reals, strict=True)
        ]
      else:
        args = (stats[0], self._k_reals(phase))
        results = [self._compute("chunk_roots", args, self._ids(phase))]
      self.compute_seconds.append(time.perf_counter() - t0)
      return inputs, results

    return self._worker.submit(run)

  def _compute(self, name: str, arrays: tuple[Any, ...], static: Any) -> Any:
    """``plan.<name>(*arrays, static)`` on the root device or in the root process."""
    if isinstance(self.device, RootProcess):
      return self.device(name, arrays, static)
    return jax.block_until_ready(self._jit[name](*arrays, static))

  def _to_root(self, tree: Any) -> Any:
    """``tree`` copied to the root device (for a root process: copied where it is, so that a
    step donating its buffers cannot take them away before they reach the host)."""
    if isinstance(self.device, RootProcess):
      return jax.tree.map(jnp.copy, tree)
    return jax.device_put(tree, self.device)

  def _build(self, node: ScaleByShampooState) -> None:
    if self._plan is None:
      self._replicas = rt.replica_devices(node)
      momentum = node.shampoo_momentum
      if self._replicas is not None:  # the parameter shapes, without the replica axis
        momentum = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), momentum)
      plan = rt.root_function(momentum, self.every, self.stagger, **self._root_kwargs)
      if isinstance(self.device, RootProcess):  # if it fails to start, the next call retries
        self.device.start(momentum, self.every, self.stagger, self._root_kwargs)
      self._plan = plan
      self._jit = {
        "roots": jax.jit(plan.roots, static_argnums=2),
        "chunk_roots": jax.jit(plan.chunk_roots, static_argnums=2),
        "take": jax.jit(lambda stats, phase: _roots.take_chunks(stats, plan.schedules, phase)),
        "install": jax.jit(rt.install),
        "install_chunks": jax.jit(rt.install_chunks, static_argnums=(4, 5)),
      }
      self._shares = rt.share_layout(node, split=self._replicas is None and not self.stagger)
      self._reals = tuple(
        tuple(tuple(r[sl]) for r, sl in zip(plan.real_sizes, share.slices, strict=True))
        for share in self._shares
      )
    for install_at, stats, bases, phase in self._restored:
      stats, bases = self._to_root((self._split(stats), self._split(bases)))
      self._pending.append([install_at, stats, self._submit(stats, bases, phase), phase])
    self._restored = []

  def _snapshot(self, node: ScaleByShampooState, phase: int | None) -> tuple[list, list]:
    """Copies of each share's statistics and eigenbases (of chunk ``phase`` if staggered) on
    the root device (issued now, before the next step may donate these buffers)."""
    snapshot = (node.statistics, node.eigenbases)
    if self._replicas is not None:
      snapshot = jax.tree.map(lambda x: x[0], snapshot)
    if phase is not None:  # staggered: one chunk of every stack, taken where the state lives
      return [self._to_root(self._jit["take"](snapshot[0], phase=phase))], [()]
    pieces = [
      snapshot
      if share.devices is None
      else jax.tree.map(functools.partial(rt.shard_on, device=share.devices[0]), snapshot)
      for share in self._shares
    ]
    pieces = self._to_root(pieces)
    return [p[0] for p in pieces], [p[1] for p in pieces]

  def _split(self, tree: tuple[Any, ...]) -> list[Any]:
    """Per share, the blocks of ``tree`` (stacks holding this process's shares one after the
    other, as :meth:`state_dict` joins them)."""
    if len(self._shares) == 1 or not tree:
      return [tree] * len(self._shares)
    out, offsets = [], [0] * len(tree)
    for share in self._shares:
      piece = []
      for i, (stack, sl) in enumerate(zip(tree, share.slices, strict=True)):
        n = sl.stop - sl.start
        piece.append(jax.tree.map(lambda x, o=offsets[i], n=n: x[o : o + n], stack))
        offsets[i] += n
      out.append(tuple(piece))
    return out

  def _join(self, pieces: list[Any]) -> tuple[Any, ...]:
    """The inverse of :meth:`_split`."""
    if len(pieces) == 1:
      return pieces[0]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *pieces)

  def _phase(self) -> int | None | bool:
    """What this call snapshots: the chunk number (staggered), ``None`` (every root) or
    ``False`` (nothing)."""
    since = self.step - self.start
    if since < 0:
      return False
    if self.stagger:
      phase = since % self.every
      return phase if self._ids(phase) else False
    return None if since % self.every == 0 else False

  def __call__(self, opt_state: Any) -> Any:
    """Advances the pipeline after one optimizer step; returns ``opt_state`` with the roots due
    at the next step installed (unchanged otherwise)."""
    if self._closed:
      raise RuntimeError(
        "this AsyncRoots pipeline is closed: make a new one with sops.async_shampoo (its "
        "load_state_dict restores a checkpoint taken before closing)."
      )
    node = _shampoo_state(opt_state)
    self._build(node)
    self.step += 1
    phase = self._phase()
    if phase is not False:
      stats, bases = self._snapshot(node, phase)
      if self._pending and phase is None:  # warm starts chain through the computations
        bases = self._pending[-1][2]
      future = self._submit(stats, bases, phase)
      self._pending.append([self.step + self.staleness, stats, future, phase])
    if not self._pending or self._pending[0][0] != self.step + 1:
      return opt_state
    t0 = time.perf_counter()
    _, _, future, phase = self._pending.pop(0)
    results = future.result()[1]  # waits only if not done yet
    self.wait_seconds += time.perf_counter() - t0
    if phase is not None:
      new = self._install_staggered(node, results[0], phase)
    elif self._replicas is not None:
      new = self._install_on_replicas(node, results[0])
    elif self._shares[0].devices is None:
      new = self._install_here(node, results[0])
    else:
      new = self._install_here(node, self._assemble(node, results))
    return jax.tree.map(lambda x: new if _is_shampoo(x) else x, opt_state, is_leaf=_is_shampoo)

  def _assemble(self, node: ScaleByShampooState, results: list[_roots.RootResult]):
    """One result of global arrays, split over the devices like the state, from the results of
    the shares: each share's blocks go to the devices holding that share, nothing is gathered."""

    def glue(pieces, like):
      arrays = [
        jax.device_put(piece, device)
        for share, piece in zip(self._shares, pieces, strict=True)
        for device in share.devices
      ]
      shape = (like.shape[0], *pieces[0].shape[1:])
      return jax.make_array_from_single_device_arrays(shape, like.sharding, arrays)

    def fields(get, likes):
      return tuple(glue([get(r)[i] for r in results], like) for i, like in enumerate(likes))

    return _roots.RootResult(
      roots=fields(lambda r: r.roots, [jax.tree.leaves(x)[0] for x in node.preconditioners]),
      bases=fields(lambda r: r.bases, node.eigenbases) if results[0].bases else (),
      failed=fields(lambda r: r.failed, node.root_steps),
      error=jnp.max(jnp.stack([r.error for r in results])),
    )

  def _install_here(self, node: ScaleByShampooState, result: _roots.RootResult):
    """Installs ``result`` for step ``self.step + 1`` where the state's arrays live."""
    like = _roots.RootResult(
      roots=tuple(jax.tree.leaves(x)[0].sharding for x in node.preconditioners),
      bases=tuple(x.sharding for x in node.eigenbases) if result.bases else (),
      failed=tuple(x.sharding for x in node.root_steps),
      error=node.info.max_root_error.sharding,
    )
    step = jax.device_put(jnp.asarray(self.step + 1, jnp.int32), node.shampoo_count.sharding)
    return self._jit["install"](node, jax.device_put(result, like), step)

  def _install_on_replicas(self, node: ScaleByShampooState, result: _roots.RootResult):
    """Installs ``result`` for step ``self.step + 1`` on every replica of a ``pmap`` state."""
    if "install_replicated" not in self._jit:  # result and step are broadcast to every replica
      fn = jax.pmap(rt.install, in_axes=(0, None, None), devices=self._replicas)
      self._jit["install_replicated"] = fn
    return self._jit["install_replicated"](node, result, jnp.asarray(self.step + 1, jnp.int32))

  def _install_staggered(self, node: ScaleByShampooState, result: Any, phase: int):
    """Installs the roots of chunk ``phase`` for step ``self.step + 1``."""
    ids, schedules, step = self._ids(phase), self._plan.schedules, self.step + 1
    if self._replicas is not None:
      key = ("install_chunks_replicated", ids)
      if key not in self._jit:
        fn = lambda *args: rt.install_chunks(*args, ids, schedules)  # noqa: E731
        self._jit[key] = jax.pmap(fn, in_axes=(0, None, None, None), devices=self._replicas)
      return self._jit[key](node, result, phase, step)
    args = jax.device_put((result, phase, step), node.shampoo_count.sharding)
    return self._jit["install_chunks"](node, *args, ids, schedules)

  def wait(self) -> None:
    """Blocks until every root computation in flight is done (before timing or exiting)."""
    for entry in self._pending:
      entry[2].result()

  def close(self) -> None:
    """Waits for the computations in flight, stops the worker thread and closes a
    :class:`sops.RootProcess` root device (take :meth:`state_dict` first to checkpoint them).
    Also ``with sops.async_shampoo(...)[1] as roots: ...``."""
    self._closed = True
    self._worker.shutdown(wait=True)
    if isinstance(self.device, RootProcess):
      self.device.close()

  def __enter__(self) -> AsyncRoots:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def state_dict(self) -> dict[str, Any]:
    """The pipeline's state for a checkpoint: ``{"step": int, "pending": [...]}`` with the install
    step, statistics snapshot and warm-start eigenbases of every computation in flight (waits
    for the warm-start inputs of chained computations), and with ``stagger_roots`` its chunk
    (``"phase"``). With a sharded state the snapshots hold this process's blocks, its shares one
    after the other."""

    def entry(install_at, stats, bases, phase):
      out = {"install_at": install_at, "statistics": stats, "eigenbases": bases}
      return out if phase is None else out | {"phase": phase}

    pending = [
      entry(t, self._join(s), self._join(f.result()[0]), phase) for t, s, f, phase in self._pending
    ]
    pending += [entry(*restored) for restored in self._restored]
    return {"step": self.step, "pending": pending}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Restores :meth:`state_dict` into a fresh pipeline; the computations in flight are
    submitted again at the next call."""
    if self._pending:
      raise ValueError("load_state_dict needs a fresh AsyncRoots (computations are in flight).")
    self.step = int(state["step"])
    self._restored = [
      [
        int(p["install_at"]),
        tuple(p["statistics"]),
        tuple(p["eigenbases"]),
        None if p.get("phase") is None else int(p["phase"]),
      ]
      for p in state["pending"]
    ]


def async_shampoo(
  learning_rate: optax.ScalarOrSchedule,
  *,
  root_staleness: int = 1,
  root_device: Any = None,
  precondition_every: int = 50,
  start_preconditioning_step: int = 10,
  inverse_root: str | _roots.RootConfig = "auto",
  **kwargs: Any,
) -> tuple[optax.GradientTransformation, AsyncRoots]:
  r"""Shampoo whose inverse roots are computed asynchronously on another device.

  Returns a pure optax transform (``sops.shampoo(..., external_roots=True)``) and the
  :class:`AsyncRoots` pipeline that feeds it: call ``state = roots(state)`` after every optimizer
  step. The roots of the statistics at root step ``t`` are computed on ``root_device`` while the
  training device runs steps ``t + 1 .. t + s - 1`` and are first used at step ``t + s`` (``s =
  root_staleness``), exactly as ``sops.shampoo(..., root_staleness=s)`` computes them inside the
  step. This is the seed paper's pipeline: accelerators train while the host CPUs compute roots.

  Args:
    learning_rate: a float or an optax schedule.
    root_staleness: ``s >= 1``: steps from a statistics snapshot to the first use of its roots.
    root_device: the JAX device computing the roots (default: the last CPU device, i.e. the host
      when training on an accelerator), or a :class:`sops.RootProcess`: a separate process on
      its own CPU cores, for CPU-only machines, where a second CPU device of the training
      process shares its cores.
    precondition_every: steps between root computations (a static int here).
    start_preconditioning_step: first root step (a static int here).
    inverse_root: root method, as in :func:`sops.shampoo`; ``"auto"`` is ``"eigh"`` on a CPU
      ``root_device``, ``"coupled_newton"`` on an accelerator. When both the roots and the
      training run on CPU devices, ``RootConfig.sequential_eigh`` is set (same roots): XLA's
      batched CPU ``eigh`` runs on the process' shared thread pool, so next to training on
      another CPU device it would wait for the training's work (measured in
      ``docs/shampoo.md``).
    **kwargs: every other argument of :func:`sops.shampoo` (not ``root_staleness``); with
      ``axis_name`` the state may be ``pmap``-replicated. With ``stagger_roots=True`` every step
      snapshots one chunk of each stack and its roots are installed ``s`` steps later, as
      ``sops.shampoo(..., stagger_roots=True, root_staleness=s)`` computes them (not with a
      warm-started ``inverse_root``).

  Returns:
    ``(tx, roots)``: the ``optax.GradientTransformation`` and its :class:`AsyncRoots`.

  Raises:
    ValueError: naming an invalid argument.

  Examples:
    >>> import jax, sops
    >>> tx, roots = sops.async_shampoo(3e-3, root_staleness=10, root_device=jax.devices("cpu")[-1])

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018, Section 5 and Figure 2 (preconditioners computed on the host CPUs).
  """
  for name, value, low in (
    ("root_staleness", root_staleness, 1),
    ("precondition_every", precondition_every, 1),
    ("start_preconditioning_step", start_preconditioning_step, 1),
  ):
    utils.check_scalar(name, value, low=low, integer=True)
  for name in ("root_staleness", "external_roots"):
    if name in kwargs:
      raise ValueError(f"async_shampoo sets {name} itself; do not pass it.")
  device = jax.devices("cpu")[-1] if root_device is None else root_device
  if not isinstance(device, (jax.Device, RootProcess)):
    raise ValueError(f"root_device must be a jax.Device or a sops.RootProcess, got {device!r}.")
  cfg = _roots.RootConfig(inverse_root) if isinstance(inverse_root, str) else inverse_root
  if not isinstance(cfg, _roots.RootConfig):
    raise ValueError(f"inverse_root must be a str or a sops.RootConfig, got {inverse_root!r}.")
  cfg = cfg.resolved(device.platform)
  stagger = kwargs.get("stagger_roots", False)
  if stagger is True and cfg.tracks_basis:
    raise ValueError(
      "async_shampoo with stagger_roots=True needs an inverse_root without warm_start: its "
      "chunks' eigenbases would have to follow the installs in flight."
    )
  same_runtime = isinstance(device, jax.Device) and device.platform == jax.default_backend()
  if same_runtime and device.platform == "cpu":  # same results, no waiting on the pool
    cfg = dataclasses.replace(cfg, sequential_eigh=True)
  tx = shampoo(
    learning_rate,
    precondition_every=precondition_every,
    start_preconditioning_step=start_preconditioning_step,
    inverse_root=cfg,
    external_roots=True,
    **kwargs,
  )
  root_kwargs = {k: v for k, v in kwargs.items() if k in rt.ROOT_ARGS} | {"inverse_root": cfg}
  every, start = int(precondition_every), int(start_preconditioning_step)
  return tx, AsyncRoots(root_kwargs, int(root_staleness), every, start, device, stagger is True)
