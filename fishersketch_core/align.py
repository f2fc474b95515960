"""From signatures to alignments, their decomposition, and the Kronecker discrepancy δ.

Every quantity is a ratio of inner products of feature means, i.e. of sums over the m sketch
coordinates. Standard errors are sketching errors (for the task's fixed positions), estimated by a
delete-a-group jackknife over interleaved groups of coordinates. Forms:

* ``"U"`` (default) — self-norms are cross-half products ⟨μ^(0), μ^(1)⟩: same-position pairs dropped.
* ``"V"`` — self-norms ‖μ‖², same-position pairs kept (biased upward for small tasks).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from .signature import COMPAT_KEYS, Signature, check_compatible

FORMS = ("U", "V")
JACKKNIFE_GROUPS = 256


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error."""

    value: float
    se: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "se", float(self.se))

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        return self.value - z * self.se, self.value + z * self.se

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return f"{self.value:.4f} ± {self.se:.4f}"


@dataclasses.dataclass(frozen=True)
class Alignment:
    """ρ_F (joint), ρ_h (activation), ρ_e (error) and κ (coupling): ρ_F = ρ_h · ρ_e · κ exactly."""

    joint: Estimate
    activation: Estimate
    error: Estimate
    coupling: Estimate
    form: str
    n_source: int
    n_target: int

    @property
    def kronecker(self) -> float:
        """The K-FAC prediction ρ_h·ρ_e of ρ_F."""
        return self.activation.value * self.error.value

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in ("joint", "activation", "error", "coupling"):
            est = getattr(self, name)
            out[name], out[f"{name}_se"] = est.value, est.se
        return out


@dataclasses.dataclass(frozen=True)
class KroneckerDelta:
    """δ_T = ‖F − A⊗G‖/‖F‖ with its standard error, and the signed δ² it comes from.

    In the U form the estimate of δ² can fall below 0 when F ≈ A⊗G; ``value`` is then 0 and
    ``delta_sq`` keeps the signed number. ``se`` maps δ² ± SE(δ²) through the square root:
    ``√(δ² + SE²) − δ``, which tends to SE(δ²)/(2δ) for large δ and to √SE(δ²) at δ = 0.
    """

    value: float
    se: float
    delta_sq: float
    delta_sq_se: float
    form: str
    n_positions: int

    @classmethod
    def from_squared(cls, delta_sq: float, delta_sq_se: float, form: str, n_positions: int) -> "KroneckerDelta":
        value = math.sqrt(max(delta_sq, 0.0)) if np.isfinite(delta_sq) else float("nan")
        se = math.sqrt(max(delta_sq, 0.0) + delta_sq_se) - value if np.isfinite(delta_sq_se) else float("nan")
        return cls(value=value, se=se, delta_sq=float(delta_sq), delta_sq_se=float(delta_sq_se),
                   form=form, n_positions=n_positions)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        lo = self.delta_sq - z * self.delta_sq_se
        hi = self.delta_sq + z * self.delta_sq_se
        return math.sqrt(max(lo, 0.0)), math.sqrt(max(hi, 0.0))

    def __repr__(self) -> str:
        return f"δ={self.value:.4f} ± {self.se:.4f} ({self.form})"


def _coupling(rho_f, rho_h, rho_e):
    """κ = ρ_F / (ρ_h ρ_e); NaN where the denominator is 0 (floats or arrays)."""
    denom = np.asarray(rho_h * rho_e, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(rho_f, dtype=np.float64) / np.where(denom != 0, denom, np.nan)
    return float(out) if out.ndim == 0 else out


def _jackknife_ratio(parts: Sequence[np.ndarray], stat: Callable[..., float],
                     groups: int = JACKKNIFE_GROUPS) -> tuple[float, float]:
    """Point value and jackknife SE of stat(Σ_j parts[0][j], Σ_j parts[1][j], ...).

    Each part is a per-coordinate contribution (m,) to an inner product. Leaving a group of
    coordinates out rescales every sum by the same factor, which cancels in the ratios used here.
    """
    m = parts[0].shape[0]
    totals = np.array([float(p.sum()) for p in parts])  # (P,)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(stat(*totals))
        g = min(groups, m)
        if g < 3:
            return value, float("nan")
        labels = np.arange(m) % g
        group_sums = np.stack([np.bincount(labels, weights=p, minlength=g) for p in parts])  # (P, g)
        loo = np.asarray(stat(*(totals[:, None] - group_sums)), dtype=np.float64)  # (g,) leave-one-out
    loo = loo[np.isfinite(loo)]
    if len(loo) < 3:
        return value, float("nan")
    se = math.sqrt((len(loo) - 1) / len(loo) * float(((loo - loo.mean()) ** 2).sum()))
    return value, se


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be 'U' (same-position pairs dropped) or 'V' (kept), got {form!r}")


def _self_parts(half: np.ndarray, counts: np.ndarray, form: str) -> np.ndarray:
    """Per-coordinate contributions to the self inner product of one feature family."""
    half = half.astype(np.float64)
    if form == "U":
        if counts.min() == 0:
            raise ValueError("the U form needs positions in both halves of a task; this task has "
                             f"{counts.tolist()} — add more sequences or use form='V'")
        return half[0] * half[1]
    full = (counts[0] * half[0] + counts[1] * half[1]) / counts.sum()
    return full * full


def _full(half: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return (counts[0] * half[0].astype(np.float64) + counts[1] * half[1].astype(np.float64)) / counts.sum()


FAMILIES = ("joint", "activation", "error")


def self_norms(sig: Signature, form: str = "U") -> dict[str, float]:
    """Self inner products ⟨μ, μ⟩ per feature family: estimates of ‖F‖², ‖A‖², ‖G‖²."""
    _check_form(form)
    return {f: float(_self_parts(getattr(sig, f + "_half"), sig.counts, form).sum()) for f in FAMILIES}


def alignment(sig_s: Signature, sig_t: Signature, form: str = "U",
              compat_keys: tuple[str, ...] = COMPAT_KEYS) -> Alignment:
    """ρ_F, ρ_h, ρ_e and κ between two tasks, with sketching standard errors.

    Parameters
    ----------
    sig_s, sig_t : Signature
        Source and target signatures; they must share d, K, m, seed, method and model.
    form : {"U", "V"}
        U drops same-position pairs from the self-norms (default), V keeps them.

    Raises
    ------
    IncompatibleSignatures
        Naming every setting on which the two signatures differ.

    Examples
    --------
    >>> import numpy as np
    >>> from fishersketch_core import Sketcher
    >>> sk = Sketcher(d=6, K=10, m=512, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> sigs = [sk.new_state().update(rng.normal(size=(200, 6)), rng.normal(size=(200, 10))).signature()
    ...         for _ in range(2)]
    >>> a = alignment(*sigs)
    >>> abs(a.joint.value - a.activation.value * a.error.value * a.coupling.value) < 1e-12
    True
    """
    _check_form(form)
    check_compatible(sig_s.meta, sig_t.meta, keys=compat_keys)
    parts = []
    for fam in FAMILIES:
        hs, ht = getattr(sig_s, fam + "_half"), getattr(sig_t, fam + "_half")
        parts += [_full(hs, sig_s.counts) * _full(ht, sig_t.counts),
                  _self_parts(hs, sig_s.counts, form), _self_parts(ht, sig_t.counts, form)]

    def rho(cross, ss, tt):  # works on floats and on arrays of leave-one-out sums
        return cross / np.sqrt(np.where((ss > 0) & (tt > 0), ss * tt, np.nan))

    def coupling(*s: float) -> float:
        return _coupling(rho(*s[0:3]), rho(*s[3:6]), rho(*s[6:9]))

    est = [Estimate(*_jackknife_ratio(parts[3 * i: 3 * i + 3], rho)) for i in range(3)]
    # κ from the same point values so that ρ_F = ρ_h·ρ_e·κ holds to float precision
    kappa_value = _coupling(est[0].value, est[1].value, est[2].value)
    kappa_se = _jackknife_ratio(parts, coupling)[1]
    return Alignment(joint=est[0], activation=est[1], error=est[2], coupling=Estimate(kappa_value, kappa_se),
                     form=form, n_source=sig_s.n_positions, n_target=sig_t.n_positions)


def kronecker_delta(sig: Signature, form: str = "U") -> KroneckerDelta:
    """δ_T = ‖F − A⊗G‖_F / ‖F‖_F of one task, with its sketching standard error.

    The U form uses only cross-half products (e.g. ‖F‖² ≈ ⟨μ_F^(0), μ_F^(1)⟩ and
    ‖A⊗G‖² ≈ ⟨√m μ_A^(0)⊙μ_G^(1), √m μ_A^(1)⊙μ_G^(0)⟩), which removes the large upward bias that
    sample moments (the V form) give δ. See DESIGN.md §2–3.

    Examples
    --------
    >>> import numpy as np
    >>> from fishersketch_core import Sketcher
    >>> sk = Sketcher(d=6, K=10, m=1024, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> sig = sk.new_state().update(rng.normal(size=(400, 6)), rng.normal(size=(400, 10))).signature()
    >>> kronecker_delta(sig).form
    'U'
    """
    _check_form(form)
    c = sig.counts
    sqrt_m = math.sqrt(sig.meta.m)
    f = sig.joint_half.astype(np.float64)
    a = sig.activation_half.astype(np.float64)
    g = sig.error_half.astype(np.float64)
    if form == "U":
        if c.min() == 0:
            raise ValueError(f"the U form of δ needs positions in both halves, got counts {c.tolist()}; "
                             "use more sequences or form='V'")
        norm_f = f[0] * f[1]
        cross = 0.5 * (f[0] * sqrt_m * a[1] * g[1] + f[1] * sqrt_m * a[0] * g[0])
        norm_ag = (sqrt_m * a[0] * g[1]) * (sqrt_m * a[1] * g[0])
    else:
        ff, af, gf = _full(f, c), _full(a, c), _full(g, c)
        ag = sqrt_m * af * gf
        norm_f, cross, norm_ag = ff * ff, ff * ag, ag * ag

    def delta_sq(nf, cr, nag):
        return (nf - 2 * cr + nag) / np.where(nf > 0, nf, np.nan)

    value, se = _jackknife_ratio([norm_f, cross, norm_ag], delta_sq)
    return KroneckerDelta.from_squared(value, se, form=form, n_positions=sig.n_positions)


def alignment_matrix(sigs: Sequence[Signature], form: str = "U") -> dict[str, np.ndarray]:
    """Pairwise ρ_F, ρ_h, ρ_e, κ over a set of signatures (no standard errors; fast).

    Returns a dict of (n, n) arrays keyed ``joint``, ``activation``, ``error``, ``coupling``.
    """
    _check_form(form)
    if not sigs:
        raise ValueError("alignment_matrix needs at least one signature")
    for s in sigs[1:]:
        check_compatible(sigs[0].meta, s.meta)
    out = {}
    for fam in FAMILIES:
        full = np.stack([_full(getattr(s, fam + "_half"), s.counts) for s in sigs])  # (n, m)
        selfn = np.array([_self_parts(getattr(s, fam + "_half"), s.counts, form).sum() for s in sigs])
        gram = full @ full.T
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = np.sqrt(np.where(selfn > 0, selfn, np.nan))
            out[fam] = gram / denom[:, None] / denom[None, :]
        np.fill_diagonal(out[fam], 1.0)  # a task is perfectly aligned with itself
    with np.errstate(invalid="ignore", divide="ignore"):
        out["coupling"] = out["joint"] / (out["activation"] * out["error"])
    return out
