# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Every example runs in ``--smoke`` mode, and the benchmark runner in ``--quick`` mode.

Each runs as its own process (as a user runs it), so these are ``extended`` tests: CI runs them
(``python -m pytest -m extended``), the default suite does not.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))

pytestmark = pytest.mark.extended


def _run(args, cwd, timeout=900):
  env = {**os.environ, "MPLBACKEND": "Agg"}
  env.pop("XLA_FLAGS", None)  # each script sets up its own devices, as for a user
  proc = subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_in_smoke_mode(name, tmp_path):
  out = _run([str(ROOT / "examples" / name), "--smoke"], cwd=tmp_path)
  assert out.strip(), "printed nothing"
  assert not re.search(r"(^|[\s|])-?(nan|inf)($|[\s|])", out, flags=re.I | re.M), out


def test_runner_quick_mode_writes_table_json_and_plot(tmp_path):
  out = tmp_path / "results"
  args = ["-m", "benchmarks.run", "--quick", "--scenarios", "regression", "--out", str(out)]
  _run(args, cwd=ROOT)
  assert (out / "regression.png").stat().st_size > 0
  table = (out / "scenarios.md").read_text()
  for name in ("adamw", "sgd", "muon", "newton_cg", "shampoo", "soap"):
    assert f"| {name} |" in table
  data = json.loads((out / "scenarios.json").read_text())
  assert data["meta"]["machine"]["jax"]
  (scenario,) = data["scenarios"]
  assert {r["optimizer"] for r in scenario["summary"]} >= {"adamw", "newton_cg", "shampoo"}
