# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""Tests of the tracked eigenbases behind warm-started Shampoo roots, against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sops._src import eigenbasis as eb


def _spd(rng, batch, n, cond=1e3):
  out = []
  for _ in range(batch):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    out.append((q * np.logspace(0, -np.log10(cond), n)) @ q.T)
  return np.asarray(out)


def _ref_root(a, p, ridge):
  w, v = np.linalg.eigh(np.asarray(a, np.float64))
  w = np.maximum(w, 0.0)
  return (v * (w + ridge * w.max(-1, keepdims=True))[..., None, :] ** (-1.0 / p)) @ np.swapaxes(
    v, -1, -2
  )


def _full(a):
  return jnp.full(a.shape[:-2], a.shape[-1], jnp.int32)


def _rel(x, ref):
  x = np.asarray(x, np.float64)
  return np.linalg.norm(x - ref, 2, axis=(-1, -2)) / np.linalg.norm(ref, 2, axis=(-1, -2))


@pytest.mark.parametrize("p", [2, 4])
def test_cold_basis_root_matches_float64_eigh_root(rng, p):
  # float32 eigh at condition 1e3: the -1/p root is accurate to ~n u cond / p (< 1e-3 here).
  a = _spd(rng, 3, 24)
  x = eb.root_from_eigenbasis(
    eb.cold_eigenbasis(jnp.asarray(a, jnp.float32)), p, 1e-6, jnp.ones(a.shape, bool)
  )
  assert np.all(_rel(x, _ref_root(a, p, 1e-6)) < 1e-3)


def test_refining_a_nearby_basis_keeps_it_and_reports_small_off_diagonal(rng):
  # The basis of A is refined for A + small perturbation: one QR step is accepted, and its root
  # error is of the order of the off-diagonal mass it reports.
  a = _spd(rng, 4, 32, cond=1e2)
  pert = 1e-3 * _spd(rng, 4, 32, cond=10)
  q0 = np.linalg.eigh(a)[1].astype(np.float32)
  b = jnp.asarray(a + pert, jnp.float32)
  found = eb.tracked_eigenbasis(b, jnp.asarray(q0), 1e-2, _full(b))
  assert np.all(np.asarray(found.off_diagonal) < 1e-2)
  x = eb.root_from_eigenbasis(found, 4, 1e-6, jnp.ones(b.shape, bool))
  err = _rel(x, _ref_root(a + pert, 4, 1e-6))
  # One ordered QR step from the old basis: root error ~2e-3 (unordered, from the ascending eigh
  # order, it would be ~2e-2 with off-diagonal mass ~1e-2 and fall back to a cold eigh).
  assert np.all(err < 5e-3), (err, found.off_diagonal)


def test_a_stale_basis_falls_back_to_a_cold_eigh(rng):
  # From the identity, qr(A) is far from an eigenbasis: the cold eigh is used, root exact.
  a = jnp.asarray(_spd(rng, 3, 16), jnp.float32)
  found = eb.tracked_eigenbasis(a, jnp.broadcast_to(jnp.eye(16), a.shape), 1e-2, _full(a))
  assert np.all(np.asarray(found.off_diagonal) < 1e-5)
  x = eb.root_from_eigenbasis(found, 2, 1e-6, jnp.ones(a.shape, bool))
  assert np.all(_rel(x, _ref_root(np.asarray(a), 2, 1e-6)) < 1e-3)


def test_only_the_blocks_above_tolerance_are_recomputed(rng, monkeypatch):
  a = _spd(rng, 2, 16, cond=1e2)
  q_good = np.linalg.eigh(a[0])[1]
  q = jnp.asarray(np.stack([q_good, np.eye(16)]), jnp.float32)
  found = eb.tracked_eigenbasis(jnp.asarray(a, jnp.float32), q, 1e-2, _full(q))
  # Block 0 kept (and refined) its basis: every column stays aligned with an old one (the order
  # becomes by decreasing eigenvalue).
  overlap = np.abs(np.asarray(found.vectors[0]).T @ q_good).max(axis=1)
  assert np.all(overlap > 0.99)
  assert np.all(np.asarray(found.off_diagonal) < 1e-2)


def test_padding_gives_identity_and_the_unpadded_root(rng):
  # A 5x5 statistic zero-padded to 8: the root's real part equals the 5x5 root, the rest is I.
  a5 = _spd(rng, 1, 5)[0]
  a = np.zeros((1, 8, 8))
  a[0, :5, :5] = a5
  k = jnp.asarray([5])
  m, mask2 = eb.masked(jnp.asarray(a, jnp.float32), k)
  # A tight tolerance: from the identity, one QR step can pass a loose one (the mass is relative
  # to ||A||_F, so the small eigenvalues may still be off) and this test is about the padding.
  for q_prev in (jnp.eye(8)[None], jnp.asarray(np.linalg.eigh(m)[1])):
    found = eb.tracked_eigenbasis(m, q_prev, 1e-5, k)
    x = np.asarray(eb.root_from_eigenbasis(found, 4, 1e-6, mask2))[0]
    np.testing.assert_allclose(x[5:, 5:], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(x[:5, 5:], 0.0, atol=1e-6)
    assert _rel(x[:5, :5], _ref_root(a5, 4, 1e-6)) < 1e-3


def test_a_zero_block_gives_a_nonfinite_root_and_an_empty_block_the_identity():
  m, mask2 = eb.masked(jnp.zeros((2, 4, 4)), jnp.asarray([4, 0]))
  found = eb.tracked_eigenbasis(
    m, jnp.broadcast_to(jnp.eye(4), (2, 4, 4)), 1e-2, jnp.asarray([4, 0])
  )
  x = np.asarray(eb.root_from_eigenbasis(found, 2, 1e-6, mask2))
  assert not np.all(np.isfinite(x[0]))  # relative ridge of a zero block: rejected by the caller
  np.testing.assert_array_equal(x[1], np.eye(4))


def test_tracked_eigenbasis_jits_and_vmaps(rng):
  a = jnp.asarray(_spd(rng, 4, 8), jnp.float32)
  q = jnp.broadcast_to(jnp.eye(8), a.shape)
  k = _full(a)
  got = jax.jit(eb.tracked_eigenbasis)(a, q, 1e-2, k)
  per = jax.vmap(lambda a, q, k: eb.tracked_eigenbasis(a, q, 1e-2, k))(a, q, k)
  np.testing.assert_allclose(np.asarray(got.values), np.asarray(per.values), rtol=1e-4, atol=1e-6)


def test_drift_is_the_relative_off_diagonal_mass_of_the_real_part(rng):
  # A 5x5 statistic padded to 8: drift of a random orthogonal basis of the real part (the padding
  # kept as identity) equals ||Q^T A Q - diag||_F / ||A||_F computed in float64; 0 for eigh's.
  a5 = _spd(rng, 1, 5)[0]
  a = np.zeros((1, 8, 8))
  a[0, :5, :5] = a5
  k = jnp.asarray([5])
  m, mask2 = eb.masked(jnp.asarray(a, jnp.float32), k)
  q = np.eye(8)
  q[:5, :5] = np.linalg.qr(rng.standard_normal((5, 5)))[0]
  d = q[:5, :5].T @ a5 @ q[:5, :5]
  want = np.linalg.norm(d - np.diag(np.diag(d))) / np.linalg.norm(a5)
  qj = jnp.asarray(q[None], jnp.float32)
  got = eb.drift(m, qj, m @ qj, mask2)
  np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-4)
  # For eigh's basis the O(n^2) formula stops at its cancellation floor, sqrt(n eps) ~ 1e-3 in
  # float32 (max over 300 seeds: 1.4e-3), far below the drifts SOAP reports (1e-2 and up).
  qe = jnp.linalg.eigh(m)[1]
  assert float(eb.drift(m, qe, m @ qe, mask2)[0]) < 4 * np.sqrt(8 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("spectrum", ["cond1e3", "cond1e6", "rank_deficient"])
def test_cholesky_qr_step_is_orthogonal_and_tracks_like_householder(rng, spectrum):
  # The CholeskyQR3 path (for accelerators) of one ordered subspace step from a stale basis: an
  # orthogonal basis, as close to an eigenbasis as the Householder step's (ill-conditioned or
  # rank-deficient blocks may take the Householder fallback; the result must be finite either way).
  n, batch = 32, 3
  if spectrum == "rank_deficient":
    w = np.r_[np.logspace(0, -3, n // 2), np.zeros(n // 2)]
  else:
    w = np.logspace(0, -float(spectrum[-1]), n)
  q = np.stack([np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(batch)])
  a = jnp.asarray((q * w) @ np.swapaxes(q, -1, -2), jnp.float32)
  stale = np.stack([np.linalg.qr(x + 1e-2 * rng.standard_normal((n, n)))[0] for x in q])
  old = jnp.asarray(stale, jnp.float32)
  k, mask = jnp.full((batch,), n), jnp.ones(a.shape, bool)
  hh = eb.ordered_qr(a @ old, old, k, "householder")
  ch = eb.ordered_qr(a @ old, old, k, "cholesky")
  assert np.all(np.isfinite(np.asarray(ch)))
  gram = np.swapaxes(np.asarray(ch, np.float64), -1, -2) @ np.asarray(ch, np.float64)
  np.testing.assert_allclose(gram, np.broadcast_to(np.eye(n), gram.shape), atol=1e-5)
  d_old = np.asarray(eb.drift(a, old, a @ old, mask))
  d_hh = np.asarray(eb.drift(a, hh, a @ hh, mask))
  d_ch = np.asarray(eb.drift(a, ch, a @ ch, mask))
  assert np.all(d_ch < 0.3 * d_old) and np.all(d_ch < 1.5 * d_hh + 1e-4), (d_old, d_hh, d_ch)


def test_cholesky_qr_equals_householder_on_well_conditioned_input(rng):
  x = jnp.asarray(rng.standard_normal((2, 16, 16)) + 4 * np.eye(16), jnp.float32)
  q = eb.cholesky_qr(x)
  q_ref, r = np.linalg.qr(np.asarray(x, np.float64))
  q_ref = q_ref * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  np.testing.assert_allclose(np.asarray(q), q_ref, atol=1e-5)
