"""Unit tests of fishersketch_core.views (the app's non-streamlit helpers)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app_helpers import build_store, synthetic_records

from fishersketch_core import views as V
from fishersketch_core.store import SignatureStore, rank_sources


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("views") / "base.duckdb", n_per_group=3)


def test_views_does_not_import_streamlit():
    import subprocess
    import sys
    code = "import sys, fishersketch_core.views; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_query_param_parsing():
    assert V.parse_int("7", 10, 1, 50) == 7 and V.parse_int(None, 10, 1, 50) == 10
    assert V.parse_int("-3", 10, 1, 50) == 1 and V.parse_int("1e9", 10, 1, 50) == 10
    assert V.parse_choice("pca", ["umap", "pca"], "umap") == "pca"
    assert V.parse_choice("<script>", ["umap", "pca"], "umap") == "umap"
    assert V.parse_list(["b", "x", "a", "b"], ["a", "b"]) == ["b", "a"]


def test_workspace_refuses_base_as_user_store(base):
    with pytest.raises(ValueError, match="never writes into the base store"):
        V.Workspace(base, base)


def test_missing_user_store_does_not_bump_versions(base, tmp_path):
    ws = V.Workspace(base, tmp_path / "later.duckdb")
    v = ws.version
    for _ in range(3):
        ws.refresh()
    assert ws.version == v
    meta, _ = ws.matrix(ws.spaces()["space"].iloc[0])
    # a write creates the user store: the version changes and the new task is seen
    sig = synthetic_records(n_per_group=1, groups=("zeta",))[0]
    ws.add_signature(sig.signature, name="zeta-0", group="zeta")
    assert ws.version != v
    assert "zeta-0" in ws.tasks()["label"].tolist()
    assert len(ws.tasks_in(ws.spaces()["space"].iloc[0])) == len(meta) + 1


def test_full_ranking_agrees_with_sql(base, tmp_path):
    ws = V.Workspace(base, tmp_path / "u.duckdb")
    uid = ws.tasks()["uid"].iloc[4]
    name = ws.row(uid)["name"]
    full = ws.full_ranking(uid, by="activation")
    with SignatureStore(base, read_only=True) as st:
        ref = rank_sources(st, name, k=100, by="activation", with_se=False)
    assert full["label"].tolist() == ref["name"].tolist()
    np.testing.assert_allclose(full["score"], ref["score"], rtol=1e-5)
    top = ws.rank(uid, k=3)
    assert top["label"].tolist() == ref.sort_values("rho_F", ascending=False)["name"].head(3).tolist()
    view = V.ranking_view(ws, uid, k=3, baseline="activation")
    assert len(view.export) == len(ws.tasks()) - 1                      # every candidate in the CSV
    assert view.export["rank_activation"].sort_values().tolist() == list(range(1, len(view.export) + 1))
    assert view.summary["baseline_top1"] == ref["name"].iloc[0]
    shown = view.table
    assert set(top["uid"]) <= set(shown["uid"]) and shown["rho_F"].notna().all()
    # a source in the baseline's top 3 only is shown with its ρ's (from the memoised matrices)
    only_b = set(view.baseline_top["uid"]) - set(top["uid"])
    assert only_b <= set(shown.loc[shown["disagree"], "uid"])


def test_task_map_edge_cases():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        V.task_map(rng.normal(size=(1, 32)), "pca")
    res = V.task_map(rng.normal(size=(2, 32)), "umap")
    assert res.method == "pca" and "UMAP needs at least 3" in res.note and res.coords.shape == (2, 2)
    x = rng.normal(size=(10, 64))
    res = V.task_map(x, "pca")
    assert res.coords.shape == (10, 2)
    # PCA of normalised rows: coordinates reproduce the top-2 principal subspace
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    xc = xn - xn.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(res.coords, axis=0), s[:2], rtol=1e-8)


def test_explain_alignment_sentences():
    dark = V.explain_alignment(0.3, 0.97, 0.32, 0.966)
    assert "activation-dark" in dark and "errors" in dark
    coupled = V.explain_alignment(0.6, 0.8, 0.6, 1.25)
    assert "adds 25%" in coupled
    assert "cannot be split" in V.explain_alignment(-0.1, 0.5, 0.5, -0.4)


def test_compare_rankings_flags_disagreements():
    p = pd.DataFrame({"rank": [1, 2, 3, 4], "uid": list("abcd"), "label": list("abcd")})
    b = pd.DataFrame({"rank": [1, 2, 3, 4], "uid": list("dcba"), "label": list("dcba")})
    table, summary = V.compare_rankings(p, b, k=2)
    assert set(table["uid"]) == set("abcd")
    assert table.set_index("uid")["disagree"].to_dict() == {"a": True, "b": True, "c": True, "d": True}
    assert summary["overlap"] == 0 and not summary["top1_agree"] and summary["spearman"] == pytest.approx(-1.0)


def test_read_gains_long_wide_and_errors(tmp_path):
    long = pd.DataFrame({"source": ["a", "a", "b", "b"], "target": ["b", "c", "a", "c"], "gain": [1.0, 2, 3, 4]})
    long.to_parquet(tmp_path / "g.parquet")
    g = V.read_gains(tmp_path / "g.parquet")
    assert g.loc["a", "c"] == 2.0 and g.loc["b", "a"] == 3.0
    wide = g.reset_index().rename(columns={"index": "source"})
    wide.to_csv(tmp_path / "g.csv", index=False)
    assert V.read_gains(tmp_path / "g.csv").loc["b", "c"] == 4.0
    with pytest.raises(FileNotFoundError):
        V.read_gains(tmp_path / "nope.parquet")
    pd.DataFrame({"source": ["a"], "target": ["b"], "value": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no gain column"):
        V.read_gains(tmp_path / "bad.csv")


def test_compute_job_cancel_and_bad_request(base, tmp_path):
    ws = V.Workspace(base, tmp_path / "user.duckdb")
    job = V.ComputeJob(ws, V.ComputeRequest(name="x", corpus="file", data_path=str(tmp_path / "none.txt")))
    job.start().wait(30)
    assert job.state == "failed" and "Fix" in job.error
    (tmp_path / "t.txt").write_text("hello world\n" * 10)
    job = V.ComputeJob(ws, V.ComputeRequest(name="x", corpus="file", data_path=str(tmp_path / "t.txt"),
                                            model=str(tmp_path / "no-model")))
    job.start().wait(30)
    assert job.state == "failed" and "does not exist" in job.error
    assert not (tmp_path / "user.duckdb").exists()  # nothing written on failure


def test_compute_job_cancelled_before_first_batch(base, tmp_path, monkeypatch):
    from lm_helpers import tiny_lm
    monkeypatch.setattr(V, "load_model_cached", lambda source, device="cpu": tiny_lm())
    (tmp_path / "t.txt").write_text("\n".join(f"line {i} of text" for i in range(50)))
    ws = V.Workspace(base, tmp_path / "user.duckdb")
    job = V.ComputeJob(ws, V.ComputeRequest(name="x", corpus="file", data_path=str(tmp_path / "t.txt"),
                                            model=str(tmp_path), m=64))
    job.cancel()
    job.start().wait(60)
    assert job.state == "cancelled" and job.report is None
    assert not (tmp_path / "user.duckdb").exists()
    # not cancelled: runs to the end (fraction 1) and lands in the user store
    job = V.ComputeJob(ws, V.ComputeRequest(name="x", corpus="file", data_path=str(tmp_path / "t.txt"),
                                            model=str(tmp_path), m=64)).start().wait(60)
    assert job.state == "done" and job.fraction == 1.0, job.error
    assert ws.tasks().set_index("label").loc["x", "store"] == "user"
