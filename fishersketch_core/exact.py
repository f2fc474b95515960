"""Exact float64 oracle on raw (h, e) arrays: the quantities FisherSketch estimates.

Everything is computed from the pairwise kernels k_h(i,j) = (h_i·h_j)² and k_e(i,j) = (e_i·e_j)²,
whose Gram matrices are accumulated blockwise over the vocabulary so that a few thousand positions
at K = 50,000 fit in memory (memory O(n² + n·chunk)). Forms:

* ``"U"`` — same-position pairs dropped (every index in each term distinct); the default.
* ``"V"`` — plain sample moments, same-position pairs kept.
* ``"split"`` — the cross-half statistics the sketch estimates, given each position's half
  (``halves``); used to test the sketch's unbiasedness exactly.

Standard errors here are sampling errors (delete-a-group jackknife over positions); the sketch's
standard errors in :mod:`fishersketch_core.align` are sketching errors for fixed data.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .align import Alignment, Estimate, KroneckerDelta, _coupling

FORMS = ("U", "V", "split")
_JACKKNIFE_GROUPS = 20


def _as64(name: str, x: Any) -> torch.Tensor:
    t = torch.from_numpy(x) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (positions, features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no positions; a task needs at least 2")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def squared_gram(x: Any, y: Any, chunk: int = 8192) -> np.ndarray:
    """(x_i·y_j)² for all pairs, float64 (n_x, n_y), accumulated over column blocks."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    gram = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64)
    for c in range(0, x.shape[1], chunk):
        gram += x[:, c:c + chunk].double() @ y[:, c:c + chunk].double().T
    return (gram ** 2).numpy()


def _self_mean(k: np.ndarray, form: str, halves: np.ndarray | None) -> float:
    n = k.shape[0]
    if form == "V":
        return float(k.mean())
    if form == "U":
        if n < 2:
            raise ValueError("the U form needs at least 2 positions per task")
        return float((k.sum() - np.trace(k)) / (n * (n - 1)))
    h0, h1 = halves == 0, halves == 1
    if not h0.any() or not h1.any():
        raise ValueError("the split form needs positions in both halves")
    return float(k[np.ix_(h0, h1)].mean())


def _check_form(form: str, halves: Any, n: int) -> np.ndarray | None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form != "split":
        return None
    if halves is None:
        raise ValueError("form='split' needs halves: the half (0/1) of each position")
    halves = np.asarray(halves)
    if halves.shape != (n,):
        raise ValueError(f"halves must have shape ({n},), got {halves.shape}")
    return halves


def _jackknife(stat: Callable[[np.ndarray], float], n: int, groups: int = _JACKKNIFE_GROUPS) -> float:
    """Delete-a-group jackknife standard error of stat(keep_mask) over n positions."""
    g = min(groups, n)
    if g < 3:
        return float("nan")
    labels = np.arange(n) % g
    vals = np.array([stat(labels != k) for k in range(g)])
    vals = vals[np.isfinite(vals)]
    if len(vals) < 3:
        return float("nan")
    return float(np.sqrt((len(vals) - 1) / len(vals) * ((vals - vals.mean()) ** 2).sum()))


def _rho(cross: float, self_s: float, self_t: float) -> float:
    if self_s <= 0 or self_t <= 0:
        return float("nan")
    return cross / np.sqrt(self_s * self_t)


def alignment(h_s: Any, e_s: Any, h_t: Any, e_t: Any, form: str = "U",
              halves_s: Any = None, halves_t: Any = None, with_se: bool = True) -> Alignment:
    """Exact ρ_F, ρ_h, ρ_e and κ between tasks S and T.

    Parameters
    ----------
    h_s, e_s : arrays (n_s, d), (n_s, K)
        Head inputs and errors of task S; ``h_t, e_t`` likewise for T.
    form : {"U", "V", "split"}
        Whether self-norms drop same-position pairs (U), keep them (V), or use cross-half pairs.
    with_se : bool
        Add jackknife sampling standard errors (20 extra evaluations on the Gram matrices).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h, e = rng.normal(size=(50, 4)), rng.normal(size=(50, 6))
    >>> round(alignment(h, e, h, e, form="V").joint.value, 6)
    1.0
    """
    h_s, e_s, h_t, e_t = (_as64(n, x) for n, x in (("h_s", h_s), ("e_s", e_s), ("h_t", h_t), ("e_t", e_t)))
    if h_s.shape[0] != e_s.shape[0] or h_t.shape[0] != e_t.shape[0]:
        raise ValueError("h and e of a task must have the same number of positions")
    if h_s.shape[1] != h_t.shape[1] or e_s.shape[1] != e_t.shape[1]:
        raise ValueError(f"tasks must share d and K, got {h_s.shape[1]}/{e_s.shape[1]} and "
                         f"{h_t.shape[1]}/{e_t.shape[1]}")
    hs_half = _check_form(form, halves_s, h_s.shape[0])
    ht_half = _check_form(form, halves_t, h_t.shape[0])
    kh = {"ss": squared_gram(h_s, h_s), "tt": squared_gram(h_t, h_t), "st": squared_gram(h_s, h_t)}
    ke = {"ss": squared_gram(e_s, e_s), "tt": squared_gram(e_t, e_t), "st": squared_gram(e_s, e_t)}
    kf = {k: kh[k] * ke[k] for k in kh}

    def values(keep_s: np.ndarray, keep_t: np.ndarray) -> tuple[float, float, float, float]:
        out = []
        hs = None if hs_half is None else hs_half[keep_s]
        ht = None if ht_half is None else ht_half[keep_t]
        for kern in (kf, kh, ke):
            ss = kern["ss"][np.ix_(keep_s, keep_s)]
            tt = kern["tt"][np.ix_(keep_t, keep_t)]
            st = kern["st"][np.ix_(keep_s, keep_t)]
            out.append(_rho(float(st.mean()), _self_mean(ss, form, hs), _self_mean(tt, form, ht)))
        return out[0], out[1], out[2], _coupling(out[0], out[1], out[2])

    n_s, n_t = h_s.shape[0], h_t.shape[0]
    all_s, all_t = np.ones(n_s, bool), np.ones(n_t, bool)
    point = values(all_s, all_t)
    ses = [0.0] * 4
    if with_se:
        for i in range(4):
            var_s = _jackknife(lambda keep: values(keep, all_t)[i], n_s) ** 2
            var_t = _jackknife(lambda keep: values(all_s, keep)[i], n_t) ** 2
            ses[i] = float(np.sqrt(var_s + var_t))
    est = [Estimate(v, s) for v, s in zip(point, ses)]
    return Alignment(joint=est[0], activation=est[1], error=est[2], coupling=est[3], form=form,
                     n_source=n_s, n_target=n_t)


def _delta_terms(kh: np.ndarray, ke: np.ndarray, form: str, halves: np.ndarray | None
                 ) -> tuple[float, float, float]:
    """(‖F‖², ⟨F, A⊗G⟩, ‖A⊗G‖²) in the requested form."""
    n = kh.shape[0]
    if form == "V":
        return (float((kh * ke).mean()), float((kh.mean(1) * ke.mean(1)).mean()),
                float(kh.mean() * ke.mean()))
    if form == "U":
        if n < 3:
            raise ValueError("the U form of δ needs at least 3 positions")
        kh0, ke0 = kh.copy(), ke.copy()
        np.fill_diagonal(kh0, 0.0)
        np.fill_diagonal(ke0, 0.0)
        pair = float((kh0 * ke0).sum())
        norm_f = pair / (n * (n - 1))
        # Σ_{i,j,l distinct} k_h(i,j) k_e(i,l) = Σ_i rowsum_h(i)·rowsum_e(i) − Σ_{i≠j} k_h k_e
        cross = (float((kh0.sum(1) * ke0.sum(1)).sum()) - pair) / (n * (n - 1) * (n - 2))
        return norm_f, cross, float(kh0.sum() / (n * (n - 1)) * ke0.sum() / (n * (n - 1)))
    h0, h1 = halves == 0, halves == 1
    if not h0.any() or not h1.any():
        raise ValueError("the split form needs positions in both halves")
    norm_f = float((kh * ke)[np.ix_(h0, h1)].mean())
    # i in one half, j and l in the other (the sketch's ⟨μ_F^(0), √m μ_A^(1)⊙μ_G^(1)⟩), symmetrised
    c01 = float((kh[np.ix_(h0, h1)].mean(1) * ke[np.ix_(h0, h1)].mean(1)).mean())
    c10 = float((kh[np.ix_(h1, h0)].mean(1) * ke[np.ix_(h1, h0)].mean(1)).mean())
    return norm_f, 0.5 * (c01 + c10), float(kh[np.ix_(h0, h1)].mean() * ke[np.ix_(h0, h1)].mean())


def kronecker_delta(h: Any, e: Any, form: str = "U", halves: Any = None,
                    with_se: bool = True) -> KroneckerDelta:
    """Exact δ_T = ‖F − A⊗G‖_F / ‖F‖_F with a jackknife sampling standard error.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = kronecker_delta(rng.normal(size=(300, 5)), rng.normal(size=(300, 7)))
    >>> d.value < 0.3   # independent h and e: F = A⊗G, δ ≈ 0 in the U form
    True
    """
    h, e = _as64("h", h), _as64("e", e)
    if h.shape[0] != e.shape[0]:
        raise ValueError(f"h and e must have the same number of positions, got {h.shape[0]} and {e.shape[0]}")
    halves = _check_form(form, halves, h.shape[0])
    kh, ke = squared_gram(h, h), squared_gram(e, e)

    def delta_sq(keep: np.ndarray) -> float:
        sub = np.ix_(keep, keep)
        norm_f, cross, norm_ag = _delta_terms(kh[sub], ke[sub], form, None if halves is None else halves[keep])
        return (norm_f - 2 * cross + norm_ag) / norm_f

    value_sq = delta_sq(np.ones(h.shape[0], bool))
    se_sq = _jackknife(delta_sq, h.shape[0]) if with_se else 0.0
    return KroneckerDelta.from_squared(value_sq, se_sq, form=form, n_positions=h.shape[0])
