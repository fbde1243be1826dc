# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors, as an Optax transformation.

Shares Shampoo's partitioner (:mod:`sops._src.blocking`), statistics (:mod:`sops._src.kronecker`)
and eigenbasis tracking (:mod:`sops._src.eigenbasis`); this module holds the state, the step and
the basis refresh with its rotation of the moments.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sops._src import blocking, eigenbasis, grafting, kronecker, utils
from sops._src import roots as _roots
from sops._src import storage as _storage
from sops._src.shampoo import (
  _DEFAULT_BLOCK_SIZE,
  _DEFAULT_MAX_PRECONDITIONER_DIM,
  _check_number,
  _partition,
  _static_int,
)

_REFRESH = ("qr", "qr_householder", "qr_cholesky", "eigh")


class SoapInfo(NamedTuple):
  """Diagnostics of :func:`scale_by_soap`, updated every step (log them freely)."""

  basis_refreshes: jax.Array  # shape=(), int32: steps that refreshed the eigenbases
  max_basis_drift: jax.Array  # shape=(), float32: at the last refresh, the largest relative
  #   off-diagonal mass ||Q^T L Q - diag||_F / ||L||_F of the basis being replaced, over the
  #   blocks: how far the statistics had moved from the basis in use (0: still exact)
  basis_failures: jax.Array  # shape=(), int32: block bases that came out non-finite (each kept
  #   its previous basis)
  nonfinite_skips: jax.Array  # shape=(), int32: steps skipped for non-finite gradients, or for
  #   statistics or moments that would have become non-finite (overflow)


class ScaleBySoapState(NamedTuple):
  """State of :func:`scale_by_soap`: arrays only, fixed shapes and dtypes."""

  soap_count: jax.Array  # shape=(), int32: applied (finite) steps
  soap_statistics: tuple[Any, ...]  # one (num_factors, size, size) stack per factor size,
  #   statistics_dtype: EMAs of G G^T (and G^T G, ...) of every block; stored packed and/or
  #   quantised with a `storage` option (as Shampoo's)
  soap_eigenbases: tuple[jax.Array, ...]  # (num_factors, size, size), statistics_dtype (or
  #   storage.preconditioners): eigenvectors (columns) of the statistics at the last refresh,
  #   the identity before the first
  soap_mu: Any  # tree like params, param dtype promoted to >= float32 (or storage.momentum):
  #   Adam's first moment, in the eigenbasis coordinates for preconditioned leaves
  soap_nu: Any  # same: Adam's second moment (in the eigenbasis coordinates where preconditioned)
  info: SoapInfo


def _rotate_moments(mu, nu, old, new, part, group):
  """Re-expresses the moments of every preconditioned leaf in the new eigenbases.

  With ``R = Q_new^T Q_old`` per factor the first moment maps exactly, ``m <- R m`` along every
  dimension; the second moment holds only the diagonal of a covariance, and maps by the squared
  rotation ``v <- (R * R) v`` (exact when the basis only permutes or flips columns).
  """
  rot = tuple(
    jnp.einsum("...ki,...kj->...ij", q, p, precision=lax.Precision.HIGHEST)
    for q, p in zip(new, old, strict=True)
  )
  sq = tuple(r * r for r in rot)
  return _turn(mu, part, rot, False, group), _turn(nu, part, sq, False, group)


def _turn(leaves, part, mats, transpose, group, blocks=None):
  """Every preconditioned leaf multiplied by ``mats`` along its dimensions
  (:func:`kronecker.precondition_leaves`), back in the leaf's shape and dtype; ``blocks`` are the
  leaves as blocks when the caller has them already."""
  if blocks is None:
    blocks = [
      blocking.to_blocks(x, lp) if lp.preconditioned else None
      for x, lp in zip(leaves, part.leaves, strict=True)
    ]
  turned = kronecker.precondition_leaves(blocks, part, mats, transpose, group)
  return [
    x if xb is None else blocking.from_blocks(xb, lp).astype(x.dtype)
    for x, xb, lp in zip(leaves, turned, part.leaves, strict=True)
  ]


def _new_basis(mats, old, basis, k_real, *, first, refresh, qr_method, sequential):
  """Eigenbases of one stack (cold ``eigh`` on the first refresh or with ``refresh="eigh"``, else
  one ordered QR step from the previous basis); a non-finite block keeps its old basis. Also
  returns how far the old basis had drifted from an eigenbasis, and the failed blocks."""
  del basis
  a, mask2 = eigenbasis.masked(mats, k_real)
  aq = jnp.matmul(a, old, precision=lax.Precision.HIGHEST)
  if refresh == "eigh":
    new = eigenbasis.eigh(a, sequential)[1]
  else:
    new = lax.cond(
      first,
      lambda: eigenbasis.eigh(a, sequential)[1],
      lambda: eigenbasis.ordered_qr(aq, old, k_real, qr_method, sequential),
    )
  ok = jnp.all(jnp.isfinite(new), axis=(-1, -2))
  off = eigenbasis.drift(a, old, aq, mask2)
  return jnp.where(ok[:, None, None], new, old), jnp.where(ok, off, 0.0), ~ok


def scale_by_soap(
  *,
  b1: jax.typing.ArrayLike = 0.95,
  b2: jax.typing.ArrayLike = 0.95,
  shampoo_beta2: jax.typing.ArrayLike | None = None,
  eps: jax.typing.ArrayLike = 1e-8,
  nesterov: bool = False,
  precondition_every: jax.typing.ArrayLike = 10,
  statistics_every: jax.typing.ArrayLike = 1,
  refresh: str = "qr",
  block_size: int | None = None,
  max_preconditioner_dim: int | None = None,
  merge_small_dims: bool = True,
  statistics_dtype: Any = "float32",
  axis_name: str | None = None,
  num_shards: int | None = None,
  storage: Any = None,
) -> optax.GradientTransformation:
  r"""Scales updates by Adam run in the eigenbasis of Shampoo's Kronecker factors (SOAP).

  For every block :math:`G` of a matrix parameter SOAP keeps Shampoo's statistics
  :math:`L \leftarrow \beta L + (1-\beta) G G^\top`, :math:`R \leftarrow \beta R + (1-\beta)
  G^\top G` (``shampoo_beta2``) and their eigenbases :math:`Q_L, Q_R`. It rotates the gradient,
  :math:`G' = Q_L^\top G Q_R`, runs Adam on :math:`G'` (moments :math:`m, v` kept in the rotated
  coordinates, bias-corrected as in ``optax.adam``) and rotates the Adam direction back,
  :math:`Q_L\, \hat m / (\sqrt{\hat v} + \epsilon)\, Q_R^\top`. Tensors with more dimensions get
  one basis per preconditioned dimension; leaves of rank 0 or 1, and dimensions above
  ``max_preconditioner_dim``, keep the identity there (plain Adam on a rank-1 leaf).

  The bases start as the identity (so step 1 is an Adam step) and are refreshed after step 1 and
  every ``precondition_every`` steps after it: the first time by a full ``eigh``, then by one
  step of subspace iteration from the previous basis, :math:`Q \leftarrow \mathrm{qr}(L Q)`
  (``refresh="qr"``, as in the paper) or by a full ``eigh`` (``refresh="eigh"``). At a refresh
  the moments are carried into the new basis with :math:`P = Q_{new}^\top Q_{old}`: :math:`m
  \leftarrow P m P'^\top` exactly and :math:`v \leftarrow (P \circ P) v (P' \circ P')^\top` for
  the diagonal second moment. Partitioning into blocks is Shampoo's
  (:func:`scale_by_shampoo`). Non-finite gradients skip the step (zero update, state unchanged
  except ``info.nonfinite_skips``), as do steps whose statistics or moments would overflow.

  Args:
    b1: Adam's first-moment decay, in ``[0, 1)`` (paper default 0.95).
    b2: Adam's second-moment decay, in ``[0, 1)`` (paper default 0.95).
    shampoo_beta2: decay of the Kronecker statistics, in ``(0, 1]`` (1 sums them); ``None``
      uses ``b2``, as the paper does.
    eps: added to the root of Adam's second moment.
    nesterov: Nesterov momentum in the rotated coordinates, as ``optax.adam(nesterov=True)``
      (NAdam, Dozat 2016): the numerator is :math:`\beta_1 \hat m_{t+1} + (1 - \beta_1) \hat
      G'_t` with each term bias-corrected, instead of :math:`\hat m_t`.
    precondition_every: steps between two refreshes of the eigenbases (paper default 10).
    statistics_every: steps between two statistics updates (``1``: every step).
    refresh: ``"qr"`` (one subspace-iteration step per refresh after the first ``eigh``) or
      ``"eigh"`` (a full eigendecomposition every refresh). ``"qr"`` takes LAPACK's Householder
      QR on CPU (``"qr_householder"``) and a shifted CholeskyQR3 elsewhere (``"qr_cholesky"``:
      matrix products, batched well on GPUs, where a batched Householder QR of many small blocks
      runs block by block; blocks where it breaks down take the Householder QR).
    block_size: largest factor size (``None``: 256); larger dimensions are split into blocks.
      Static.
    max_preconditioner_dim: dimensions above it keep the identity (``None``: 4096). Static.
      Between a block's short and long side, it rotates the block along its short side only
      (one-sided SOAP), which saves most of a wide block's rotation and refresh cost: ``128``
      with the default 256-blocks is the transformer recipe of ``docs/soap.md``.
    merge_small_dims: merge adjacent small dimensions. Static.
    statistics_dtype: floating dtype of the statistics and eigenbases (default ``"float32"``).
    axis_name: ``pmap`` axis name. When set, each device refreshes the bases of its share of
      every stack and the results are all-gathered; gradients must already be averaged.
    num_shards: pad every stack to a multiple of this, for :func:`sops.shampoo_state_sharding`.
      Static; ``None`` pads nothing.
    storage: how the state is kept between steps (:class:`sops.StateStorage`): statistics packed
      and/or quantised, eigenbases in ``preconditioners`` (a float dtype), Adam's first moment in
      ``momentum``; ``"compact"``: packed int16 statistics, bfloat16 eigenbases.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`ScaleBySoapState`.

  Raises:
    ValueError: at construction, naming an invalid hyperparameter; at update, naming the first
      path where the gradient tree differs from the parameters given to ``init``.

  Examples:
    >>> import jax.numpy as jnp, sops
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> tx = sops.scale_by_soap()
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.ones(3)}
    >>> updates, state = tx.update(grads, state)
    >>> updates["w"].shape, int(state.info.basis_refreshes)
    ((4, 3), 1)

  References:
    Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade, "SOAP: Improving and
    Stabilizing Shampoo using Adam", arXiv:2409.11321.
  """
  block_size = _static_int("block_size", block_size, _DEFAULT_BLOCK_SIZE, 1)
  max_dim = _static_int(
    "max_preconditioner_dim", max_preconditioner_dim, _DEFAULT_MAX_PRECONDITIONER_DIM, 1
  )
  num_shards = _static_int("num_shards", num_shards, 1, 1)
  _check_number("b1", b1, low=0.0, high=1.0, high_inclusive=False)
  _check_number("b2", b2, low=0.0, high=1.0, high_inclusive=False)
  if shampoo_beta2 is None:
    shampoo_beta2 = b2
  else:
    _check_number("shampoo_beta2", shampoo_beta2, low=0.0, high=1.0, low_inclusive=False)
  _check_number("eps", eps, low=0.0)
  _check_number("precondition_every", precondition_every, low=1, integer=True)
  _check_number("statistics_every", statistics_every, low=1, integer=True)
  utils.check_choice("refresh", refresh, _REFRESH)
  utils.check_choice("nesterov", nesterov, (True, False))
  utils.check_choice("merge_small_dims", merge_small_dims, (True, False))
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(f"axis_name must be None or a str, got {axis_name!r}.")
  sdt = _storage.compute_dtype(statistics_dtype)
  store = _storage.as_storage(storage, soap=True)
  stacks = ("soap_statistics", "soap_eigenbases")
  if refresh == "qr":  # measured: docs/soap.md
    refresh = "qr_householder" if jax.default_backend() == "cpu" else "qr_cholesky"
  qr_method = refresh.removeprefix("qr_")
  group = jax.default_backend() != "cpu"  # one product per leaf group: fewer kernel launches
  sequential = eigenbasis.batched_lapack_may_deadlock()  # several CPU devices: one block at a time

  def plan(leaves) -> blocking.Partition:
    # One exponent for every factor: stacks are grouped by factor size only.
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    return _partition(shapes, block_size, max_dim, merge_small_dims, 1, num_shards)

  def init_fn(params):
    params = utils.float_leaves(params)  # int/bool leaves are passed through by update_fn
    part = plan(jax.tree.leaves(params))
    stats = tuple(
      jnp.zeros((len(real), s, s), sdt)
      for (s, _), real in zip(part.stack_keys, part.real_sizes, strict=True)
    )

    def zeros_like_params(dtype=None):
      return jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), dtype or grafting.accumulator_dtype(p)), params
      )

    def zero_i():
      return jnp.zeros([], jnp.int32)

    return ScaleBySoapState(
      soap_count=zero_i(),
      soap_statistics=tuple(_storage.encode(x, store.statistics, store.symmetric) for x in stats),
      soap_eigenbases=tuple(
        jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=store.preconditioners or sdt), x.shape)
        for x in stats
      ),
      soap_mu=zeros_like_params(store.momentum),
      soap_nu=zeros_like_params(),
      info=SoapInfo(zero_i(), jnp.zeros([], jnp.float32), zero_i(), zero_i()),
    )

  def rotate(leaves, bases, part, back, blocks=None):
    """Each preconditioned leaf into the eigenbasis coordinates (or ``back`` out of them)."""
    if blocks is None:
      blocks = kronecker.to_block_list(leaves, part, sdt)
    return _turn(leaves, part, bases, not back, group, blocks)

  def refresh_bases(stats, bases, mu, nu, count, info, part):
    """New eigenbases of every stack and the moments carried into them."""
    fn = functools.partial(
      _new_basis, first=count == 1, refresh=refresh, qr_method=qr_method, sequential=sequential
    )
    new, offs, fails = [], [jnp.zeros([], jnp.float32)], []
    for i, q in enumerate(bases):
      # LAPACK-based stacks run in turn (see roots.after).
      mats = _roots.after(stats[i], new[i - 1] if i else None)
      k_real = jnp.asarray(np.asarray(part.real_sizes[i]), jnp.int32)
      with jax.named_scope("soap_basis"):
        qn, off, bad = _roots.split_over_devices(fn, mats, q, q, k_real, axis_name)
      new.append(qn)
      offs.append(jnp.max(off).astype(jnp.float32))
      fails.append(jnp.sum(bad, dtype=jnp.int32))
    mu, nu = _rotate_moments(mu, nu, bases, new, part, group)
    info = info._replace(
      basis_refreshes=utils.safe_increment(info.basis_refreshes),
      max_basis_drift=jnp.max(jnp.stack(offs)),
      basis_failures=info.basis_failures + sum(fails),
    )
    return tuple(new), mu, nu, info

  def step(leaves, ok, stored, part):
    """The update; where ``ok`` is False (a skipped step) the state stays ``stored``."""
    state = _storage.decode_state(stored, sdt, stacks)
    count = utils.safe_increment(state.soap_count)
    mu, mu_def = jax.tree.flatten(state.soap_mu)
    nu, nu_def = jax.tree.flatten(state.soap_nu)
    bases = state.soap_eigenbases
    blocks = kronecker.to_block_list(leaves, part, sdt)
    g = [x.astype(grafting.accumulator_dtype(x)) for x in leaves]
    g = rotate(g, bases, part, False, blocks)
    # Adam in the rotated coordinates, from Shampoo's helpers: the bias-corrected first moment
    # (NAdam's numerator with nesterov) over the root of the bias-corrected second moment.
    num, mu = grafting.momentum(mu, g, count, b1, nesterov, ok)
    dirs, nu = grafting.graft_direction("adam", g, nu, count, b2, eps, ok, numerators=num)
    out = rotate(dirs, bases, part, True)
    stats = kronecker.scheduled_statistics(
      state.soap_statistics, blocks, part, shampoo_beta2, count, statistics_every, ok
    )
    due = ((count - 1) % jnp.asarray(precondition_every, jnp.int32) == 0) & ok
    if bases:
      bases, mu, nu, info = lax.cond(
        due,
        lambda: refresh_bases(stats, bases, mu, nu, count, state.info, part),
        lambda: (bases, mu, nu, state.info),
      )
    else:
      info = state.info
    new_state = ScaleBySoapState(
      soap_count=jnp.where(ok, count, state.soap_count),
      soap_statistics=stats,
      soap_eigenbases=bases,
      soap_mu=jax.tree.unflatten(mu_def, mu),
      soap_nu=jax.tree.unflatten(nu_def, nu),
      info=info,
    )
    new_state = _storage.encode_state(new_state, stored, stacks, ok)
    return [o.astype(x.dtype) for o, x in zip(out, leaves, strict=True)], new_state

  def update_fn(updates, state, params=None):
    del params

    def run(leaves, ok):
      return step(leaves, ok, state, plan(leaves))

    return utils.guarded_update(updates, state, state.soap_mu, run, axis_name, sdt)

  return optax.GradientTransformation(init_fn, update_fn)


def soap(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: jax.typing.ArrayLike = 0.95,
  b2: jax.typing.ArrayLike = 0.95,
  shampoo_beta2: jax.typing.ArrayLike | None = None,
  eps: jax.typing.ArrayLike = 1e-8,
  nesterov: bool = False,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
  precondition_every: jax.typing.ArrayLike = 10,
  statistics_every: jax.typing.ArrayLike = 1,
  refresh: str = "qr",
  block_size: int | None = None,
  max_preconditioner_dim: int | None = None,
  merge_small_dims: bool = True,
  statistics_dtype: Any = "float32",
  axis_name: str | None = None,
  num_shards: int | None = None,
  storage: Any = None,
) -> optax.GradientTransformation:
  r"""SOAP with decoupled weight decay and a learning rate (float or schedule).

  The update is :math:`-\eta_t (s_t + \lambda\, w_t)` where :math:`s_t` is the output of
  :func:`scale_by_soap` and :math:`\lambda` is ``weight_decay`` (decoupled, as in AdamW;
  ``weight_decay_mask`` selects the leaves it applies to). SOAP's step has Adam's scale, so a
  learning rate that suits AdamW (``1e-3`` .. ``1e-2``) suits SOAP.

  Args:
    learning_rate: a float or an optax schedule.
    b1: Adam's first-moment decay (see :func:`scale_by_soap` for this and every argument below).
    b2: Adam's second-moment decay.
    shampoo_beta2: decay of the Kronecker statistics (``None``: ``b2``).
    eps: Adam's epsilon.
    nesterov: Nesterov momentum (NAdam in the eigenbasis).
    weight_decay: decoupled weight decay :math:`\lambda \ge 0`.
    weight_decay_mask: optional tree of bools (or callable) for ``optax.add_decayed_weights``.
    precondition_every: steps between eigenbasis refreshes.
    statistics_every: steps between statistics updates.
    refresh: ``"qr"`` or ``"eigh"``.
    block_size: largest factor size.
    max_preconditioner_dim: largest preconditioned dimension.
    merge_small_dims: merge small dimensions.
    statistics_dtype: dtype of statistics and eigenbases.
    axis_name: ``pmap`` axis over which basis refreshes are split.
    num_shards: pad the stacks to a multiple of this (see :func:`sops.shampoo_state_sharding`).
    storage: memory options of the state (:class:`sops.StateStorage` or ``"compact"``).

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, sops
    >>> params = jnp.ones((8, 4))
    >>> loss = lambda w: jnp.sum((w - 2.0) ** 2)
    >>> tx = sops.soap(learning_rate=0.1)
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(50):
    ...   updates, state = update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 1.0)
    True

  References:
    Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson, Kakade, "SOAP: Improving and
    Stabilizing Shampoo using Adam", arXiv:2409.11321.
  """
  _check_number("learning_rate", learning_rate, low=0.0)  # 0 is accepted, as in optax
  _check_number("weight_decay", weight_decay, low=0.0)
  parts = [
    scale_by_soap(
      b1=b1,
      b2=b2,
      shampoo_beta2=shampoo_beta2,
      eps=eps,
      nesterov=nesterov,
      precondition_every=precondition_every,
      statistics_every=statistics_every,
      refresh=refresh,
      block_size=block_size,
      max_preconditioner_dim=max_preconditioner_dim,
      merge_small_dims=merge_small_dims,
      statistics_dtype=statistics_dtype,
      axis_name=axis_name,
      num_shards=num_shards,
      storage=storage,
    )
  ]
  if not (isinstance(weight_decay, numbers.Real) and weight_decay == 0.0):
    parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return utils.pass_through_non_float(optax.chain(*parts))
