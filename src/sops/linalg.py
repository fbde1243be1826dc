# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Numerical kernels of sops: batched inverse p-th roots and pytree conjugate gradients."""

from sops._src.cg import (
  CGInfo,
  CGIterates,
  backtracking_iterations,
  conjugate_gradient,
  conjugate_gradient_iterates,
)
from sops._src.linalg import InversePthRootInfo, inverse_pth_root

__all__ = [
  "CGInfo",
  "CGIterates",
  "InversePthRootInfo",
  "backtracking_iterations",
  "conjugate_gradient",
  "conjugate_gradient_iterates",
  "inverse_pth_root",
]
