# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""The README's Python code blocks run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_blocks():
  assert BLOCKS, "README.md has no ```python blocks"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code, capsys):
  namespace = {"__name__": "readme"}
  exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (our own README)
  out = capsys.readouterr().out
  if "loss after 20 Newton-CG steps" in code:
    loss = float(re.search(r"steps: ([0-9.]+)", out).group(1))
    assert loss < 0.5, out  # chance level is log(10) = 2.3
