"""Benchmark package: metrics against hand-computed examples, ground truth against float64, baselines against
the exact oracle, the checkpointed job, the verbalizer family, and the `benchmark --quick` command end to end."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fishersketch_core.bench import baselines as B
from fishersketch_core.bench import groundtruth as G
from fishersketch_core.bench import metrics as M


# --- metrics ---------------------------------------------------------------------------------------------------

def test_pool_metrics_hand_example():
    m = M.pool_metrics([0.9, 0.5, 0.1, 0.3], [1.0, 2.0, -1.0, 0.5], names=list("abcd"))
    assert m["chosen"] == "a" and m["best"] == "b" and m["n_tied"] == 1
    assert m["top1"] == 0.0
    assert m["pct_oracle"] == pytest.approx(0.5)
    assert m["normalised_gain"] == pytest.approx((1.0 - (-1.0)) / (2.0 - (-1.0)))
    assert m["regret"] == pytest.approx(1.0)
    # ranks of scores (4,3,1,2) against ranks of gains (3,4,1,2): d² = 1+1+0+0 → ρ = 1 − 6·2/(4·15) = 0.8
    assert m["spearman"] == pytest.approx(0.8)


def test_pool_metrics_correct_pick_and_negative_gains():
    m = M.pool_metrics([0.1, 0.7], [-0.2, -0.1])
    assert m["top1"] == 1.0 and m["regret"] == 0.0 and m["normalised_gain"] == 1.0
    assert math.isnan(m["pct_oracle"])  # best gain ≤ 0: % of oracle undefined


def test_pool_metrics_ties_are_chance_in_expectation():
    m = M.pool_metrics([1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 2.0, 2.0])
    assert m["n_tied"] == 4
    assert m["top1"] == pytest.approx(0.25)
    assert m["gain_chosen"] == pytest.approx(2.0)
    assert m["pct_oracle"] == pytest.approx(0.5)
    assert m["spearman"] == 0.0  # constant scores carry no ranking
    m2 = M.pool_metrics([2.0, 2.0, 0.0], [1.0, 3.0, 0.0])  # two tied at the top
    assert m2["top1"] == pytest.approx(0.5) and m2["gain_chosen"] == pytest.approx(2.0)


def test_pool_metrics_nan_scores_never_win():
    m = M.pool_metrics([np.nan, 0.2, 0.1], [5.0, 1.0, 0.0], names=list("xyz"))
    assert m["chosen"] == "y" and m["top1"] == 0.0


def test_pool_metrics_rejects_bad_input():
    with pytest.raises(ValueError):
        M.pool_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        M.pool_metrics([1.0, 2.0], [1.0, np.nan])


def test_evaluate_method_and_summary():
    names = ["a", "b", "c"]
    gains = pd.DataFrame([[0.5, 0.3, 0.0], [0.2, 0.6, 0.4], [0.1, 0.1, 0.9]], index=names, columns=names)
    scores = pd.DataFrame([[1, 0.9, 0.1], [0.9, 1, 0.8], [0.1, 0.2, 1]], index=names, columns=names, dtype=float)
    pools = {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    df = M.evaluate_method(scores, gains, pools, groups={"a": "g1", "b": "g1", "c": "g2"})
    # a: picks b (0.9) gains b→a 0.2 vs c→a 0.1: right. b: picks a (0.9): 0.3 vs 0.1: right. c: picks b (0.8):
    # 0.4 vs 0.0: right
    assert df["top1"].tolist() == [1.0, 1.0, 1.0]
    assert df.set_index("target").loc["c", "chosen"] == "b"
    s = M.summary_table(df.assign(method="x"), n_boot=100)
    assert set(s["target_group"]) == {"(all)", "g1", "g2"}
    assert s.loc[s["target_group"] == "(all)", "top1"].item() == 1.0


def test_evaluate_method_needs_every_pool_gain():
    names = ["a", "b", "c"]
    gains = pd.DataFrame(np.nan, index=names, columns=names)
    gains.loc["b", "a"] = 1.0
    with pytest.raises(ValueError, match="no gain for pool sources"):
        M.evaluate_method(gains.fillna(0), gains, {"a": ["b", "c"]})


def test_bootstrap_ci():
    assert M.bootstrap_ci([2.0, 2.0, 2.0])[:3] == (2.0, 2.0, 2.0)
    v = np.random.default_rng(0).normal(1.0, 1.0, 400)
    mean, lo, hi, n = M.bootstrap_ci(v, n_boot=1000)
    assert n == 400 and lo < mean < hi
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)  # ≈ 2·1.96·σ/√n
    assert M.bootstrap_ci([np.nan, 1.0, 3.0])[0] == 2.0  # NaN left out
    assert M.bootstrap_ci([])[3] == 0


def test_oracle_share():
    v, lo, hi, n = M.oracle_share([1.0, -0.01, 0.5, 0.3], [2.0, 0.0001, 0.5, -0.2])
    assert n == 3 and v == pytest.approx((1.0 - 0.01 + 0.5) / (2.0 + 0.0001 + 0.5))
    assert lo <= v <= hi
    assert math.isnan(M.oracle_share([1.0], [-1.0])[0])
    df = pd.DataFrame({"method": "x", "target": ["a", "b"], "top1": [1.0, 0.0], "pct_oracle": [1.0, 0.5],
                       "normalised_gain": [1.0, 0.5], "regret": [0.0, 1.0], "spearman": [0.1, 0.2],
                       "gain_chosen": [2.0, 1.0], "gain_best": [2.0, 2.0]})
    s = M.summarise(df, n_boot=50)
    assert s["oracle_share"].item() == pytest.approx(0.75) and s["pct_oracle_median"].item() == pytest.approx(0.75)


def test_paired_difference_and_exact_vs_sketch():
    df = pd.DataFrame({"method": ["x", "x", "y", "y"], "target": ["t1", "t2", "t1", "t2"], "top1": [1.0, 1.0, 0.0, 1.0]})
    assert M.paired_difference(df, "x", "y", "top1")[0] == 0.5
    names = ["a", "b", "c"]
    ex = pd.DataFrame([[1, .5, .2], [.5, 1, .3], [.2, .3, 1]], index=names, columns=names, dtype=float)
    sk = ex + 0.01
    sk.loc["c", "a"] = 0.9  # flips a's top pick
    r = M.exact_vs_sketch(sk, ex, {"a": ["b", "c"], "b": ["a", "c"]})
    assert r["n_pairs"] == 4 and r["max"] == pytest.approx(0.7)
    assert r["top1_agreement"] == 0.5


def test_ground_truth_noise():
    rng = np.random.default_rng(0)
    before = {"t": rng.normal(3.0, 1.0, 400)}
    clear = {("a", "t"): before["t"] - 1.0, ("b", "t"): before["t"] - 0.1 + rng.normal(0, 0.01, 400)}
    r = M.ground_truth_noise(before, clear, {"t": ["a", "b"]}, n_boot=100)
    assert r["stability"] == 1.0 and r["separated"] == 1.0
    noisy = {("a", "t"): before["t"] - 0.1 + rng.normal(0, 1, 400), ("b", "t"): before["t"] - 0.1 + rng.normal(0, 1, 400)}
    sc = pd.DataFrame({"t": [1.0, 0.0]}, index=["a", "b"])
    tie = pd.DataFrame({"t": [1.0, 1.0]}, index=["a", "b"])
    r = M.ground_truth_noise(before, noisy, {"t": ["a", "b"]}, scores={"x": sc, "tie": tie}, n_boot=400)
    assert 0.2 < r["stability"] < 0.95 and r["separated"] == 0.0
    assert r["resampled_top1"]["tie"] == pytest.approx(0.5)
    assert 0.0 < r["resampled_top1"]["x"] < 1.0


# --- ground truth -------------------------------------------------------------------------------------------

def _tiny(seed=0, K=30, d=8, n=60):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, d)).astype(np.float32)
    h = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, K, size=n)
    return W, h, y


def _nll64(W, h, y):
    z = h.astype(np.float64) @ W.astype(np.float64).T
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    return float((lse - z[np.arange(len(y)), y]).mean())


def _grad64(W, h, y):
    z = h.astype(np.float64) @ W.astype(np.float64).T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p.T @ h.astype(np.float64) / len(y)


def test_loss_and_grad_match_float64():
    W, h, y = _tiny()
    L, g = G.loss_and_grad(torch.from_numpy(W), h, y, chunk=7)
    assert L == pytest.approx(_nll64(W, h, y), rel=1e-5)
    np.testing.assert_allclose(g.numpy(), _grad64(W, h, y), rtol=1e-4, atol=1e-6)
    assert G.mean_nll(torch.from_numpy(W), h, y, chunk=11) == pytest.approx(_nll64(W, h, y), rel=1e-5)


def test_gain_matches_direct_float64_gd():
    W, h, y = _tiny(1)
    _, he, ye = _tiny(2)
    lr, steps = 0.3, 4
    W64 = W.astype(np.float64)
    for _ in range(steps):
        W64 = W64 - lr * _grad64(W64, h, y)
    gain64 = _nll64(W, he, ye) - _nll64(W64, he, ye)
    rec = G.Recipe(optimizer="gd", steps=steps, lr0=lr, chunk=16)
    Wa, info = G.adapt_head(torch.from_numpy(W), h, y, rec)
    np.testing.assert_allclose(Wa.numpy(), W64, rtol=1e-4, atol=1e-5)
    gain = G.mean_nll(torch.from_numpy(W), he, ye) - G.mean_nll(Wa, he, ye)
    assert gain == pytest.approx(gain64, abs=1e-5)
    assert info["steps"] == steps


def test_armijo_decreases_and_backtracks():
    W, h, y = _tiny(3)
    rec = G.Recipe(steps=5, lr0=1e3, chunk=64)  # absurd first step: must backtrack
    losses = []
    Wa, info = G.adapt_head(torch.from_numpy(W), h, y, rec, on_step=lambda k, Wk, i: losses.append(i["adapt_loss_after"]))
    assert info["backtracks"] > 0 and info["final_lr"] < 1e3
    assert info["steps"] == 5 and len(losses) == 5
    assert all(b < a for a, b in zip([info["adapt_loss_before"]] + losses, losses))
    assert _nll64(Wa.numpy(), h, y) == pytest.approx(info["adapt_loss_after"], rel=1e-5)


def test_adapt_head_leaves_the_pretrained_head_alone():
    W, h, y = _tiny(4)
    W0 = torch.from_numpy(W.copy())
    G.adapt_head(W0, h, y, G.Recipe(steps=2, lr0=0.5))
    np.testing.assert_array_equal(W0.numpy(), W)


def test_subsample_index_is_fixed_and_sorted():
    a = G.subsample_index(100, 10, "dom", "eval", 0)
    assert np.array_equal(a, G.subsample_index(100, 10, "dom", "eval", 0))
    assert np.all(np.diff(a) > 0) and len(a) == 10
    assert not np.array_equal(a, G.subsample_index(100, 10, "dom", "adapt", 0))
    assert np.array_equal(G.subsample_index(5, 10, "dom", "eval"), np.arange(5))


def test_needed_pairs():
    need = G.needed_pairs({"a": ["b", "c"], "b": ["c"], "c": ["a"]})
    assert need == {"a": ["a", "c"], "b": ["a", "b"], "c": ["a", "b", "c"]}


def test_recipe_key_and_validation():
    assert G.Recipe().key() == G.Recipe(chunk=64).key()  # chunk only changes memory
    assert G.Recipe().key() != G.Recipe(steps=3).key()
    with pytest.raises(ValueError):
        G.Recipe(optimizer="adam")
    assert "Armijo" in G.Recipe().describe()


def test_compute_gains_checkpoint_resume(tmp_path):
    W, _, _ = _tiny(5)
    data = {n: _tiny(10 + i)[1:] for i, n in enumerate("abc")}
    needed = G.needed_pairs({"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]})
    rec = G.Recipe(steps=2, lr0=0.1, chunk=32)
    full = G.compute_gains(torch.from_numpy(W), data.__getitem__, data.__getitem__, needed, rec)
    assert len(full) == 9
    ck = tmp_path / "g.csv"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 1  # stop after the first source

    part = G.compute_gains(torch.from_numpy(W), data.__getitem__, data.__getitem__, needed, rec, checkpoint=ck,
                           should_stop=stop, positions_dir=tmp_path / "pos")
    assert 0 < len(part) < 9 and ck.exists()
    resumed = G.compute_gains(torch.from_numpy(W), data.__getitem__, data.__getitem__, needed, rec, checkpoint=ck,
                              positions_dir=tmp_path / "pos")
    before, after = G.load_positions(tmp_path / "pos", "abc")
    assert len(after) == 9
    r = resumed.set_index(["source", "target"])
    assert float(before["b"].astype(np.float64).mean() - after[("a", "b")].astype(np.float64).mean()) == \
        pytest.approx(r.loc[("a", "b"), "gain"], abs=1e-6)
    a = full.set_index(["source", "target"])["gain"].sort_index()
    b = resumed.set_index(["source", "target"])["gain"].sort_index()
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6)
    mat = G.gain_matrix(resumed, list("abc"))
    assert mat.shape == (3, 3) and np.isfinite(mat.to_numpy()).all()


# --- baselines against the exact oracle ---------------------------------------------------------------------

def _probes(K=40, d=6, n=50, T=4, seed=0):
    rng = np.random.default_rng(seed)
    W = torch.from_numpy(rng.normal(size=(K, d)).astype(np.float32))
    probes = {}
    for t in range(T):
        h = (rng.normal(size=(n, d)) + rng.normal(size=d)).astype(np.float32)
        y = rng.integers(0, K // (t + 1), size=n)
        probes[f"t{t}"] = B.TaskProbe(h, y, np.arange(n) // 5)
    return W, probes


def _errors(W, p):
    z = torch.from_numpy(np.asarray(p.h, np.float64)) @ W.double().T
    e = torch.softmax(z, 1)
    e[torch.arange(len(p)), torch.from_numpy(p.targets)] -= 1
    return e.numpy()


def test_activation_scores_match_exact_oracle():
    from fishersketch_core import exact

    W, probes = _probes()
    names = list(probes)
    sc = B.activation_scores(probes, names)
    e = {t: _errors(W, probes[t]) for t in names}
    al = exact.alignment(probes["t0"].h.astype(np.float64), e["t0"], probes["t2"].h.astype(np.float64), e["t2"],
                         form="U", with_se=False)
    assert sc["rho_h"].loc["t0", "t2"] == pytest.approx(al.activation.value, rel=1e-6)
    # centred: cosine of covariance matrices
    c = [np.cov(probes[t].h.astype(np.float64).T, bias=True).ravel() for t in ("t0", "t2")]
    assert sc["rho_h_centred"].loc["t0", "t2"] == pytest.approx(c[0] @ c[1] / np.linalg.norm(c[0]) / np.linalg.norm(c[1]))


def test_error_statistics_and_exact_from_grams_match_oracle(tmp_path):
    from fishersketch_core import exact

    W, probes = _probes()
    names = list(probes)
    idx = {t: G.subsample_index(len(probes[t]), 30, t, "x") for t in names}
    st = B.error_statistics(W, probes, names, exact_index=idx, vocab_chunk=7, checkpoint=tmp_path / "ck.npz",
                            checkpoint_seconds=0.0)
    e = {t: _errors(W, probes[t]) for t in names}
    h = {t: probes[t].h.astype(np.float64) for t in names}
    mg = {t: e[t].T @ h[t] / len(h[t]) for t in names}
    df = {t: (e[t] ** 2).T @ (h[t] ** 2) / len(h[t]) for t in names}
    np.testing.assert_allclose(st["gram_mean_gradient"][0, 3], (mg["t0"] * mg["t3"]).sum(), rtol=1e-4)
    np.testing.assert_allclose(st["gram_diag_fisher"][1, 2], (df["t1"] * df["t2"]).sum(), rtol=1e-4)
    ex = B.exact_from_grams(probes, names, idx, st["gram_error"], st["exact_offsets"])
    al = exact.alignment(h["t1"][idx["t1"]], e["t1"][idx["t1"]], h["t3"][idx["t3"]], e["t3"][idx["t3"]], form="U",
                         with_se=False)
    assert ex["exact_rho_F"].loc["t1", "t3"] == pytest.approx(al.joint.value, rel=1e-4)
    assert ex["exact_rho_e"].loc["t1", "t3"] == pytest.approx(al.error.value, rel=1e-4)
    assert ex["exact_rho_h"].loc["t1", "t3"] == pytest.approx(al.activation.value, rel=1e-4)
    from fishersketch_core.sketch import route_halves

    hv = {t: route_halves(probes[t].sequence_ids[idx[t]]) for t in ("t0", "t2")}
    sp = exact.alignment(h["t0"][idx["t0"]], e["t0"][idx["t0"]], h["t2"][idx["t2"]], e["t2"][idx["t2"]],
                         form="split", halves_s=hv["t0"], halves_t=hv["t2"], with_se=False)
    assert ex["exact_rho_F_split"].loc["t0", "t2"] == pytest.approx(sp.joint.value, rel=1e-4)
    assert not (tmp_path / "ck.npz").exists()  # removed when the pass completes


def test_cka_unigram_random():
    W, probes = _probes()
    names = list(probes)
    same = {"x": probes["t0"], "y": B.TaskProbe(probes["t0"].h * 3.0, probes["t0"].targets, probes["t0"].sequence_ids)}
    assert B.cka_scores(same, ["x", "y"], positions=40).loc["x", "y"] == pytest.approx(1.0)  # scale invariant
    u = B.unigram_scores(probes, names, 40)
    assert u.loc["t0", "t0"] == pytest.approx(1.0) and (u.to_numpy() >= 0).all()
    r = B.random_scores(names, seed=1)
    assert r.equals(B.random_scores(names, seed=1))


# --- verbalizer family --------------------------------------------------------------------------------------

def test_verbalizer_family_structure():
    from fishersketch_core.bench import verbalizer as V

    fam = V.build_family({"probe": 4, "adapt": 5, "eval": 3})
    assert len(fam["probe"]["texts"]) == 4 * len(V.CATEGORIES)
    assert set(fam["eval"]["labels"]) == set(V.CATEGORIES.values())
    assert not set(fam["probe"]["texts"]) & set(fam["eval"]["texts"])
    for voc in V.VOCABULARIES.values():
        assert set(voc) == set(V.CATEGORIES.values())
    assert len(V.VOCABULARIES) >= 6


def test_verbalizer_prepare_on_tiny_model(tmp_path):
    from lm_helpers import tiny_lm

    from fishersketch_core.bench import verbalizer as V

    lm = tiny_lm("llama")
    vocs = {"v1": {"animal": "a", "plant": "b"}, "v2": {"animal": "b", "plant": "a"}, "v3": {"animal": "c", "plant": "b"}}
    fam = {"probe": {"texts": ["x y", "z w", "q", "rr"], "labels": ["animal", "plant", "plant", "animal"]},
           "adapt": {"texts": ["aa", "bb"], "labels": ["animal", "plant"]},
           "eval": {"texts": ["cc", "dd", "ee"], "labels": ["plant", "animal", "plant"]}}
    with pytest.raises(ValueError, match="tokens"):
        V.check_single_token(lm.tokenizer, vocs, prefix=" ")
    prep = V.prepare_family(lm, tmp_path, vocabularies=vocs, family=fam, prefix="", m=64)
    assert prep["tasks"] == ["v1", "v2", "v3"]
    acts = [prep["signatures"][v].activation_half for v in prep["tasks"]]
    assert all(np.array_equal(acts[0], a) for a in acts[1:])  # identical prompts → identical activations
    assert not np.array_equal(prep["signatures"]["v1"].error_half, prep["signatures"]["v2"].error_half)
    y1, y2 = V.task_targets(prep, "v1", "eval"), V.task_targets(prep, "v2", "eval")
    assert len(y1) == 3 and (y1 != y2).all()
    again = V.prepare_family(lm, tmp_path, vocabularies=vocs, family=fam, prefix="", m=64)  # reuses the files
    assert np.array_equal(again["splits"]["probe"]["h"], prep["splits"]["probe"]["h"])


# --- the command end to end on synthetic data ----------------------------------------------------------------

MODEL_HASH = "sha256:" + "5e" * 32


def _synthetic(tmp_path, n_domains=7, d=16, K=64, m=256):
    from fishersketch_core.domains import cache_path
    from fishersketch_core.sketch import Sketcher
    from fishersketch_core.store import SignatureStore

    rng = np.random.default_rng(0)
    W = rng.normal(scale=0.5, size=(K, d)).astype(np.float32)
    np.save(tmp_path / "head.npy", W)
    cache = tmp_path / "cache"
    sk = Sketcher(d, K, m=m, seed=0, method="fast")
    with SignatureStore(tmp_path / "s.duckdb") as store:
        for i in range(n_domains):
            mu = rng.normal(size=d)
            probs = rng.dirichlet(np.full(K, 0.3))
            for split, n in (("probe", 240), ("adapt", 200), ("eval", 160)):
                h = (rng.normal(size=(n, d)) + mu).astype(np.float16)
                y = rng.choice(K, size=n, p=probs)
                ids = np.arange(n) // 12
                p = cache_path(cache, MODEL_HASH, f"syn-{i}", split)
                p.parent.mkdir(parents=True, exist_ok=True)
                np.savez(p, h=h, targets=y, sequence_ids=ids, nll=np.zeros(n, np.float32))
                if split == "probe":
                    hh = torch.from_numpy(h.astype(np.float32))
                    st = sk.new_state().update_logits(hh, hh @ torch.from_numpy(W).T, torch.from_numpy(y),
                                                      sequence_ids=ids)
                    sig = st.signature(task_name=f"syn-{i}", model_id="synthetic", model_hash=MODEL_HASH)
                    store.add(sig, name=f"syn-{i}", domain=f"syn-{i}", group=f"g{i % 2}", task_type="corpus")
    return cache


def test_benchmark_quick_end_to_end(tmp_path):
    from fishersketch_core.cli import main

    cache = _synthetic(tmp_path)
    out = tmp_path / "res"
    t0 = time.time()
    rc = main(["benchmark", "--quick", "--store", str(tmp_path / "s.duckdb"), "--cache", str(cache), "--out", str(out),
               "--work", str(tmp_path / "work"), "--head", str(tmp_path / "head.npy"), "--pool-size", "4"])
    assert rc == 0
    assert time.time() - t0 < 60
    gains = pd.read_parquet(out / "gains.parquet")
    assert {"source", "target", "gain", "in_pool", "is_self"} <= set(gains.columns)
    assert gains["is_self"].sum() == 7 and gains["in_pool"].sum() == 7 * 4
    ch = pd.read_parquet(out / "choices.parquet")
    assert {"target", "method", "chosen", "best", "gain_chosen", "top1", "pct_oracle"} <= set(ch.columns)
    assert set(B.METHODS) - {"rho_h_sketch"} <= set(ch["method"])
    assert len(ch) == 7 * ch["method"].nunique()
    # the choice file agrees with the gains file
    g = gains.set_index(["source", "target"])["gain"]
    one = ch[(ch["method"] == "fishersketch") & (ch["n_tied"] == 1)].iloc[0]
    assert one["gain_chosen"] == pytest.approx(g[(one["chosen"], one["target"])])
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["counts"]["evaluated"] == 7 and rec["recipe"]["steps"] == 2
    pools = json.loads((out / "pools.json").read_text())["pools"]
    assert all(len(p) == 4 for p in pools.values())
    assert (out / "gt_noise.csv").exists()
    report = (out / "RESULTS.md").read_text()
    assert "resampled ground truth" in report
    assert "FisherSketch ρ_F" in report and "QUICK MODE" in report and "gains.parquet" in report
    # the app's reader understands the gains file
    from fishersketch_core.views import read_gains

    mat = read_gains(out / "gains.parquet")
    assert mat.shape == (7, 7)
    # rerun: everything resumes from the checkpoint, and the hand-written notes survive
    report = report.replace("(hand-written analysis goes here; kept when the report is regenerated)", "MY NOTES")
    (out / "RESULTS.md").write_text(report)
    assert main(["benchmark", "--quick", "--store", str(tmp_path / "s.duckdb"), "--cache", str(cache), "--out",
                 str(out), "--work", str(tmp_path / "work"), "--head", str(tmp_path / "head.npy"),
                 "--pool-size", "4"]) == 0
    assert "MY NOTES" in (out / "RESULTS.md").read_text()
    assert pd.read_parquet(out / "gains.parquet")["gain"].equals(gains["gain"])


def test_benchmark_uses_the_domains_that_are_ready(tmp_path):
    from fishersketch_core.bench.run import BenchConfig, select_domains

    cache = _synthetic(tmp_path, n_domains=4)
    (cache / MODEL_HASH.replace("sha256:", "")[:16] / "syn-3" / "eval.npz").unlink()  # one not finished
    logs = []
    sel = select_domains(BenchConfig(store=str(tmp_path / "s.duckdb"), cache=str(cache), quick=True), logs.append)
    assert sel["domains"] == ["syn-0", "syn-1", "syn-2"]
    assert "3 cached with all splits" in logs[0] and "3 evaluated" in logs[0]


def test_benchmark_cli_is_registered():
    from fishersketch_core.cli import build_parser

    args = build_parser().parse_args(["benchmark", "--quick", "--out", "x"])
    assert args.quick and callable(args.func)
