"""The float64 oracle against brute force on tiny tasks (explicit F, A, G matrices and index loops)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fishersketch_core import exact
from fishersketch_core.synthetic import make_task


def brute_moments(h: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.einsum("nk,nd->nkd", e, h).reshape(len(h), -1)  # vec(e hᵀ), (n, K·d)
    F = g.T @ g / len(h)
    A = h.T @ h / len(h)
    G = e.T @ e / len(h)
    return F, A, G


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(3)
    S = (rng.normal(size=(9, 3)), rng.normal(size=(9, 5)))
    T = (rng.normal(size=(7, 3)), rng.normal(size=(7, 5)))
    return S, T


def test_v_form_alignment_equals_explicit_moments(tiny):
    (hs, es), (ht, et) = tiny
    Fs, As, Gs = brute_moments(hs, es)
    Ft, At, Gt = brute_moments(ht, et)
    cos = lambda X, Y: (X * Y).sum() / np.sqrt((X * X).sum() * (Y * Y).sum())
    a = exact.alignment(hs, es, ht, et, form="V", with_se=False)
    assert a.joint.value == pytest.approx(cos(Fs, Ft), rel=1e-12)
    assert a.activation.value == pytest.approx(cos(As, At), rel=1e-12)
    assert a.error.value == pytest.approx(cos(Gs, Gt), rel=1e-12)
    assert a.joint.value == pytest.approx(a.activation.value * a.error.value * a.coupling.value, rel=1e-12)


def test_v_form_delta_equals_explicit_kronecker_difference(tiny):
    (h, e), _ = tiny
    F, A, G = brute_moments(h, e)
    # vec(e hᵀ) is ordered (k, d): the Kronecker product in that order is G ⊗ A
    expected = np.linalg.norm(F - np.kron(G, A)) / np.linalg.norm(F)
    assert exact.kronecker_delta(h, e, form="V", with_se=False).value == pytest.approx(expected, rel=1e-10)


def test_u_form_terms_equal_loops_over_distinct_indices(tiny):
    (h, e), _ = tiny
    n = len(h)
    kh, ke = (h @ h.T) ** 2, (e @ e.T) ** 2
    pairs = [(i, j) for i, j in itertools.product(range(n), repeat=2) if i != j]
    triples = [t for t in itertools.product(range(n), repeat=3) if len(set(t)) == 3]
    norm_f = np.mean([kh[i, j] * ke[i, j] for i, j in pairs])
    cross = np.mean([kh[i, j] * ke[i, l] for i, j, l in triples])
    norm_ag = np.mean([kh[i, j] for i, j in pairs]) * np.mean([ke[i, j] for i, j in pairs])
    expected_sq = (norm_f - 2 * cross + norm_ag) / norm_f
    got = exact.kronecker_delta(h, e, form="U", with_se=False)
    assert got.delta_sq == pytest.approx(expected_sq, rel=1e-10)


def test_u_form_removes_the_upward_bias_of_v_form_delta():
    """DESIGN.md: with independent h and e (true δ = 0) the V form is far from 0, the U form is not."""
    h, e = make_task(seed=5, n=400, coupled=False)
    v = exact.kronecker_delta(h, e, form="V").value
    u = exact.kronecker_delta(h, e, form="U")
    assert v > 0.3
    assert u.delta_sq < 2 * u.delta_sq_se + 0.02
    hc, ec = make_task(seed=5, n=400, coupled=True)
    assert exact.kronecker_delta(hc, ec, form="U").value > 0.6


def test_blockwise_gram_equals_direct():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 1000)), rng.normal(size=(15, 1000))
    np.testing.assert_allclose(exact.squared_gram(x, y, chunk=97), (x @ y.T) ** 2, rtol=1e-12)


def test_oracle_rejects_bad_input():
    h, e = np.ones((5, 3)), np.ones((5, 4))
    with pytest.raises(ValueError, match="form"):
        exact.alignment(h, e, h, e, form="W")
    with pytest.raises(ValueError, match="NaN or inf"):
        exact.kronecker_delta(h, np.full((5, 4), np.nan))
    with pytest.raises(ValueError, match="same number of positions"):
        exact.kronecker_delta(h, np.ones((4, 4)))
    with pytest.raises(ValueError, match="share d and K"):
        exact.alignment(h, e, np.ones((5, 2)), e)
    with pytest.raises(ValueError, match="halves"):
        exact.kronecker_delta(h, e, form="split")
