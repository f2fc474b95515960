"""Selection-bias audit: which sources automated selection picks, how concentrated the picks are, and
which domain groups it serves worse.

Everything here is a pure function over DataFrames (plus :func:`score_matrices_from_store`, which
reads a :class:`~fishersketch_core.store.SignatureStore`). Conventions:

* a *score matrix* is a DataFrame with sources as the index and targets as the columns (higher = more
  transferable by that method), e.g. ρ_F or ρ_h between stored tasks;
* a *gain matrix* has the same layout and holds ground-truth transfer gains ``g(s → t)``;
* ``groups`` maps a task name to its domain group (a Series or dict);
* ``pools`` optionally maps each target to its candidate sources (the protocol's 24-source pools);
  without pools every other task is a candidate. A target is never its own source.

Example
-------
>>> import pandas as pd
>>> s = pd.DataFrame([[1, .9, .1], [.9, 1, .2], [.1, .8, 1]], index=list("abc"), columns=list("abc"))
>>> chosen_sources(s)["chosen"].tolist()
['b', 'a', 'b']
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["AuditReport", "accuracy_by_group", "audit", "audit_store", "choice_counts", "chosen_sources",
           "concentration", "disagreement", "gini", "normalised_entropy", "random_pools",
           "score_matrices_from_store"]

METHOD_LABELS = {"joint": "FisherSketch ρ_F", "activation": "activation ρ_h", "error": "error ρ_e",
                 "kronecker": "Kronecker ρ_h·ρ_e"}


# --- validation -----------------------------------------------------------------------------------------

def _check_matrix(m: Any, what: str) -> pd.DataFrame:
    if not isinstance(m, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame (sources × targets), got {type(m).__name__}")
    if m.index.has_duplicates or m.columns.has_duplicates:
        raise ValueError(f"{what} has duplicate task names; names must identify tasks uniquely")
    return m


def _groups(groups: Mapping[str, str] | pd.Series | None, names: Iterable[str]) -> pd.Series:
    names = list(names)
    if groups is None:
        return pd.Series("", index=names, dtype=object)
    groups = pd.Series(groups, dtype=object)
    missing = [n for n in names if n not in groups.index]
    if missing:
        raise ValueError(f"groups has no entry for {missing[:5]}{' …' if len(missing) > 5 else ''}; "
                         "give every task a group (use '' for none)")
    return groups


def _pool(target: str, sources: Sequence[str], pools: Mapping[str, Sequence[str]] | None) -> list[str]:
    if pools is None:
        return [s for s in sources if s != target]
    if target not in pools:
        raise ValueError(f"pools has no candidate list for target {target!r}; give one per target "
                         "(see random_pools) or pass pools=None to use every other task")
    pool = [s for s in pools[target] if s != target]
    unknown = [s for s in pool if s not in sources]
    if unknown:
        raise ValueError(f"pool of {target!r} names unknown sources {unknown[:5]}; they must be rows of "
                         "the score matrix")
    return pool


# --- choices --------------------------------------------------------------------------------------------------

def random_pools(names: Sequence[str], size: int = 24, seed: int = 0) -> dict[str, list[str]]:
    """A fixed, seeded pool of ``size`` candidate sources (never the target) for every target.

    Examples
    --------
    >>> pools = random_pools([f"t{i}" for i in range(30)], size=24, seed=0)
    >>> len(pools["t0"]), "t0" in pools["t0"]
    (24, False)
    """
    names = list(names)
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if size > len(names) - 1:
        raise ValueError(f"a pool of {size} needs at least {size + 1} tasks, got {len(names)}; lower size")
    rng = np.random.default_rng(seed)
    out = {}
    for t in names:
        others = [n for n in names if n != t]
        out[t] = [others[i] for i in sorted(rng.choice(len(others), size=size, replace=False))]
    return out


def chosen_sources(scores: pd.DataFrame, pools: Mapping[str, Sequence[str]] | None = None,
                   groups: Mapping[str, str] | pd.Series | None = None) -> pd.DataFrame:
    """The best-scoring source for every target (the target itself excluded).

    Ties go to the source listed first in the score matrix; NaN scores never win.

    Returns
    -------
    DataFrame
        One row per target: ``target, chosen, score, n_candidates, target_group, chosen_group``.
        ``chosen`` is missing (NA) when a target has no scored candidate.
    """
    scores = _check_matrix(scores, "scores")
    sources = list(scores.index)
    grp = _groups(groups, list(scores.index) + [c for c in scores.columns if c not in scores.index])
    rows = []
    for target in scores.columns:
        pool = _pool(target, sources, pools)
        col = scores.loc[pool, target].astype(float)
        col = col[np.isfinite(col.to_numpy())]
        chosen = col.idxmax() if len(col) else None
        rows.append({"target": target, "chosen": chosen, "score": float(col.max()) if len(col) else math.nan,
                     "n_candidates": len(pool), "target_group": grp.get(target, ""),
                     "chosen_group": grp.get(chosen, "") if chosen is not None else None})
    return pd.DataFrame(rows)


# --- concentration --------------------------------------------------------------------------------------

def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 = all equal, (n−1)/n = all on one item.

    Examples
    --------
    >>> gini([5, 5, 5, 5]), round(gini([20, 0, 0, 0]), 2)
    (0.0, 0.75)
    """
    x = np.sort(np.asarray(counts, dtype=float))
    if x.ndim != 1 or len(x) == 0 or np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("gini needs a non-empty 1-d array of finite non-negative counts")
    if x.sum() == 0:
        return 0.0
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def normalised_entropy(counts: Sequence[float] | np.ndarray) -> float:
    """Shannon entropy of the choice distribution divided by log(n items): 1 = uniform, 0 = one item."""
    x = np.asarray(counts, dtype=float)
    if x.ndim != 1 or len(x) == 0 or np.any(x < 0):
        raise ValueError("normalised_entropy needs a non-empty 1-d array of non-negative counts")
    if len(x) == 1 or x.sum() == 0:
        return 0.0 if x.sum() else math.nan
    p = x[x > 0] / x.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(x)))


def concentration(counts: pd.Series | Sequence[float]) -> dict[str, float]:
    """Gini, normalised entropy, number of distinct picks and the top item's share of all picks."""
    x = np.asarray(counts, dtype=float)
    total = x.sum()
    return {"gini": gini(x), "normalised_entropy": normalised_entropy(x), "n_items": int(len(x)),
            "n_chosen_items": int((x > 0).sum()), "top_share": float(x.max() / total) if total else math.nan}


def choice_counts(choices: pd.DataFrame, sources: Sequence[str] | None = None,
                  groups: Mapping[str, str] | pd.Series | None = None) -> dict[str, pd.DataFrame]:
    """Hubness: how often each source, and each domain group, is chosen.

    Parameters
    ----------
    choices : DataFrame from :func:`chosen_sources`
    sources : list of str, optional
        Every source that could have been chosen (so never-chosen sources count as 0). Defaults to the
        sources that were chosen.
    groups : mapping name → group, optional

    Returns
    -------
    dict with ``"source"`` (source, group, n_chosen, share) and ``"group"`` (group, n_sources,
    n_chosen, share, expected_share = the group's share of sources, ratio = share / expected_share).
    """
    picked = choices["chosen"].dropna()
    sources = list(sources) if sources is not None else sorted(picked.unique())
    grp = _groups(groups, sources)
    n = picked.value_counts().reindex(sources, fill_value=0)
    total = max(int(n.sum()), 1)
    by_source = pd.DataFrame({"source": sources, "group": [grp.get(s, "") for s in sources],
                              "n_chosen": n.to_numpy(), "share": n.to_numpy() / total})
    by_source = by_source.sort_values(["n_chosen", "source"], ascending=[False, True]).reset_index(drop=True)
    by_group = by_source.groupby("group", sort=True).agg(n_sources=("source", "size"),
                                                         n_chosen=("n_chosen", "sum")).reset_index()
    by_group["share"] = by_group["n_chosen"] / total
    by_group["expected_share"] = by_group["n_sources"] / len(sources)
    by_group["ratio"] = by_group["share"] / by_group["expected_share"]
    return {"source": by_source, "group": by_group.sort_values("n_chosen", ascending=False).reset_index(drop=True)}


def disagreement(choices_a: pd.DataFrame, choices_b: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Share of targets where two methods choose different sources, and those targets.

    Typically ``choices_a`` is FisherSketch ρ_F and ``choices_b`` activation-only ρ_h.
    """
    merged = choices_a[["target", "chosen", "target_group"]].merge(
        choices_b[["target", "chosen"]], on="target", suffixes=("_a", "_b"), how="inner")
    if merged.empty:
        raise ValueError("the two choice tables share no target; compute them on the same tasks")
    differs = merged["chosen_a"] != merged["chosen_b"]
    return float(differs.mean()), merged[differs].reset_index(drop=True)


# --- accuracy against ground truth -------------------------------------------------------------------

def accuracy_by_group(choices: pd.DataFrame, gains: pd.DataFrame, pools: Mapping[str, Sequence[str]] | None = None,
                      groups: Mapping[str, str] | pd.Series | None = None) -> pd.DataFrame:
    """Top-1 accuracy, % of oracle, normalised gain and regret of the choices, per target group.

    For each target, over its pool (the target excluded): best = argmax gain; top-1 = chosen is best;
    % of oracle = g(chosen)/g(best) (only where g(best) > 0); normalised gain =
    (g(chosen) − g(min)) / (g(best) − g(min)); regret = g(best) − g(chosen). A final row ``"(all)"``
    aggregates every target. ``n_oracle_defined`` counts the targets where % of oracle is defined.
    """
    gains = _check_matrix(gains, "gains")
    per_target = []
    for row in choices.itertuples(index=False):
        t, c = row.target, row.chosen
        if t not in gains.columns or pd.isna(c):
            continue
        pool = [s for s in _pool(t, list(gains.index), pools) if np.isfinite(gains.at[s, t])]
        if c not in pool or not pool:
            raise ValueError(f"the choice {c!r} for target {t!r} has no ground-truth gain in its pool; "
                             "compute the gains for every (source, target) pair in the pools")
        g = gains.loc[pool, t].astype(float)
        best, worst, got = g.max(), g.min(), float(g[c])
        per_target.append({"target": t, "group": row.target_group if groups is None else
                           _groups(groups, [t]).get(t, ""), "top1": float(got == best),
                           "pct_oracle": got / best if best > 0 else math.nan,
                           "normalised_gain": (got - worst) / (best - worst) if best > worst else 1.0,
                           "regret": best - got})
    if not per_target:
        raise ValueError("no target of the choices has ground-truth gains; check the gain matrix columns")
    df = pd.DataFrame(per_target)

    def summarise(part: pd.DataFrame) -> pd.Series:
        return pd.Series({"n_targets": len(part), "top1": part["top1"].mean(),
                          "pct_oracle": part["pct_oracle"].mean(),
                          "n_oracle_defined": int(part["pct_oracle"].notna().sum()),
                          "normalised_gain": part["normalised_gain"].mean(), "regret": part["regret"].mean()})

    out = [summarise(part).rename(g) for g, part in df.groupby("group", sort=True)]
    out.append(summarise(df).rename("(all)"))
    res = pd.DataFrame(out)
    res.index.name = "group"
    res["n_targets"] = res["n_targets"].astype(int)
    res["n_oracle_defined"] = res["n_oracle_defined"].astype(int)
    return res.reset_index()


# --- everything at once -----------------------------------------------------------------------------------

@dataclasses.dataclass
class AuditReport:
    """The audit of several selection methods on the same tasks.

    Attributes
    ----------
    choices : dict method → DataFrame (:func:`chosen_sources`)
    hubness : dict method → {"source": DataFrame, "group": DataFrame} (:func:`choice_counts`)
    concentration : DataFrame, one row per method: gini, normalised_entropy, n_items, n_chosen_items, top_share
    disagreement : float or None — share of targets where ``reference`` and ``baseline`` differ
    disagreeing_targets : DataFrame or None
    accuracy : dict method → DataFrame (:func:`accuracy_by_group`), only when gains were given
    """

    choices: dict[str, pd.DataFrame]
    hubness: dict[str, dict[str, pd.DataFrame]]
    concentration: pd.DataFrame
    disagreement: float | None = None
    disagreeing_targets: pd.DataFrame | None = None
    accuracy: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)

    def accuracy_table(self) -> pd.DataFrame:
        """Long table (method, group, n_targets, top1, pct_oracle, ...) for plotting."""
        if not self.accuracy:
            return pd.DataFrame()
        return pd.concat([df.assign(method=m) for m, df in self.accuracy.items()], ignore_index=True)


def audit(scores: Mapping[str, pd.DataFrame], groups: Mapping[str, str] | pd.Series | None = None,
          gains: pd.DataFrame | None = None, pools: Mapping[str, Sequence[str]] | None = None,
          reference: str = "joint", baseline: str = "activation") -> AuditReport:
    """Audit several methods' choices (one score matrix per method) on the same targets.

    Parameters
    ----------
    scores : dict method → score matrix (sources × targets)
    groups : mapping name → domain group, optional
    gains : ground-truth gain matrix (sources × targets), optional
    pools : mapping target → candidate sources, optional
    reference, baseline : methods compared by the disagreement rate (default ρ_F vs ρ_h)

    Examples
    --------
    >>> rep = audit({"joint": s, "activation": s.T})   # doctest: +SKIP
    >>> rep.concentration                                 # doctest: +SKIP
    """
    if not scores:
        raise ValueError("scores is empty; pass at least one method's score matrix")
    choices, hub, conc, acc = {}, {}, [], {}
    for method, mat in scores.items():
        mat = _check_matrix(mat, f"scores[{method!r}]")
        ch = chosen_sources(mat, pools=pools, groups=groups)
        choices[method] = ch
        sources = list(mat.index)
        hub[method] = choice_counts(ch, sources=sources, groups=groups)
        conc.append({"method": method, **concentration(hub[method]["source"]["n_chosen"])})
        if gains is not None:
            acc[method] = accuracy_by_group(ch, gains, pools=pools, groups=groups)
    rate, diff = None, None
    if reference in choices and baseline in choices:
        rate, diff = disagreement(choices[reference], choices[baseline])
    return AuditReport(choices=choices, hubness=hub, concentration=pd.DataFrame(conc), disagreement=rate,
                       disagreeing_targets=diff, accuracy=acc)


def score_matrices_from_store(store: Any, methods: Sequence[str] = ("joint", "activation", "error", "kronecker"),
                              form: str = "U", **filters: Any) -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Score matrices (ρ between every pair of stored, compatible tasks) and the name → group map.

    Uses the same alignments as :func:`fishersketch_core.store.rank_sources` (stored full means and
    self-norms). Raises ``IncompatibleSignatures`` if the filters select mixed settings.
    """
    if form not in ("U", "V"):
        raise ValueError(f"form must be 'U' or 'V', got {form!r}")
    bad = [m for m in methods if m not in METHOD_LABELS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {list(METHOD_LABELS)}")
    meta, _ = store.matrix("joint", **filters)
    if meta["name"].duplicated().any():
        raise ValueError("task names repeat within the selection; filter by model/method/m/seed so that "
                         "names identify tasks")
    names = meta["name"].tolist()
    rho = {}
    for fam in ("joint", "activation", "error"):
        _, x = store.matrix(fam, ids=meta["id"].tolist())
        x = x.astype(np.float64)
        n = meta[f"self_{form.lower()}_{fam}"].to_numpy()
        rho[fam] = (x @ x.T) / np.sqrt(np.outer(n, n))
    rho["kronecker"] = rho["activation"] * rho["error"]
    mats = {m: pd.DataFrame(rho[m], index=names, columns=names) for m in methods}
    return mats, pd.Series(meta["group"].to_numpy(), index=names, dtype=object)


def audit_store(store: Any, gains: pd.DataFrame | None = None, pools: Mapping[str, Sequence[str]] | None = None,
                methods: Sequence[str] = ("joint", "activation", "error", "kronecker"), form: str = "U",
                **filters: Any) -> AuditReport:
    """:func:`audit` of the stored tasks (one compatible selection) under the given methods."""
    mats, groups = score_matrices_from_store(store, methods=methods, form=form, **filters)
    return audit(mats, groups=groups, gains=gains, pools=pools)
