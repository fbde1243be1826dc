# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Test configuration: 8 simulated CPU devices, set before JAX is imported."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
  """The 8 simulated CPU devices."""
  devs = jax.devices()
  assert len(devs) == 8, f"expected 8 simulated devices, got {len(devs)}"
  return devs


@pytest.fixture
def rng():
  """A numpy Generator with a fresh seed each run; the seed is printed (pytest shows it on failure).

  Reproduce a failure with ``SOPS_TEST_SEED=<seed> python -m pytest ...``.
  """
  seed = int(os.environ.get("SOPS_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
  print(f"seed={seed} (rerun with SOPS_TEST_SEED={seed})")
  return np.random.default_rng(seed)
