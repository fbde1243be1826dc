# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Shardings for optimizer states under ``jit``: Shampoo's stacked blocks split over a mesh axis.

With the stacks of statistics and preconditioners split along their leading (block) axis, XLA's
SPMD partitioner runs the batched root computation on each device's share of the blocks only; no
communication layer of our own is involved.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

from sops._src.shampoo import ScaleByShampooState
from sops._src.soap import ScaleBySoapState


def _is_shampoo(x: Any) -> bool:
  return isinstance(x, (ScaleByShampooState, ScaleBySoapState))


def _like(tree: Any, sharding: Any) -> Any:
  """``sharding`` for every leaf of ``tree``: one ``Sharding``, or a tree of them shaped like it."""
  if isinstance(sharding, Sharding) or not jax.tree.leaves(tree):
    return jax.tree.map(lambda _: sharding, tree)
  return jax.tree.map(lambda _, s: s, tree, sharding)


def shampoo_state_sharding(
  state: Any,
  mesh: Mesh,
  axis: str,
  *,
  params_sharding: Any = None,
) -> Any:
  r"""Shardings for an optimizer state holding Shampoo states: block stacks split over ``axis``.

  Every :class:`sops.ScaleByShampooState` and :class:`sops.ScaleBySoapState` inside ``state``
  (alone, or inside ``optax.chain``, ``inject_hyperparams``, ``MultiSteps`` ...) gets
  ``PartitionSpec(axis)`` on its stacked statistics and preconditioners (SOAP: eigenbases), so
  under ``jit`` with these shardings each device stores and computes the inverse roots (SOAP: the
  basis refreshes) of ``1/N`` of the blocks (``N = mesh.shape[axis]``); XLA partitions the batched
  computation along the stack. The graft moments and momentum (SOAP's Adam moments), shaped like
  the parameters, get ``params_sharding`` (replicated when ``None``), and every other leaf is
  replicated. Each stack must split evenly: build the optimizer with ``num_shards=N`` (stacks are
  padded with empty blocks to a multiple of ``N``). ``axis`` must be an ``AxisType.Auto`` mesh axis
  (the sharding-in-types ``Explicit`` mode is not supported yet).

  Args:
    state: an optimizer state, or its abstract version (``jax.eval_shape(tx.init, params)``).
    mesh: the device mesh.
    axis: name of the mesh axis to split the block stacks over.
    params_sharding: a ``Sharding`` for every parameter, or a pytree of them shaped like the
      parameters; ``None`` replicates the parameter-shaped state.

  Returns:
    A pytree of ``jax.sharding.NamedSharding`` (or of ``params_sharding``'s leaves) with the
    structure of ``state``, for ``jax.device_put`` and ``jax.jit(in_shardings=...,
    out_shardings=...)``.

  Raises:
    ValueError: if ``axis`` is not an Auto axis of ``mesh`` or a stack does not split evenly over
      it.

  Examples:
    >>> import jax, jax.numpy as jnp, sops
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> params = {"w": jnp.ones((300, 40))}
    >>> tx = sops.shampoo(1e-3, block_size=128, num_shards=mesh.shape["data"])
    >>> state = tx.init(params)
    >>> shardings = sops.shampoo_state_sharding(state, mesh, "data")
    >>> shardings[0].statistics[0].spec == jax.sharding.PartitionSpec("data")
    True
    >>> state = jax.device_put(state, shardings)

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018, Section 5 (preconditioner computation distributed over devices).
  """
  if axis not in mesh.shape:
    raise ValueError(f"axis must be one of the mesh axes {tuple(mesh.shape)}, got {axis!r}.")
  if mesh.axis_types[mesh.axis_names.index(axis)] == AxisType.Explicit:
    raise ValueError(
      f"Mesh axis {axis!r} is Explicit; shampoo_state_sharding needs an Auto axis, so that XLA "
      "partitions the root computation: jax.make_mesh(..., axis_types=(AxisType.Auto, ...))."
    )
  n = mesh.shape[axis]
  replicated = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P(axis))

  def stacks(xs):
    # Every array of a stack (also the parts of a quantised one) leads with the blocks' axis.
    for x in jax.tree.leaves(xs):
      if x.shape[0] % n:
        raise ValueError(
          f"A Shampoo stack of {x.shape[0]} blocks does not split over the {n} devices of mesh "
          f"axis {axis!r}: build the optimizer with num_shards={n}."
        )
    return jax.tree.map(lambda _: split, xs)

  def one(x):
    if not _is_shampoo(x):
      return jax.tree.map(lambda _: replicated, x)
    like_params = replicated if params_sharding is None else params_sharding
    if isinstance(x, ScaleBySoapState):
      return ScaleBySoapState(
        soap_count=replicated,
        soap_statistics=stacks(x.soap_statistics),
        soap_eigenbases=stacks(x.soap_eigenbases),
        soap_mu=_like(x.soap_mu, like_params),
        soap_nu=_like(x.soap_nu, like_params),
        info=jax.tree.map(lambda _: replicated, x.info),
      )
    return ScaleByShampooState(
      shampoo_count=replicated,
      statistics=stacks(x.statistics),
      preconditioners=stacks(x.preconditioners),
      eigenbases=stacks(x.eigenbases),
      pending_statistics=tuple(stacks(snap) for snap in x.pending_statistics),
      root_steps=stacks(x.root_steps),
      graft_nu=_like(x.graft_nu, like_params),
      shampoo_momentum=_like(x.shampoo_momentum, like_params),
      info=jax.tree.map(lambda _: replicated, x.info),
    )

  return jax.tree.map(one, state, is_leaf=_is_shampoo)


def fsdp_sharding(tree: Any, mesh: Mesh, axis: str, *, min_size: int = 2**14) -> Any:
  """FSDP-style shardings: every large array split over ``axis`` along one of its dimensions.

  Each leaf of ``tree`` with at least ``min_size`` elements is split along its largest dimension
  that divides evenly over the ``N = mesh.shape[axis]`` devices (the first such one on ties), so
  each device stores ``1/N`` of it; smaller leaves, and leaves no dimension of which divides, are
  replicated. Use it for the parameters (and so, through ``params_sharding`` of
  :func:`sops.shampoo_state_sharding`, for the parameter-shaped optimizer state): under ``jit``
  XLA all-gathers each weight where the forward pass needs it and reduce-scatters its gradient,
  as in fully sharded data parallelism. The rule depends only on shapes, so the gradients and the
  parameter-shaped moments of any optimizer get the same sharding as their parameters.

  Args:
    tree: a pytree of arrays (or of ``jax.ShapeDtypeStruct``), e.g. the parameters.
    mesh: the device mesh.
    axis: name of the mesh axis to split over.
    min_size: leaves with fewer elements stay replicated (splitting them saves little memory and
      costs a collective each).

  Returns:
    A pytree of ``jax.sharding.NamedSharding`` with the structure of ``tree``.

  Raises:
    ValueError: if ``axis`` is not a mesh axis or ``min_size`` is negative.

  Examples:
    >>> import jax, jax.numpy as jnp, sops
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> params = {"w": jnp.ones((4096, 1024)), "b": jnp.ones(1024)}
    >>> shardings = sops.fsdp_sharding(params, mesh, "data")
    >>> shardings["w"].spec, shardings["b"].spec
    (PartitionSpec('data', None), PartitionSpec())

  References:
    Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
    arXiv:2304.11277; Xu et al., "GSPMD", arXiv:2105.04663 (sharding annotations in XLA).
  """
  if axis not in mesh.shape:
    raise ValueError(f"axis must be one of the mesh axes {tuple(mesh.shape)}, got {axis!r}.")
  if min_size < 0:
    raise ValueError(f"min_size must be >= 0, got {min_size}.")
  n = mesh.shape[axis]

  def one(x):
    shape = tuple(x.shape)
    dims = [d for d in range(len(shape)) if shape[d] % n == 0 and shape[d] >= n]
    if not dims or math.prod(shape) < min_size:
      return NamedSharding(mesh, P())
    d = max(dims, key=lambda i: (shape[i], -i))
    return NamedSharding(mesh, P(*(axis if i == d else None for i in range(len(shape)))))

  return jax.tree.map(one, tree)
