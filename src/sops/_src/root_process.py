# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""A separate process that computes Shampoo's roots for :class:`sops.AsyncRoots`.

On a CPU-only machine a second JAX CPU device of the same process shares the process' XLA
runtime: one device's training step already spreads over every core, so roots computed on another
device take their time from training. A separate process, pinned to its own cores, is the CPU
stand-in for the seed paper's host: it receives statistics snapshots as NumPy arrays, computes
their roots with the same jitted function (so the same roots) and sends them back.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def _serve(conn, cpus, shapes, every, stagger, root_kwargs) -> None:
  """The root process: builds the root functions, then answers ``(name, arrays, static)``."""
  if cpus:
    os.sched_setaffinity(0, cpus)
  from sops._src import root_transfer  # noqa: PLC0415 (imported in the child only)

  momentum = [jax.ShapeDtypeStruct(shape, np.float32) for shape in shapes]
  plan = root_transfer.root_function(momentum, every, stagger, **root_kwargs)
  fns = {
    "roots": jax.jit(plan.roots, static_argnums=2),
    "chunk_roots": jax.jit(plan.chunk_roots, static_argnums=2),
  }
  conn.send("ready")
  while (request := conn.recv()) is not None:
    name, arrays, static = request
    conn.send(jax.tree.map(np.asarray, jax.block_until_ready(fns[name](*arrays, static))))


class RootProcess:
  r"""A separate process computing Shampoo's inverse roots, for :func:`sops.async_shampoo`.

  Pass it as ``root_device``: the pipeline then copies each statistics snapshot to the host, the
  process (started at the first root step, pinned to ``cpus``) computes the roots with the same
  jitted function as an in-process root device, and the pipeline installs them. Use it on a
  CPU-only machine, where a second JAX CPU device of the training process competes with the
  training step for the same cores (measured in ``docs/shampoo.md``); pin the training process
  to the other cores (``os.sched_setaffinity``) before JAX starts.

  Args:
    cpus: the CPU cores the process may run on (``None``: those of its parent).

  Examples:
    >>> import sops
    >>> tx, roots = sops.async_shampoo(3e-3, root_staleness=10, root_device=sops.RootProcess())

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018, Section 5 (preconditioners computed on the host CPUs).
  """

  platform = "cpu"

  def __init__(self, cpus: Iterable[int] | None = None):
    self.cpus = None if cpus is None else frozenset(int(c) for c in cpus)
    if self.cpus is not None and not self.cpus:
      raise ValueError("cpus must name at least one core, or be None.")
    self._conn = None
    self._process = None

  def start(self, momentum: Any, every: int, stagger: bool, root_kwargs: dict) -> None:
    """Starts the process for parameters shaped like ``momentum`` (waits until it is ready)."""
    if self._process is not None:
      return
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(momentum)]
    ctx = multiprocessing.get_context("spawn")  # a fresh JAX runtime, no forked threads
    self._conn, child = ctx.Pipe()
    args = (child, self.cpus, shapes, every, stagger, root_kwargs)
    self._process = ctx.Process(target=_serve, args=args, daemon=True, name="sops-roots")
    self._process.start()
    if self._conn.recv() != "ready":
      raise RuntimeError("the root process did not start.")

  def __call__(self, name: str, arrays: tuple[Any, ...], static: Any) -> Any:
    """``name`` (``"roots"`` or ``"chunk_roots"``) of ``arrays`` (copied to the host) and a
    static last argument, computed in the process; NumPy results."""
    self._conn.send((name, jax.tree.map(np.asarray, arrays), static))
    return self._conn.recv()

  def close(self) -> None:
    """Stops the process (it also ends with its parent)."""
    if self._process is not None:
      self._conn.send(None)
      self._process.join(timeout=10)
      self._process = self._conn = None

  def __repr__(self) -> str:
    return f"RootProcess(cpus={None if self.cpus is None else sorted(self.cpus)})"
