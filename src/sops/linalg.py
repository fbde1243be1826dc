# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Numerical kernels of sops: batched inverse p-th roots and pytree conjugate gradients."""

from sops._src.cg import CGInfo, conjugate_gradient
from sops._src.linalg import InversePthRootInfo, inverse_pth_root

__all__ = [
  "CGInfo",
  "InversePthRootInfo",
  "conjugate_gradient",
  "inverse_pth_root",
]
