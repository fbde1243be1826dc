"""Every public function documents Args, Returns, Examples and References, and its examples run."""

import doctest
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sops

PUBLIC_FUNCTIONS = [
  sops.newton_cg,
  sops.scale_by_newton_cg,
  sops.shampoo,
  sops.scale_by_shampoo,
  sops.shampoo_state_sharding,
  sops.async_shampoo,
  sops.newton_cg_minimize,
  sops.fisher_kronecker,
  sops.soap,
  sops.scale_by_soap,
  sops.linalg.inverse_pth_root,
  sops.linalg.conjugate_gradient,
]


def _name(fn):
  return f"{fn.__module__}.{fn.__qualname__}"


@pytest.mark.parametrize("fn", PUBLIC_FUNCTIONS, ids=_name)
def test_public_function_docstring_has_required_sections(fn):
  doc = inspect.getdoc(fn) or ""
  for section in ("Args:", "Returns:", "Examples:", "References:"):
    assert section in doc, f"{_name(fn)} docstring lacks {section!r}"
  assert ">>>" in doc, f"{_name(fn)} has no runnable example"


@pytest.mark.parametrize("fn", PUBLIC_FUNCTIONS, ids=_name)
def test_public_function_docstring_examples_run(fn):
  globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "sops": sops}
  finder = doctest.DocTestFinder(recurse=False)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  tests = finder.find(fn, _name(fn), globs=globs)
  assert tests and tests[0].examples, f"{_name(fn)}: no doctest examples found"
  for t in tests:
    runner.run(t)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{_name(fn)}: {result.failed} doctest example(s) failed"


PUBLIC_CLASSES = [sops.RootConfig, sops.AsyncRoots, sops.StateStorage, sops.KroneckerFactors]


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=_name)
def test_public_class_docstring_documents_attributes_and_its_examples_run(cls):
  doc = inspect.getdoc(cls) or ""
  for section in ("Attributes:", "Examples:", "References:"):
    assert section in doc, f"{_name(cls)} docstring lacks {section!r}"
  globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "sops": sops}
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  tests = doctest.DocTestFinder(recurse=False).find(cls, _name(cls), globs=globs)
  assert tests and tests[0].examples
  for t in tests:
    runner.run(t)
  assert runner.summarize(verbose=False).failed == 0
