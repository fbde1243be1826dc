# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Run a JAX program as several processes on this machine, joined by JAX's distributed runtime.

``python -m sops.launch -n 2 script.py [args]`` starts ``script.py`` twice, as processes 0 and 1
of one JAX job: each gets the coordinator's address (a free local port), the process count and
its own index in environment variables, and with ``--devices-per-process 4`` (the default on a
CPU) four simulated CPU devices, so the job sees 8 global devices. The script calls
:func:`initialize` before it touches a device; that hands the variables to
``jax.distributed.initialize`` (with gloo collectives on the CPU). There is no communication
layer of ours: every collective is JAX's.

On a cluster, leave this launcher out: start one process per host (SLURM ``srun``, a TPU pod's
``gcloud ... --worker=all``, ``mpirun``, Kubernetes) and call ``initialize(cluster=True)``, which
lets ``jax.distributed.initialize()`` detect the cluster (see ``docs/distributed.md``).

    python -m sops.launch -n 2 examples/multihost_training.py
    python -m sops.launch -n 2 --devices-per-process 4 --timeout 300 my_script.py --steps 100
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

COORDINATOR = "SOPS_COORDINATOR_ADDRESS"
NUM_PROCESSES = "SOPS_NUM_PROCESSES"
PROCESS_ID = "SOPS_PROCESS_ID"


def initialize(*, cluster: bool = False) -> bool:
  """Joins this process to its JAX job; call it before any other JAX call that uses a device.

  Under ``python -m sops.launch`` it calls ``jax.distributed.initialize(address, num_processes,
  process_id)`` with the launcher's values and selects gloo for cross-process CPU collectives.
  Elsewhere, with ``cluster=True``, it calls ``jax.distributed.initialize()``, which detects SLURM,
  Open MPI, Kubernetes and Cloud TPU jobs by itself; with ``cluster=False`` it does nothing (a
  single-process run).

  Args:
    cluster: outside the launcher, initialise from the cluster's environment.

  Returns:
    Whether JAX now runs as one process of a multi-process job.

  Examples:
    >>> import sops.launch
    >>> sops.launch.initialize()  # a plain single-process run: nothing to join
    False

  References:
    JAX documentation, "Multi-host and multi-process environments" (``jax.distributed``).
  """
  import jax  # imported here: ``python -m sops.launch`` itself never needs JAX

  if COORDINATOR in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      os.environ[COORDINATOR],
      num_processes=int(os.environ[NUM_PROCESSES]),
      process_id=int(os.environ[PROCESS_ID]),
    )
    return True
  if cluster:
    jax.distributed.initialize()
    return True
  return False


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(process_id: int, num_processes: int, port: int, devices: int | None) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    {
      COORDINATOR: f"127.0.0.1:{port}",
      NUM_PROCESSES: str(num_processes),
      PROCESS_ID: str(process_id),
    }
  )
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
  return env


def launch(
  command: Sequence[str],
  num_processes: int,
  *,
  devices_per_process: int | None = 4,
  port: int = 0,
  timeout: float | None = None,
) -> int:
  """Runs ``command`` as ``num_processes`` processes of one JAX job and waits for all of them.

  If one process fails, the others are stopped (a collective would otherwise wait for it
  forever); so are all of them after ``timeout`` seconds.

  Args:
    command: the program and its arguments, e.g. ``[sys.executable, "train.py", "--steps", "20"]``.
    num_processes: how many processes to start (>= 1).
    devices_per_process: simulated CPU devices per process (``None``: leave ``XLA_FLAGS`` alone,
      e.g. on a GPU host).
    port: the coordinator's port on 127.0.0.1 (0: a free one).
    timeout: seconds before every process is stopped (``None``: no limit).

  Returns:
    0 if every process succeeded; else the first non-zero exit status (124 on timeout).

  Raises:
    ValueError: if ``num_processes`` or ``devices_per_process`` is below 1.

  Examples:
    >>> import sys, sops.launch
    >>> sops.launch.launch([sys.executable, "-c", "pass"], 2)
    0
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
  if devices_per_process is not None and devices_per_process < 1:
    raise ValueError(f"devices_per_process must be >= 1 or None, got {devices_per_process}.")
  port = port or free_port()
  procs = [
    subprocess.Popen(list(command), env=_env(i, num_processes, port, devices_per_process))
    for i in range(num_processes)
  ]
  deadline = None if timeout is None else time.monotonic() + timeout
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed or (deadline is not None and time.monotonic() > deadline):
        status = failed[0] if failed else 124
        break
      time.sleep(0.05)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      p.wait()
  return status or next((p.returncode for p in procs if p.returncode), 0)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m sops.launch -n N [options] script.py [args]``; returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m sops.launch", description=__doc__.split("\n")[0])
  parser.add_argument("-n", "--num-processes", type=int, default=2)
  parser.add_argument(
    "--devices-per-process",
    type=int,
    default=4,
    help="simulated CPU devices per process; 0 leaves XLA_FLAGS alone (GPU hosts)",
  )
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before all are stopped")
  parser.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args]")
  args = parser.parse_args(argv)
  if not args.program:
    parser.error("name the script to run, e.g. python -m sops.launch -n 2 train.py")
  command = [sys.executable, *args.program]
  return launch(
    command,
    args.num_processes,
    devices_per_process=args.devices_per_process or None,
    port=args.port,
    timeout=args.timeout,
  )


if __name__ == "__main__":
  sys.exit(main())
