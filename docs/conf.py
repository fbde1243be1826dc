"""Sphinx configuration for the sops documentation (builds offline)."""

import os
import sys

sys.path.insert(0, os.path.abspath("../src"))

import sops  # noqa: E402

project = "sops"
author = "The sops authors"
copyright = "2026, The sops authors"
release = sops.__version__
version = sops.__version__

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Intersphinx would need the network; keep the build offline.
html_theme = "furo"
html_title = f"sops {release}"
exclude_patterns = ["_build", "results/*.md"]  # results/ is included by results.md
nitpicky = False
suppress_warnings = ["myst.header"]
