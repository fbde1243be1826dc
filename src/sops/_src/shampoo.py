# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Blocked Shampoo with layer-wise grafting, as an Optax gradient transformation.

The partitioner lives in :mod:`sops._src.blocking`, the graft optimizers in
:mod:`sops._src.grafting` and the inverse roots in :mod:`sops._src.linalg`; this module holds the
state, the step and the hyperparameter checks.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sops._src import blocking, grafting, kronecker, utils
from sops._src import roots as _roots
from sops._src import storage as _storage

_DEFAULT_BLOCK_SIZE = 256
_DEFAULT_MAX_PRECONDITIONER_DIM = 4096


class ShampooInfo(NamedTuple):
  """Diagnostics of :func:`scale_by_shampoo`, updated every step (log them freely)."""

  max_root_error: jax.Array  # shape=(), float32: largest error of the roots accepted at the last
  #   root computation (0 before the first): the relative residual of
  #   sops.linalg.inverse_pth_root, or the off-diagonal mass of a tracked eigenbasis
  root_failures: jax.Array  # shape=(), int32: failed block roots since init (each kept its
  #   previous preconditioner)
  root_computations: jax.Array  # shape=(), int32: steps that computed roots (all or a chunk)
  steps_since_root: jax.Array  # shape=(), int32: steps since the last root computation
  nonfinite_skips: jax.Array  # shape=(), int32: steps skipped for non-finite gradients, or for
  #   statistics or graft moments that would have become non-finite (overflow)


class ScaleByShampooState(NamedTuple):
  """State of :func:`scale_by_shampoo`: arrays only, fixed shapes and dtypes."""

  shampoo_count: jax.Array  # shape=(), int32: applied (finite) steps
  statistics: tuple[Any, ...]  # one (num_factors, size, size) stack per (size, p) group,
  #   statistics_dtype: EMAs of G G^T (and G^T G, ...) of every block; with a `storage` option
  #   (num_factors, size (size + 1) / 2) upper triangles and/or a storage.Quantized per stack
  preconditioners: tuple[Any, ...]  # same layout: the inverse p-th roots
  eigenbases: tuple[jax.Array, ...]  # (num_factors, size, size), statistics_dtype: the tracked
  #   eigenbases (warm-started eigh roots), or () for other root methods
  pending_statistics: tuple[tuple[jax.Array, ...], ...]  # root_staleness > 0 only, else ():
  #   ceil(root_staleness / precondition_every) slots, each a snapshot shaped like statistics;
  #   staggered: root_staleness slots, each one chunk of every stack
  root_steps: tuple[jax.Array, ...]  # one (num_factors,) int32 per stack: step of each factor's
  #   last accepted root, 0 = none yet (its blocks use the graft direction)
  graft_nu: Any  # tree like params, param dtype promoted to >= float32: the graft's second
  #   moments (Adam/RMSProp/AdaGrad), or () for "sgd"/"none"
  shampoo_momentum: Any  # tree like params, same dtypes (or storage.momentum): EMA of the
  #   grafted direction, or of the gradients with precondition_momentum=True
  info: ShampooInfo


@functools.lru_cache(maxsize=256)
def _partition(shapes, block_size, max_dim, merge, override, num_shards) -> blocking.Partition:
  return blocking.partition_tree(
    shapes,
    block_size=block_size,
    max_preconditioner_dim=max_dim,
    merge_small_dims=merge,
    exponent_override=override,
    stack_multiple=num_shards,
  )


def _static_int(name: str, value: Any, default: int | None, low: int) -> int | None:
  """A structural integer: a Python int known at construction (it fixes the state's shapes)."""
  if value is None:
    return default
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
      f"{name} fixes the optimizer state's shapes, so it must be a static Python int; with "
      f"optax.inject_hyperparams pass static_args=({name!r},)."
    )
  if isinstance(value, (jax.Array, np.ndarray)) and value.shape == ():
    value = value.item()
  utils.check_scalar(name, value, low=low, integer=True)
  return int(value)


def _check_number(name: str, value: Any, *, integer: bool = False, **kw) -> None:
  # Concrete arrays (``jnp.array(0.9)``) are checked too; traced ones are not (see check_scalar).
  utils.check_scalar(name, value, integer=integer, **kw)


def _root_kernel(cfg, sdt, ridge, threshold):
  precision = "float64" if sdt == jnp.float64 else "float32"
  return functools.partial(
    _roots.compute_roots, cfg=cfg, ridge=ridge, threshold=threshold, precision=precision
  )


def scale_by_shampoo(
  *,
  block_size: int | None = None,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  graft: str = "adam",
  eps: jax.typing.ArrayLike = 1e-8,
  matrix_epsilon: jax.typing.ArrayLike = 1e-6,
  precondition_every: jax.typing.ArrayLike = 50,
  statistics_every: jax.typing.ArrayLike = 1,
  stagger_roots: bool = False,
  start_preconditioning_step: jax.typing.ArrayLike = 10,
  exponent_override: int | None = None,
  inverse_root: str | _roots.RootConfig = "auto",
  inverse_failure_threshold: jax.typing.ArrayLike = 1.0,
  nesterov: bool = False,
  precondition_momentum: bool = False,
  max_preconditioner_dim: int | None = None,
  merge_small_dims: bool = True,
  statistics_dtype: Any = "float32",
  axis_name: str | None = None,
  num_shards: int | None = None,
  root_staleness: int | None = None,
  external_roots: bool = False,
  storage: Any = None,
) -> optax.GradientTransformation:
  r"""Scales updates by blocked Shampoo preconditioning with layer-wise grafting.

  For every block :math:`G` of a matrix parameter Shampoo keeps the statistics
  :math:`L \leftarrow b_2 L + (1-b_2) G G^\top` and :math:`R \leftarrow b_2 R + (1-b_2) G^\top G`
  (running sums when :math:`b_2 = 1`) and its direction is :math:`L^{-1/4} G R^{-1/4}`; a tensor
  with :math:`k` preconditioned dimensions gets one factor per dimension, raised to
  :math:`-1/(2k)` (or :math:`-1/p` with ``p = exponent_override``). The roots, with a ridge
  ``matrix_epsilon`` relative to each factor's largest eigenvalue, are recomputed every
  ``precondition_every`` steps from ``start_preconditioning_step`` on, batched per (block size,
  exponent) group, all on one step or staggered (a chunk of every group on each step, see
  ``stagger_roots``); ``inverse_root`` picks the method (:class:`sops.RootConfig`). Each block's
  direction is rescaled to the norm of the graft optimizer's direction on that block
  (``graft``); before ``start_preconditioning_step`` the graft direction is used alone. Finally
  momentum: :math:`m \leftarrow b_1 m + (1-b_1) d`, output :math:`m / (1 - b_1^t)` (Nesterov
  optional). With ``precondition_momentum=True`` the order is Adam's instead: the momentum
  :math:`m \leftarrow b_1 m + (1-b_1) G` of the gradients is taken first and its bias-corrected
  value is what gets preconditioned and grafted (the graft's direction is then Adam's
  :math:`\hat m / (\sqrt{\hat v} + \epsilon)`); the statistics are still those of the gradients.

  Partitioning (static, from the parameter shapes): size-1 dimensions are dropped; leaves of rank
  0 or 1 use the graft direction only; adjacent dimensions are merged while their product stays
  ``<= block_size``; dimensions above ``max_preconditioner_dim`` get no factor (the other
  dimensions are still preconditioned, so memory stays linear in the large dimension; a leaf with
  no dimension left uses the graft only); dimensions above ``block_size`` are split into blocks,
  the last one zero-padded. A block whose root fails keeps its previous preconditioner and is
  counted in ``info.root_failures``. Non-finite gradients skip the step: zero update, state
  unchanged except ``info.nonfinite_skips``.

  Args:
    block_size: largest factor size (``None``: 256). Larger dimensions are split into blocks.
      Static (it fixes the state's shapes).
    b1: momentum decay of the grafted direction, in ``[0, 1)``.
    b2: decay of the statistics and of the graft's second moment, in ``(0, 1]``; 1 sums them.
    graft: ``"adam"``, ``"rmsprop"``, ``"adagrad"``, ``"sgd"`` or ``"none"`` (no rescaling).
    eps: added to the root of the graft's second moment.
    matrix_epsilon: ridge added to each factor before its root, relative to its largest
      eigenvalue.
    precondition_every: steps between two refreshes of a block's root (default 50: on the
      transformer benchmark 50 needed as few steps to AdamW's loss as 10, at a fraction of the
      root cost; see ``docs/shampoo.md``).
    statistics_every: steps between two statistics updates (``1``: every step; optax-shampoo's
      ``statistics_compute_steps``). The first step always updates them.
    stagger_roots: refresh about ``1/precondition_every`` of every stack's roots on each step,
      round-robin, instead of all roots on one step every ``precondition_every`` steps (then
      ``precondition_every`` must be a static int). It bounds the slowest step (synchronous
      data-parallel training runs at its pace) but costs more in total on CPU, where small
      batched ``eigh`` calls are less efficient (measured in ``docs/shampoo.md``). A block uses
      Shampoo's direction once all its factors have a root, the graft direction before.
    start_preconditioning_step: first step (counting from 1) that uses Shampoo's direction; root
      computations start there.
    exponent_override: ``p`` of the roots :math:`X^{-1/p}` for every factor; ``None`` gives
      :math:`2k`.
    inverse_root: ``"auto"``, ``"eigh"``, ``"coupled_newton"`` or a :class:`sops.RootConfig`
      (method, eigenbasis warm start, tolerances). ``"auto"`` is ``"eigh"`` on CPU and
      ``"coupled_newton"`` on accelerators.
    inverse_failure_threshold: a block's root fails (keeps its previous preconditioner) when its
      reported error exceeds this (``> 0``). For ``"eigh"`` and ``"coupled_newton"`` that is
      ``info.error`` of :func:`sops.linalg.inverse_pth_root`, an upper bound on the root's
      relative error (1x-4.5x the true error at condition 1e6); for a warm-started eigenbasis it
      is the basis' relative off-diagonal mass (at most ``RootConfig.warm_start_tol``, else a
      cold ``eigh`` is used). The default ``1.0`` rejects only roots that may be off by their
      own size, not the float32 rounding floor of rank-deficient statistics (a few percent).
    nesterov: Nesterov momentum.
    precondition_momentum: precondition the momentum of the gradients rather than take the
      momentum of the preconditioned direction (Adam's order, as in Distributed Shampoo's
      filtered gradient and SOAP). On the transformer benchmark it lowered the final loss
      (``docs/shampoo.md``); off by default, the seed paper's order.
    max_preconditioner_dim: dimensions above it get no factor (``None``: 4096). Static.
    merge_small_dims: merge adjacent small dimensions. Static.
    statistics_dtype: floating dtype of the statistics and roots (default ``"float32"``).
    axis_name: ``pmap`` axis name. When set, each device computes the roots of its share of
      every stack and the results are all-gathered; gradients must already be averaged.
    num_shards: pad every stack of statistics and preconditioners to a multiple of this, the
      size of the mesh axis that :func:`sops.shampoo_state_sharding` splits the stacks over
      under ``jit`` with shardings (padding entries are empty blocks whose roots are the
      identity and never fail). Static; ``None`` (default) or ``1`` pads nothing.
    root_staleness: ``s >= 0``, static (``None``: 0). With ``s > 0`` the roots are delayed:
      the statistics of each root step ``t`` are kept as a snapshot and their roots are computed
      and first used at step ``t + s`` (the seed paper's pipeline, run synchronously inside the
      step; the reference semantics of :func:`sops.async_shampoo`). Needs a static
      ``precondition_every``; the state holds ``ceil(s / precondition_every)`` snapshots (with
      ``stagger_roots``: ``s`` snapshots of one chunk each, and each step's chunk is delayed).
      ``0``: roots of the current statistics.
    external_roots: never compute roots in the step: the preconditioners change only when a
      :class:`sops.AsyncRoots` pipeline (from :func:`sops.async_shampoo`) installs them between
      steps. Under ``pmap`` (``axis_name``) the pipeline installs the same roots on every
      replica.
    storage: how the state is kept between steps: ``None`` (full float matrices), a
      :class:`sops.StateStorage` (packed upper triangles, low-precision or quantised statistics,
      roots and momentum) or ``"compact"`` (the recommended memory options; ``docs/shampoo.md``
      has their memory and step costs).

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`ScaleByShampooState`.

  Raises:
    ValueError: at construction, naming an invalid hyperparameter; at update, naming the first
      path where the gradient tree differs from the parameters given to ``init``.

  Examples:
    >>> import jax.numpy as jnp, optax, sops
    >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    >>> tx = sops.scale_by_shampoo(start_preconditioning_step=1, precondition_every=1)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.ones(3)}
    >>> updates, state = tx.update(grads, state)
    >>> updates["w"].shape, int(state.info.root_computations)
    ((4, 3), 1)

  References:
    Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
    arXiv:1802.09568. Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for
    Deep Learning", arXiv:2002.09018.
  """
  block_size = _static_int("block_size", block_size, _DEFAULT_BLOCK_SIZE, 1)
  max_dim = _static_int(
    "max_preconditioner_dim", max_preconditioner_dim, _DEFAULT_MAX_PRECONDITIONER_DIM, 1
  )
  override = _static_int("exponent_override", exponent_override, None, 1)
  num_shards = _static_int("num_shards", num_shards, 1, 1)
  _check_number("b1", b1, low=0.0, high=1.0, high_inclusive=False)
  _check_number("b2", b2, low=0.0, high=1.0, low_inclusive=False)
  _check_number("eps", eps, low=0.0)
  _check_number("matrix_epsilon", matrix_epsilon, low=0.0)
  _check_number(
    "inverse_failure_threshold",
    inverse_failure_threshold,
    low=0.0,
    low_inclusive=False,
    allow_inf=True,
  )
  _check_number("precondition_every", precondition_every, low=1, integer=True)
  _check_number("statistics_every", statistics_every, low=1, integer=True)
  _check_number("start_preconditioning_step", start_preconditioning_step, low=1, integer=True)
  utils.check_choice("graft", graft, grafting.GRAFTS)
  utils.check_choice("nesterov", nesterov, (True, False))
  utils.check_choice("precondition_momentum", precondition_momentum, (True, False))
  utils.check_choice("merge_small_dims", merge_small_dims, (True, False))
  utils.check_choice("stagger_roots", stagger_roots, (True, False))
  if stagger_roots:  # the chunk size depends on precondition_every
    precondition_every = _static_int("precondition_every", precondition_every, None, 1)
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(f"axis_name must be None or a str, got {axis_name!r}.")
  staleness = _static_int("root_staleness", root_staleness, 0, 0)
  staleness, slots = _roots.check_pipeline(
    staleness, external_roots, precondition_every, stagger_roots
  )
  if slots:
    precondition_every = int(precondition_every)
  cfg = _roots.as_root_config(inverse_root)
  sdt = _storage.compute_dtype(statistics_dtype)
  store = _storage.as_storage(storage)
  compute = _root_kernel(cfg, sdt, matrix_epsilon, inverse_failure_threshold)

  def plan(leaves) -> blocking.Partition:
    shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
    return _partition(shapes, block_size, max_dim, merge_small_dims, override, num_shards)

  def schedules(part):
    every = precondition_every if stagger_roots else 1
    return [
      _roots.stack_schedule(len(r), num_shards, every, stagger_roots) for r in part.real_sizes
    ]

  timing = _roots.Timing(
    start_preconditioning_step,
    precondition_every,
    stagger_roots,
    staleness,
    slots,
    schedules,
    compute,
    cfg.method == "eigh",
    axis_name,
  )

  def init_fn(params):
    params = utils.float_leaves(params)  # int/bool leaves are passed through by update_fn
    part = plan(jax.tree.leaves(params))
    full = tuple(
      jnp.zeros((len(real), s, s), sdt)
      for (s, _), real in zip(part.stack_keys, part.real_sizes, strict=True)
    )
    stats = tuple(_storage.encode(x, store.statistics, store.symmetric) for x in full)

    def eyes(dtype=None, symmetric=False):
      eye = [jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=sdt), x.shape) for x in full]
      return tuple(_storage.encode(x, dtype, symmetric) for x in eye)

    # Every leaf is a buffer of its own, so that the state can be donated to a jitted step.
    def zero_i():
      return jnp.zeros([], jnp.int32)

    return ScaleByShampooState(
      shampoo_count=zero_i(),
      statistics=stats,
      preconditioners=eyes(store.preconditioners, store.symmetric),
      eigenbases=eyes() if cfg.tracks_basis else (),
      pending_statistics=tuple(
        jax.tree.map(
          jnp.zeros_like, _roots.take_chunks(stats, schedules(part), 0) if stagger_roots else stats
        )
        for _ in range(slots)
      ),
      root_steps=tuple(jnp.zeros(x.shape[:1], jnp.int32) for x in full),
      graft_nu=grafting.init_graft(graft, params),
      shampoo_momentum=jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p), store.momentum or grafting.accumulator_dtype(p)), params
      ),
      info=ShampooInfo(jnp.zeros([], jnp.float32), zero_i(), zero_i(), zero_i(), zero_i()),
    )

  def directions(blocks, graft_dir, roots, root_steps, count, part):
    """Shampoo's direction where a block has all its roots, rescaled to the graft's norm."""
    use_shampoo = count >= jnp.asarray(start_preconditioning_step, jnp.int32)
    ready = tuple(s > 0 for s in root_steps)
    out = []
    for xb, gd, lp in zip(blocks, graft_dir, part.leaves, strict=True):
      if not lp.preconditioned:
        out.append(gd)
        continue
      yb = kronecker.precondition(xb, lp, roots).astype(gd.dtype)
      gb = blocking.to_blocks(gd, lp)
      if graft != "none":
        yb = grafting.rescale_to_graft(yb, gb)
      ok = use_shampoo & kronecker.blocks_ready(lp, ready)
      yb = jnp.where(ok.reshape((-1,) + (1,) * (yb.ndim - 1)), yb, gb)
      out.append(blocking.from_blocks(yb, lp))
    return out

  def step(leaves, ok, stored, part):
    """The update; where ``ok`` is False (a skipped step) the state stays ``stored``."""
    state = _storage.decode_state(stored, sdt)
    count = utils.safe_increment(state.shampoo_count)
    mom_leaves, mom_def = jax.tree.flatten(state.shampoo_momentum)
    g = [x.astype(grafting.accumulator_dtype(x)) for x in leaves]
    nu_leaves, nu_def = jax.tree.flatten(state.graft_nu)
    if precondition_momentum:  # Adam's order: the momentum is what gets preconditioned
      first, mom = grafting.momentum(mom_leaves, g, count, b1, nesterov, ok)
    else:
      first = None
    graft_dir, nu_leaves = grafting.graft_direction(
      graft, g, nu_leaves, count, b2, eps, ok, numerators=first
    )
    blocks = kronecker.to_block_list(leaves, part, sdt)
    stats = kronecker.scheduled_statistics(
      state.statistics, blocks, part, b2, count, statistics_every, ok
    )
    if external_roots:
      roots, bases, root_steps = state.preconditioners, state.eigenbases, state.root_steps
      info = _roots.idle_info(state.info)
      pending = state.pending_statistics
    else:
      roots, bases, root_steps, info, pending = _roots.scheduled_roots(
        timing, state, stats, count, part, ok
      )
    # New roots are used at the precision they are stored in (as when installed from outside);
    # they are encoded only on the steps that computed them.
    roots, stored_roots = _storage.updated_stacks(
      roots, stored.preconditioners, info.steps_since_root == 0, sdt
    )
    if precondition_momentum:
      out = directions(
        kronecker.to_block_list(first, part, sdt), graft_dir, roots, root_steps, count, part
      )
    else:
      dirs = directions(blocks, graft_dir, roots, root_steps, count, part)
      out, mom = grafting.momentum(mom_leaves, dirs, count, b1, nesterov, ok)
    new_state = ScaleByShampooState(
      shampoo_count=jnp.where(ok, count, state.shampoo_count),
      statistics=stats,
      preconditioners=stored_roots,
      eigenbases=bases,
      pending_statistics=pending,
      root_steps=root_steps,
      graft_nu=jax.tree.unflatten(nu_def, nu_leaves),
      shampoo_momentum=jax.tree.unflatten(mom_def, mom),
      info=utils.keep_unless(ok, info, state.info),
    )
    new_state = _storage.encode_state(new_state, stored, ("statistics", "pending_statistics"), ok)
    return [o.astype(x.dtype) for o, x in zip(out, leaves, strict=True)], new_state

  def update_fn(updates, state, params=None):
    del params

    def run(leaves, ok):
      return step(leaves, ok, state, plan(leaves))

    return utils.guarded_update(updates, state, state.shampoo_momentum, run, axis_name, sdt)

  return optax.GradientTransformation(init_fn, update_fn)


def shampoo(
  learning_rate: optax.ScalarOrSchedule,
  *,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
  block_size: int | None = None,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  graft: str = "adam",
  eps: jax.typing.ArrayLike = 1e-8,
  matrix_epsilon: jax.typing.ArrayLike = 1e-6,
  precondition_every: jax.typing.ArrayLike = 50,
  statistics_every: jax.typing.ArrayLike = 1,
  stagger_roots: bool = False,
  start_preconditioning_step: jax.typing.ArrayLike = 10,
  exponent_override: int | None = None,
  inverse_root: str | _roots.RootConfig = "auto",
  inverse_failure_threshold: jax.typing.ArrayLike = 1.0,
  nesterov: bool = False,
  precondition_momentum: bool = False,
  max_preconditioner_dim: int | None = None,
  merge_small_dims: bool = True,
  statistics_dtype: Any = "float32",
  axis_name: str | None = None,
  num_shards: int | None = None,
  root_staleness: int | None = None,
  external_roots: bool = False,
  storage: Any = None,
) -> optax.GradientTransformation:
  r"""Shampoo with decoupled weight decay and a learning rate (float or schedule).

  The update is :math:`-\eta_t (s_t + \lambda\, w_t)` where :math:`s_t` is the output of
  :func:`scale_by_shampoo` (grafted, with momentum) and :math:`\lambda` is ``weight_decay``
  (decoupled, as in AdamW; ``weight_decay_mask`` selects the leaves it applies to). The defaults
  graft Adam's per-block step size onto Shampoo's direction, so a learning rate that suits Adam
  (``1e-3`` .. ``1e-2``) suits Shampoo.

  Args:
    learning_rate: a float or an optax schedule.
    weight_decay: decoupled weight decay :math:`\lambda \ge 0`.
    weight_decay_mask: optional tree of bools (or callable) for ``optax.add_decayed_weights``.
    block_size: see :func:`scale_by_shampoo` (and every argument below).
    b1: momentum decay.
    b2: statistics decay.
    graft: graft optimizer.
    eps: graft epsilon.
    matrix_epsilon: relative ridge of the roots.
    precondition_every: steps between root refreshes of a block.
    statistics_every: steps between statistics updates.
    stagger_roots: spread the root refreshes over the steps, round-robin.
    start_preconditioning_step: first Shampoo step.
    exponent_override: root exponent override.
    inverse_root: root method.
    inverse_failure_threshold: largest accepted root residual (see :func:`scale_by_shampoo`).
    nesterov: Nesterov momentum.
    precondition_momentum: precondition the gradients' momentum (Adam's order).
    max_preconditioner_dim: largest preconditioned dimension.
    merge_small_dims: merge small dimensions.
    statistics_dtype: dtype of statistics and roots.
    axis_name: ``pmap`` axis over which root work is split.
    num_shards: pad the stacks to a multiple of this (see :func:`sops.shampoo_state_sharding`);
      ``None`` pads nothing.
    root_staleness: steps between a statistics snapshot and the first use of its roots.
    external_roots: leave the roots to a :class:`sops.AsyncRoots` pipeline.
    storage: memory options of the state (:class:`sops.StateStorage` or ``"compact"``).

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, sops
    >>> params = jnp.ones((8, 4))
    >>> loss = lambda w: jnp.sum((w - 2.0) ** 2)
    >>> tx = sops.shampoo(learning_rate=0.1, start_preconditioning_step=1, precondition_every=10)
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(50):
    ...   updates, state = update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 1.0)
    True

  References:
    Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
    arXiv:2002.09018. Loshchilov, Hutter, "Decoupled Weight Decay Regularization",
    arXiv:1711.05101.
  """
  _check_number("learning_rate", learning_rate, low=0.0)  # 0 is accepted, as in optax
  _check_number("weight_decay", weight_decay, low=0.0)
  parts = [
    scale_by_shampoo(
      block_size=block_size,
      b1=b1,
      b2=b2,
      graft=graft,
      eps=eps,
      matrix_epsilon=matrix_epsilon,
      precondition_every=precondition_every,
      statistics_every=statistics_every,
      stagger_roots=stagger_roots,
      start_preconditioning_step=start_preconditioning_step,
      exponent_override=exponent_override,
      inverse_root=inverse_root,
      inverse_failure_threshold=inverse_failure_threshold,
      nesterov=nesterov,
      precondition_momentum=precondition_momentum,
      max_preconditioner_dim=max_preconditioner_dim,
      merge_small_dims=merge_small_dims,
      statistics_dtype=statistics_dtype,
      axis_name=axis_name,
      num_shards=num_shards,
      root_staleness=root_staleness,
      external_roots=external_roots,
      storage=storage,
    )
  ]
  if not (isinstance(weight_decay, numbers.Real) and weight_decay == 0.0):
    parts.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return utils.pass_through_non_float(optax.chain(*parts))
