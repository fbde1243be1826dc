"""Package-level checks: version, public API, typing marker, simulated devices."""

import importlib.resources

import jax

import sops


def test_version_is_a_pep440_string():
  parts = sops.__version__.split(".")
  assert len(parts) >= 3 and all(p.isdigit() for p in parts[:3])


def test_public_api_is_exported():
  for name in ["newton_cg", "scale_by_newton_cg", "shampoo", "scale_by_shampoo", "linalg"]:
    assert hasattr(sops, name), name
  assert callable(sops.linalg.inverse_pth_root)
  assert callable(sops.linalg.conjugate_gradient)


def test_package_ships_py_typed():
  assert importlib.resources.files("sops").joinpath("py.typed").is_file()


def test_conftest_gives_eight_cpu_devices(devices):
  assert jax.device_count() == 8
  assert all(d.platform == "cpu" for d in devices)
