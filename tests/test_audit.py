"""Tests of the selection-bias audit (fishersketch_core.audit)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fishersketch_core import audit as A
from fishersketch_core.store import SignatureStore, TaskRecord, rank_sources

from test_store import M, make_sig

NAMES = list("abcdef")
GROUPS = pd.Series({"a": "G1", "b": "G1", "c": "G1", "d": "G2", "e": "G2", "f": "G2"})


def hub_scores() -> pd.DataFrame:
    """Source 'a' is the best-scoring source for every other target (a hub)."""
    rng = np.random.default_rng(0)
    s = pd.DataFrame(rng.uniform(0, 0.5, (6, 6)), index=NAMES, columns=NAMES)
    s.loc["a"] = 0.9
    s.loc["b", "a"] = 0.95  # for target a (a excluded), b wins
    return s


def test_chosen_sources_excludes_self_and_respects_pools():
    s = hub_scores()
    ch = A.chosen_sources(s, groups=GROUPS)
    assert ch["chosen"].tolist() == ["b", "a", "a", "a", "a", "a"]
    assert ch.loc[0, "target_group"] == "G1" and ch.loc[3, "chosen_group"] == "G1"
    pools = {t: [n for n in NAMES if n not in ("a", t)] for t in NAMES}
    ch = A.chosen_sources(s, pools=pools)
    assert "a" not in ch["chosen"].tolist() and (ch["n_candidates"] == [5, 4, 4, 4, 4, 4]).all()
    with pytest.raises(ValueError, match="no candidate list for target"):
        A.chosen_sources(s, pools={"a": ["b"]})
    with pytest.raises(ValueError, match="unknown sources"):
        A.chosen_sources(s, pools={t: ["zz"] for t in NAMES})


def test_nan_scores_never_win_and_ties_go_first():
    s = pd.DataFrame([[np.nan, 1.0, 0.5], [np.nan, np.nan, 0.5], [np.nan, 1.0, np.nan]],
                     index=list("xyz"), columns=list("xyz"))
    ch = A.chosen_sources(s)
    assert pd.isna(ch["chosen"].iloc[0]) and ch["chosen"].tolist()[1:] == ["x", "x"]
    assert A.choice_counts(ch)["source"]["n_chosen"].tolist() == [2]


def test_gini_and_entropy():
    assert A.gini([3, 3, 3]) == 0.0
    assert A.gini([9, 0, 0]) == pytest.approx(2 / 3)
    assert A.normalised_entropy([3, 3, 3]) == pytest.approx(1.0)
    assert A.normalised_entropy([9, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        A.gini([-1, 2])
    c = A.concentration([5, 0, 0, 1])
    assert c["n_items"] == 4 and c["n_chosen_items"] == 2 and c["top_share"] == pytest.approx(5 / 6)


def test_hubness_counts_sources_and_groups():
    ch = A.chosen_sources(hub_scores(), groups=GROUPS)
    counts = A.choice_counts(ch, sources=NAMES, groups=GROUPS)
    src = counts["source"].set_index("source")
    assert src.loc["a", "n_chosen"] == 5 and src.loc["b", "n_chosen"] == 1 and src.loc["f", "n_chosen"] == 0
    grp = counts["group"].set_index("group")
    assert grp.loc["G1", "n_chosen"] == 6 and grp.loc["G2", "n_chosen"] == 0
    assert grp.loc["G1", "ratio"] == pytest.approx(2.0)  # all picks from half the sources
    assert A.concentration(src["n_chosen"])["gini"] > 0.6


def test_disagreement_rate():
    s = hub_scores()
    a = A.chosen_sources(s)
    b = A.chosen_sources(s.rank(axis=0, ascending=False))  # an inverted method
    rate, diff = A.disagreement(a, b)
    assert rate == pytest.approx(len(diff) / 6) and rate > 0
    assert A.disagreement(a, a)[0] == 0.0


def test_accuracy_by_group_against_gains():
    s = hub_scores()
    gains = pd.DataFrame(0.1, index=NAMES, columns=NAMES)
    gains.loc["a", ["b", "c"]] = 1.0           # the hub is right for G1 targets ...
    gains.loc["e", ["d", "f"]] = 2.0           # ... and wrong for G2, where e is best
    gains.loc["d", "e"] = 3.0
    gains.loc["c", "a"] = -0.5                 # a's best source is b (0.1) → pct defined
    ch = A.chosen_sources(s, groups=GROUPS)
    acc = A.accuracy_by_group(ch, gains, groups=GROUPS).set_index("group")
    assert acc.loc["G1", "top1"] == pytest.approx(1.0) and acc.loc["G2", "top1"] == 0.0
    assert acc.loc["G2", "pct_oracle"] == pytest.approx(np.mean([0.1 / 2, 0.1 / 3, 0.1 / 2]))
    assert acc.loc["G1", "normalised_gain"] == pytest.approx(1.0)
    assert acc.loc["(all)", "n_targets"] == 6 and acc.loc["(all)", "top1"] == pytest.approx(0.5)
    assert acc.loc["G2", "regret"] == pytest.approx(np.mean([1.9, 2.9, 1.9]))
    neg = gains.copy()
    neg.loc[:, "d"] = -1.0
    acc = A.accuracy_by_group(ch, neg, groups=GROUPS).set_index("group")
    assert acc.loc["G2", "n_oracle_defined"] == 2  # g(best) ≤ 0 for d → % of oracle undefined there


def test_random_pools_fixed_and_exclude_target():
    names = [f"t{i}" for i in range(30)]
    p1, p2 = A.random_pools(names, size=24, seed=3), A.random_pools(names, size=24, seed=3)
    assert p1 == p2 and all(t not in p and len(p) == 24 for t, p in p1.items())
    with pytest.raises(ValueError, match="lower size"):
        A.random_pools(names[:5], size=24)


def test_audit_on_a_store_matches_rank_sources(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((2, 3, M))
    recs = [TaskRecord(make_sig(f"t{i}", rng, base=centres[i % 2] + 0.7 * rng.standard_normal((3, M))),
                       group=f"G{i % 2}") for i in range(10)]
    with SignatureStore(tmp_path / "s.duckdb") as store:
        store.add_many(recs)
        store.add(make_sig("other-method", rng, method="dense"))
        with pytest.raises(Exception, match="mix"):
            A.score_matrices_from_store(store)
        gains = pd.DataFrame(rng.uniform(0.1, 1, (10, 10)), index=[r.task_name for r in recs],
                             columns=[r.task_name for r in recs])
        rep = A.audit_store(store, gains=gains, method="fast")
        for method in ("joint", "activation", "error", "kronecker"):
            ch = rep.choices[method].set_index("target")
            for t in ("t0", "t3", "t8"):
                top = rank_sources(store, t, k=1, by=method, method="fast", with_se=False)
                assert ch.loc[t, "chosen"] == top["name"].iloc[0]
                assert ch.loc[t, "score"] == pytest.approx(top["score"].iloc[0], rel=1e-5)
        assert set(rep.concentration["method"]) == {"joint", "activation", "error", "kronecker"}
        assert 0 <= rep.disagreement <= 1
        long = rep.accuracy_table()
        assert set(long["group"]) == {"G0", "G1", "(all)"} and len(long) == 12
        assert all(math.isfinite(v) for v in long["top1"])
