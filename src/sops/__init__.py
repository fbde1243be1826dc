# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""sops: second-order optimizers for JAX as Optax gradient transformations.

Public API:

* :func:`sops.newton_cg` / :func:`sops.scale_by_newton_cg` -- Hessian-free Newton-CG
  (Reiz, Neckel, Bungartz, arXiv:2208.02017; Martens 2010).
* :func:`sops.newton_cg_minimize` -- the whole Newton-CG solve of a full-batch problem in one
  jitted ``lax.while_loop`` (Nocedal & Wright, Algorithm 7.1).
* :func:`sops.shampoo` / :func:`sops.scale_by_shampoo` -- blocked Shampoo
  (Anil, Gupta, Koren, Regan, Singer, arXiv:2002.09018); :func:`sops.async_shampoo` computes its
  roots on another device while training runs.
* :func:`sops.soap` / :func:`sops.scale_by_soap` -- Adam in Shampoo's eigenbasis
  (Vyas et al., arXiv:2409.11321).
* :mod:`sops.linalg` -- the numerical kernels (batched inverse p-th roots, pytree CG).
"""

from sops import linalg
from sops._src.async_roots import AsyncRoots, async_shampoo
from sops._src.fisher_kronecker import KroneckerFactors, fisher_kronecker
from sops._src.hessian_free import fisher_diagonal
from sops._src.minimize import NewtonCGMinimizeInfo, newton_cg_minimize
from sops._src.newton_cg import (
  NewtonCGInfo,
  ScaleByNewtonCGState,
  newton_cg,
  scale_by_newton_cg,
)
from sops._src.root_process import RootProcess
from sops._src.roots import RootConfig
from sops._src.shampoo import (
  ScaleByShampooState,
  ShampooInfo,
  scale_by_shampoo,
  shampoo,
)
from sops._src.sharding import fsdp_sharding, shampoo_state_sharding
from sops._src.soap import ScaleBySoapState, SoapInfo, scale_by_soap, soap
from sops._src.storage import StateStorage

__version__ = "0.1.0"

__all__ = [
  "AsyncRoots",
  "KroneckerFactors",
  "NewtonCGInfo",
  "NewtonCGMinimizeInfo",
  "RootConfig",
  "RootProcess",
  "ScaleByNewtonCGState",
  "ScaleByShampooState",
  "ScaleBySoapState",
  "ShampooInfo",
  "SoapInfo",
  "StateStorage",
  "__version__",
  "async_shampoo",
  "fisher_diagonal",
  "fisher_kronecker",
  "fsdp_sharding",
  "linalg",
  "newton_cg",
  "newton_cg_minimize",
  "scale_by_newton_cg",
  "scale_by_shampoo",
  "scale_by_soap",
  "shampoo",
  "shampoo_state_sharding",
  "soap",
]
