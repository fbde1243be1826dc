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
import traceback
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np


def _serve(conn, cpus, x64, leaves, every, stagger, root_kwargs) -> None:
  """The root process: builds the root functions, then answers ``(name, arrays, static)`` with
  ``("ok", result)``, or ``("error", traceback)`` if a request fails (it keeps serving)."""
  try:
    if cpus:
      os.sched_setaffinity(0, cpus)
    jax.config.update("jax_enable_x64", x64)  # the parent's dtypes, not a float32 copy of them
    from sops._src import root_transfer  # noqa: PLC0415 (imported in the child only)

    momentum = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in leaves]
    plan = root_transfer.root_function(momentum, every, stagger, **root_kwargs)
    fns = {
      "roots": jax.jit(plan.roots, static_argnums=2),
      "chunk_roots": jax.jit(plan.chunk_roots, static_argnums=2),
    }
  except Exception:  # noqa: BLE001 (reported to the parent, which raises it)
    conn.send(("error", traceback.format_exc()))
    return
  conn.send(("ok", None))
  while (request := conn.recv()) is not None:
    try:
      name, arrays, static = request
      out = jax.tree.map(np.asarray, jax.block_until_ready(fns[name](*arrays, static)))
    except Exception:  # noqa: BLE001
      conn.send(("error", traceback.format_exc()))
    else:
      conn.send(("ok", out))


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
    leaves = [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in jax.tree.leaves(momentum)]
    ctx = multiprocessing.get_context("spawn")  # a fresh JAX runtime, no forked threads
    conn, child = ctx.Pipe()
    x64 = bool(jax.config.jax_enable_x64)
    args = (child, self.cpus, x64, leaves, every, stagger, root_kwargs)
    process = ctx.Process(target=_serve, args=args, daemon=True, name="sops-roots")
    try:
      process.start()  # pickles the arguments: an unpicklable hyperparameter raises here
    except BaseException:
      conn.close()
      raise
    finally:
      child.close()  # only the process writes to its end: its exit then ends a pending recv here
    self._conn, self._process = conn, process
    try:
      self._receive("start")
    except RuntimeError:
      self.close()
      raise

  def _receive(self, what: str) -> Any:
    """The process' answer to the last request; a ``RuntimeError`` carrying its traceback if the
    request failed there, or if the process has ended."""
    try:
      status, out = self._conn.recv()
    except (EOFError, OSError) as e:
      raise RuntimeError(f"{self._ended()} during {what}.") from e
    if status != "ok":
      raise RuntimeError(f"the root process failed during {what}:\n{out}")
    return out

  def _ended(self) -> str:
    """Why the process cannot answer: it has ended, with its exit code."""
    self._process.join(timeout=5)
    return (
      f"the root process ended (exit code {self._process.exitcode}; a script starting it must "
      "guard its entry point with `if __name__ == '__main__':`, as multiprocessing's spawn "
      "start method requires)"
    )

  def __call__(self, name: str, arrays: tuple[Any, ...], static: Any) -> Any:
    """``name`` (``"roots"`` or ``"chunk_roots"``) of ``arrays`` (copied to the host) and a
    static last argument, computed in the process; NumPy results."""
    if self._process is None:
      raise RuntimeError("the root process is not running (not started yet, or closed).")
    try:
      self._conn.send((name, jax.tree.map(np.asarray, arrays), static))
    except OSError as e:
      raise RuntimeError(f"{self._ended()}.") from e
    return self._receive(repr(name))

  def close(self) -> None:
    """Stops the process (it also ends with its parent)."""
    if self._process is not None:
      try:
        self._conn.send(None)
      except OSError:  # it has ended already
        pass
      self._process.join(timeout=10)
      if self._process.is_alive():
        self._process.terminate()
      self._process = self._conn = None

  def __repr__(self) -> str:
    return f"RootProcess(cpus={None if self.cpus is None else sorted(self.cpus)})"
