# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Multi-process training: 2 processes x 4 CPU devices equal 1 process x 8 devices.

Each run is ``examples/multihost_training.py`` in fresh processes (``python -m sops.launch`` for
two processes joined by ``jax.distributed`` with gloo collectives, a free port each time), in
float64, for Newton-CG, Shampoo and SOAP, with replicated (data-parallel) and FSDP-sharded
parameters.
The 2-process run also writes a sharded orbax checkpoint after 10 of its 20 steps; a 1-process
run restores it and continues, and must end where the uninterrupted 1-process run ends.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import sops.launch

pytestmark = pytest.mark.extended

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "multihost_training.py")
OPTIMIZERS = ["newton_cg", "shampoo", "soap"]
ARGS = ["--x64", "--steps", "20", "--layouts", "dp,fsdp", "--optimizers", ",".join(OPTIMIZERS)]
TIMEOUT = 600


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # the 1-process runs
  return env


def _one_process(*args: str) -> None:
  subprocess.run([sys.executable, SCRIPT, *args], env=_env(), check=True, timeout=TIMEOUT)


def _two_processes(*args: str) -> None:
  command = [sys.executable, "-m", "sops.launch", "-n", "2", "--devices-per-process", "4"]
  command += ["--timeout", str(TIMEOUT), SCRIPT, *args]
  subprocess.run(command, env=_env(), check=True, timeout=TIMEOUT + 30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  d = tmp_path_factory.mktemp("multihost")
  ckpt = str(d / "ckpt")
  _two_processes(*ARGS, "--out", str(d / "two.npz"), "--checkpoint-dir", ckpt)
  _one_process(*ARGS, "--out", str(d / "one.npz"))
  _one_process(*ARGS, "--out", str(d / "resumed.npz"), "--restore", ckpt)
  return {k: dict(np.load(d / f"{k}.npz")) for k in ("two", "one", "resumed")}


def _assert_equal(a: dict, b: dict, prefix: str) -> None:
  keys = sorted(k for k in a if k.startswith(prefix))
  assert keys and keys == sorted(k for k in b if k.startswith(prefix))
  for k in keys:
    assert a[k].dtype == np.float64
    np.testing.assert_allclose(a[k], b[k], rtol=1e-10, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("layout", ["dp", "fsdp"])
@pytest.mark.parametrize("optimizer", ["newton_cg", "shampoo"])
def test_two_processes_equal_one(runs, optimizer, layout):
  prefix = f"{optimizer}/{layout}/"
  _assert_equal(runs["two"], runs["one"], prefix)
  # Every optimizer starts from the same initialisation: they moved the parameters, differently.
  other = prefix.replace(optimizer, "shampoo" if optimizer == "newton_cg" else "newton_cg")
  one = runs["one"]
  moved = [np.abs(one[k] - one[k.replace(prefix, other)]).max() for k in one if prefix in k]
  assert max(moved) > 1e-3


@pytest.mark.parametrize("layout", ["dp", "fsdp"])
@pytest.mark.parametrize("optimizer", ["newton_cg", "shampoo"])
def test_two_process_checkpoint_resumes_in_one_process(runs, optimizer, layout):
  _assert_equal(runs["resumed"], runs["one"], f"{optimizer}/{layout}/")


@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_soap_across_processes_runs_and_resumes(runs, layout):
  # SOAP's eigenbasis is not a continuous function of the statistics where eigenvalues are
  # (nearly) equal, as in the first, rank-deficient steps: rounding differences of another
  # reduction order pick another basis there, and the trajectories part (~2e-2 after 20 steps).
  # What must hold: it runs across processes (no deadlock), and once the bases have settled, the
  # 1-process continuation of the 2-process checkpoint equals the 2-process run.
  prefix = f"soap/{layout}/"
  _assert_equal(runs["resumed"], runs["two"], prefix)
  assert all(np.all(np.isfinite(runs["two"][k])) for k in runs["two"] if k.startswith(prefix))


def test_launch_reports_the_failure_of_one_process():
  code = "import os, sys; sys.exit(3 if os.environ['SOPS_PROCESS_ID'] == '1' else 0)"
  assert sops.launch.launch([sys.executable, "-c", code], 2, timeout=60) == 3


def test_launch_stops_every_process_on_timeout():
  code = "import time; time.sleep(60)"
  assert sops.launch.launch([sys.executable, "-c", code], 2, timeout=1) == 124


def test_launch_validates_its_arguments():
  with pytest.raises(ValueError, match="num_processes"):
    sops.launch.launch([sys.executable, "-c", "pass"], 0)
  with pytest.raises(ValueError, match="devices_per_process"):
    sops.launch.launch([sys.executable, "-c", "pass"], 2, devices_per_process=0)


def test_launch_command_line_needs_a_program(tmp_path):
  with pytest.raises(SystemExit):
    sops.launch.main(["-n", "2"])
  script = tmp_path / "ok.py"
  script.write_text("import os, sys; sys.exit(int(os.environ['SOPS_NUM_PROCESSES']) - 2)\n")
  assert sops.launch.main(["-n", "2", str(script), "--an-argument"]) == 0
