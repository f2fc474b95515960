"""Source-selection metrics over fixed candidate pools, with bootstrap intervals over targets.

For one target ``t`` with pool ``P`` (candidate sources, never ``t``), a method's scores ``s(c)`` and the
ground-truth gains ``g(c)`` for ``c ∈ P``:

* the method picks ``argmax_c s(c)``. Ties (scores within a relative 1e-9 of the maximum) are broken
  uniformly at random *in expectation*: every metric below is its mean over the tied picks, so a method
  that gives all candidates the same score (activation-only similarity when the inputs are identical)
  scores exactly at chance instead of at whatever the first-listed candidate happens to be;
* ``top1`` = [g(pick) = max g] (chance 1/|P|);
* ``pct_oracle`` = g(pick) / max g, defined only where max g > 0 (NaN elsewhere, and left out of means);
  aggregated over targets as :func:`oracle_share` = Σ g(pick) / Σ max g (the headline "% of oracle": the
  mean of per-target ratios explodes when a target's best gain is close to 0 and its pick's is negative);
* ``normalised_gain`` = (g(pick) − min g) / (max g − min g) (1 when all gains are equal), well defined
  when gains are negative;
* ``regret`` = max g − g(pick) (nats);
* ``spearman`` = rank correlation of s and g over the pool; a method whose scores are constant over the
  pool carries no ranking and gets 0.

Means over targets come with percentile bootstrap 95 % intervals (targets resampled with replacement).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["METRICS", "pool_metrics", "evaluate_method", "evaluate_methods", "bootstrap_ci", "summarise",
           "summary_table", "paired_difference", "oracle_share", "exact_vs_sketch", "ground_truth_noise"]

METRICS = ("top1", "pct_oracle", "normalised_gain", "regret", "spearman")
TIE_RTOL = 1e-9


def _spearman(x: np.ndarray, y: np.ndarray, rtol: float = TIE_RTOL) -> float:
    from scipy.stats import rankdata

    scale = max(1.0, float(np.abs(x).max())) if len(x) else 1.0
    x = np.round(x / (rtol * scale))  # scores equal up to rounding noise are ties (as for the pick)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))


def pool_metrics(scores: Sequence[float], gains: Sequence[float], names: Sequence[str] | None = None,
                 rtol: float = TIE_RTOL) -> dict[str, Any]:
    """Metrics of one target's pick from its pool (see the module docstring).

    Parameters
    ----------
    scores, gains : same-length sequences over the pool; NaN scores are never picked unless all are NaN
    names : candidate names (for ``chosen`` and ``best``), default their positions

    Examples
    --------
    >>> m = pool_metrics([0.9, 0.5, 0.1], [1.0, 2.0, 0.0])
    >>> m["top1"], m["pct_oracle"], m["normalised_gain"], m["regret"]
    (0.0, 0.5, 0.5, 1.0)
    >>> pool_metrics([1, 1, 1, 1], [4.0, 0.0, 0.0, 0.0])["top1"]   # all tied: chance
    0.25
    """
    s = np.asarray(scores, dtype=float)
    g = np.asarray(gains, dtype=float)
    if s.shape != g.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores and gains must be equal-length non-empty 1-d sequences, got {s.shape} and {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("every candidate in the pool needs a finite ground-truth gain")
    names = list(names) if names is not None else [str(i) for i in range(len(s))]
    finite = np.isfinite(s)
    if finite.any():
        smax = s[finite].max()
        tied = finite & (s >= smax - rtol * max(1.0, abs(smax)))
    else:
        tied = np.ones(len(s), bool)
    gb, gw = g.max(), g.min()
    picked = g[tied]
    g_pick = float(picked.mean())
    first = int(np.flatnonzero(tied)[0])
    ranked = np.where(finite, s, s[finite].min() - 1.0 if finite.any() else 0.0)  # NaN ranks last
    return {"chosen": names[first], "n_tied": int(tied.sum()), "best": names[int(np.argmax(g))],
            "gain_chosen": g_pick, "gain_best": float(gb), "gain_min": float(gw),
            "top1": float((picked == gb).mean()),
            "pct_oracle": float(g_pick / gb) if gb > 0 else math.nan,
            "normalised_gain": float((g_pick - gw) / (gb - gw)) if gb > gw else 1.0,
            "regret": float(gb - g_pick), "spearman": _spearman(ranked, g, rtol),
            "n_candidates": int(len(s))}


def evaluate_method(scores: pd.DataFrame, gains: pd.DataFrame, pools: Mapping[str, Sequence[str]],
                    groups: Mapping[str, str] | pd.Series | None = None, rtol: float = TIE_RTOL) -> pd.DataFrame:
    """One row per target (every target of ``pools``): its pick, the best source and the metrics.

    ``scores`` and ``gains`` are (sources × targets) DataFrames; every (source, target) pair of the pools
    must have a finite gain.
    """
    rows = []
    groups = pd.Series(groups if groups is not None else {}, dtype=object)
    for t, pool in pools.items():
        pool = [c for c in pool if c != t]
        if t not in gains.columns:
            raise ValueError(f"no ground-truth gains for target {t!r}")
        missing = [c for c in pool if c not in gains.index or not np.isfinite(gains.at[c, t])]
        if missing:
            raise ValueError(f"target {t!r}: no gain for pool sources {missing[:4]}; compute every pool pair")
        sc = scores.reindex(index=pool)[t].to_numpy(dtype=float) if t in scores.columns else np.full(len(pool), np.nan)
        m = pool_metrics(sc, gains.loc[pool, t].to_numpy(dtype=float), pool, rtol=rtol)
        rows.append({"target": t, "target_group": groups.get(t, ""), **m,
                     "chosen_group": groups.get(m["chosen"], ""), "best_group": groups.get(m["best"], "")})
    return pd.DataFrame(rows)


def evaluate_methods(scores: Mapping[str, pd.DataFrame], gains: pd.DataFrame, pools: Mapping[str, Sequence[str]],
                     groups: Mapping[str, str] | pd.Series | None = None) -> pd.DataFrame:
    """:func:`evaluate_method` for every method, stacked with a ``method`` column."""
    return pd.concat([evaluate_method(sc, gains, pools, groups).assign(method=name)
                      for name, sc in scores.items()], ignore_index=True)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float, float, int]:
    """Mean of the finite values and its percentile bootstrap interval: (mean, lo, hi, n).

    Examples
    --------
    >>> bootstrap_ci([1.0, 1.0, 1.0])[:3]
    (1.0, 1.0, 1.0)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n == 1:
        return mean, mean, mean, 1
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
    a = (1 - level) / 2
    return mean, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), n


def oracle_share(gain_chosen: Sequence[float], gain_best: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float, int]:
    """Share of the oracle's total gain that the picks achieve, Σ g(pick) / Σ g(best), over targets with
    g(best) > 0, with a percentile bootstrap interval over targets: (value, lo, hi, n).

    Unlike the mean of per-target ratios, it is not dominated by targets whose best gain is close to 0.

    Examples
    --------
    >>> round(oracle_share([1.0, -0.01], [2.0, 0.0001])[0], 4)   # the mean of ratios would be (0.5 − 100)/2
    0.495
    """
    gc, gb = np.asarray(gain_chosen, dtype=float), np.asarray(gain_best, dtype=float)
    keep = np.isfinite(gc) & np.isfinite(gb) & (gb > 0)
    gc, gb = gc[keep], gb[keep]
    n = len(gc)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    value = float(gc.sum() / gb.sum())
    if n == 1:
        return value, value, value, 1
    idx = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
    boots = gc[idx].sum(1) / gb[idx].sum(1)
    a = (1 - level) / 2
    return value, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), n


def summarise(per_target: pd.DataFrame, by: Sequence[str] = ("method",), n_boot: int = 2000, seed: int = 0
              ) -> pd.DataFrame:
    """Mean and 95 % bootstrap interval of every metric per group of rows (default: per method).

    Columns: the ``by`` keys, ``n_targets``, ``<metric>``, ``<metric>_lo``, ``<metric>_hi``, ``<metric>_n`` for
    every per-target metric (``pct_oracle`` is the mean of per-target ratios), ``oracle_share`` (+ ``_lo``,
    ``_hi``, ``_n``: Σ g(pick) / Σ g(best), see :func:`oracle_share`) and ``pct_oracle_median``.
    """
    out = []
    for key, part in per_target.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        row["n_targets"] = len(part)
        for k, metric in enumerate(METRICS):
            mean, lo, hi, n = bootstrap_ci(part[metric].to_numpy(), n_boot=n_boot, seed=seed + k)
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi, f"{metric}_n": n})
        v, lo, hi, n = oracle_share(part["gain_chosen"], part["gain_best"], n_boot=n_boot, seed=seed + 99)
        row.update({"oracle_share": v, "oracle_share_lo": lo, "oracle_share_hi": hi, "oracle_share_n": n})
        row["pct_oracle_median"] = float(part["pct_oracle"].median()) if part["pct_oracle"].notna().any() else math.nan
        out.append(row)
    return pd.DataFrame(out)


def summary_table(per_target: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method overall (``target_group = "(all)"``) and per target group."""
    overall = summarise(per_target, ("method",), n_boot, seed).assign(target_group="(all)")
    grouped = summarise(per_target, ("method", "target_group"), n_boot, seed)
    cols = ["method", "target_group"]
    df = pd.concat([overall, grouped], ignore_index=True)
    return df[cols + [c for c in df.columns if c not in cols]]


def paired_difference(per_target: pd.DataFrame, a: str, b: str, metric: str, n_boot: int = 2000, seed: int = 0
                      ) -> tuple[float, float, float, int]:
    """Mean over targets of metric(a) − metric(b) with a paired bootstrap 95 % interval (targets where both
    are finite). Returns (mean, lo, hi, n).

    Examples
    --------
    >>> df = pd.DataFrame({"method": ["x", "x", "y", "y"], "target": ["t1", "t2", "t1", "t2"],
    ...                    "top1": [1.0, 1.0, 0.0, 1.0]})
    >>> paired_difference(df, "x", "y", "top1")[0]
    0.5
    """
    wide = per_target.pivot_table(index="target", columns="method", values=metric, aggfunc="first")
    if a not in wide or b not in wide:
        return math.nan, math.nan, math.nan, 0
    return bootstrap_ci((wide[a] - wide[b]).to_numpy(), n_boot=n_boot, seed=seed)


def exact_vs_sketch(sketch: pd.DataFrame, exact: pd.DataFrame, pools: Mapping[str, Sequence[str]]
                    ) -> dict[str, Any]:
    """|ρ̂ − ρ| over the (target, pool source) pairs and how often both pick the same source.

    Returns a dict with the absolute differences (``abs_diff``, an array), their quantiles, and
    ``top1_agreement`` (share of targets whose top-scored pool source is the same under both).
    """
    diffs, agree = [], []
    for t, pool in pools.items():
        pool = [c for c in pool if c != t]
        a = sketch.reindex(index=pool)[t].to_numpy(dtype=float)
        b = exact.reindex(index=pool)[t].to_numpy(dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        diffs.append(np.abs(a - b)[ok])
        if ok.any():
            agree.append(float(np.nanargmax(np.where(ok, a, -np.inf)) == np.nanargmax(np.where(ok, b, -np.inf))))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    q = {f"q{int(p * 100)}": float(np.quantile(d, p)) if len(d) else math.nan for p in (0.5, 0.9, 0.99)}
    return {"abs_diff": d, "n_pairs": int(len(d)), "mean": float(d.mean()) if len(d) else math.nan,
            "max": float(d.max()) if len(d) else math.nan, **q,
            "top1_agreement": float(np.mean(agree)) if agree else math.nan, "n_targets": len(agree)}


def ground_truth_noise(before: Mapping[str, np.ndarray], after: Mapping[tuple[str, str], np.ndarray],
                       pools: Mapping[str, Sequence[str]], scores: Mapping[str, pd.DataFrame] | None = None,
                       n_boot: int = 200, seed: int = 0, rtol: float = TIE_RTOL) -> dict[str, Any]:
    """How much of the ground truth is noise from the finite evaluation split.

    For every target, its evaluation positions are resampled with replacement (``n_boot`` times, the same
    resample for every pool source: gains are paired) and the pool's gains recomputed from the per-position
    NLLs ``before[t]`` and ``after[(s, t)]``.

    Returns a dict with ``per_target`` (DataFrame: target, stability = share of resamples in which the
    full-sample best source is still the best, separated = the 95 % bootstrap interval of g(best) − g(second)
    excludes 0, gap = that difference), the means ``stability`` and ``separated``, and when ``scores`` is given
    ``resampled_top1`` (method → top-1 against the resampled ground truths, ties split evenly), to be read
    next to the full-sample best's own ``stability``: no predictor can be expected to beat it by much.
    """
    rng = np.random.default_rng(seed)
    rows, hits = [], {m: [] for m in (scores or {})}
    for t, pool in pools.items():
        pool = [c for c in pool if c != t and (c, t) in after]
        if len(pool) < 2 or t not in before:
            continue
        b = np.asarray(before[t], dtype=np.float64)
        A = np.stack([np.asarray(after[(c, t)], dtype=np.float64) for c in pool])      # (P, n)
        n = len(b)
        full = b.mean() - A.mean(1)
        idx = rng.integers(0, n, size=(int(n_boot), n))
        G = b[idx].mean(1)[:, None] - A[:, idx].mean(2).T                              # (n_boot, P)
        best, second = np.argsort(full)[::-1][:2]
        d = G[:, best] - G[:, second]
        rows.append({"target": t, "stability": float((G.argmax(1) == best).mean()), "gap": float(full[best] - full[second]),
                     "gap_lo": float(np.quantile(d, 0.025)), "separated": bool(np.quantile(d, 0.025) > 0)})
        for m, sc in (scores or {}).items():
            v = sc.reindex(index=pool)[t].to_numpy(dtype=float)
            fin = np.isfinite(v)
            if fin.any():
                tied = fin & (v >= v[fin].max() - rtol * max(1.0, abs(v[fin].max())))
            else:
                tied = np.ones(len(v), bool)
            winners = G.argmax(1)
            hits[m].append(float(tied[winners].mean() / tied.sum()) if tied.sum() else 0.0)
    df = pd.DataFrame(rows)
    out: dict[str, Any] = {"per_target": df, "n_boot": int(n_boot),
                           "stability": float(df["stability"].mean()) if len(df) else math.nan,
                           "separated": float(df["separated"].mean()) if len(df) else math.nan}
    if scores:
        out["resampled_top1"] = {m: float(np.mean(v)) if v else math.nan for m, v in hits.items()}
    return out
