# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""``benchmarks/newton_cg_scaling.py --quick`` on the 8 simulated devices of ``conftest.py``.

Sharded Newton-CG (batch split over 1, 2, 4 and 8 devices, no ``axis_name``) must do a fixed
amount of work (every step ``maxiter`` CG iterations) and train the same parameters as 1 device
on the same global batches, up to the rounding the script states (``TOLERANCE``).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

pytestmark = pytest.mark.extended

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "newton_cg_scaling.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("newton_cg_scaling", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_run_matches_one_device_with_full_cg_at_every_device_count(devices, tmp_path):
  script = _load_script()
  out = tmp_path / "newton_cg_scaling.json"
  returned = script.main(["--quick", "--curvatures", "hessian", "--out", str(out)])
  data = json.loads(out.read_text())
  meta, rows = data["meta"], data["rows"]
  assert meta["machine"]["devices"] == [str(d) for d in devices]
  assert meta["tolerance"] == script.TOLERANCE["float32"]
  assert [(r["mode"], r["curvature"], r["devices"]) for r in rows] == [
    ("strong", "hessian", n) for n in (1, 2, 4, 8)
  ]
  steps = meta["args"]["chunk"] + meta["args"]["steps"]  # warm-up chunk + timed steps
  for row in rows:
    n = row["devices"]
    assert row["global_batch"] == rows[0]["global_batch"] == n * row["per_device_batch"]
    assert row["cg_iterations_per_step"] == [meta["args"]["maxiter"]] * steps, n
    assert row["max_abs_diff"] <= meta["tolerance"], n
    assert row["steps_per_s"] > 0 and row["efficiency"] > 0
    # The batch really is split: XLA inserted cross-device reductions, and only for N > 1.
    assert (row["collective_ops"]["all-reduce"] > 0) == (n > 1), (n, row["collective_ops"])
  assert rows[0]["max_abs_diff"] == 0.0 and rows[0]["efficiency"] == 1.0
  # Training happened (runs that never moved would match trivially): the loss went down.
  assert rows[0]["losses"][-1] < rows[0]["losses"][0]
  assert meta["params_match"] and meta["full_cg_iterations"]
  assert returned["rows"][-1]["max_abs_diff"] == rows[-1]["max_abs_diff"]
