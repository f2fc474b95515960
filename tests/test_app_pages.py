"""One AppTest per page of the Streamlit app, on small synthetic stores built here.

Each test drives the page's main controls and checks the numbers and figure data it shows against the
library (``fishersketch_core.align``, ``store.rank_sources``, ``audit``).
"""
from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app_helpers import arr, build_store, frame, plotly_spec, save_tiny_model, synthetic_records

from fishersketch_core import align, audit
from fishersketch_core.store import SignatureStore, rank_sources

st_testing = pytest.importorskip("streamlit.testing.v1")
AppTest = st_testing.AppTest
ROOT = Path(__file__).resolve().parents[1]
N_TASKS = 12  # 3 groups × 4


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("app")
    base = build_store(d / "base.duckdb")
    return {"dir": d, "base": base}


def make_app(monkeypatch, base, user, page: str | None = None, timeout: float = 60) -> "AppTest":
    monkeypatch.setenv("FISHERSKETCH_STORE", str(base))
    monkeypatch.setenv("FISHERSKETCH_USER_STORE", str(user))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def qp(at, key: str) -> list[str]:
    """A query parameter of the app's URL as a list of values."""
    v = at.query_params.get(key, [])
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def texts(elements) -> str:
    return " | ".join(e.value for e in elements)


# --- Overview ---------------------------------------------------------------------------------------------

def test_overview_counts_and_missing_store(monkeypatch, stores):
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-ov.duckdb")
    m = metrics(at)
    assert m["Tasks"] == str(N_TASKS) and m["Groups"] == "3" and m["Models / sketch settings"] == "1"
    assert str(stores["base"]) in texts(at.success)
    fig = plotly_spec(at, "overview_groups")
    assert sum(arr(tr["y"]).sum() for tr in fig["data"]) == N_TASKS
    assert sorted(x for tr in fig["data"] for x in arr(tr["x"])) == ["alpha", "beta", "gamma"]
    assert not at.error

    # a missing demo store: a clear message with the fix, no traceback; other pages say the same
    at = make_app(monkeypatch, stores["dir"] / "nope.duckdb", stores["dir"] / "user-ov2.duckdb")
    assert "does not exist" in texts(at.error) and "Fix" in texts(at.error)
    assert metrics(at)["Tasks"] == "0"
    at.switch_page("pages/ranking.py").run()
    assert not at.exception and "does not exist" in texts(at.error)


def test_locked_store_message(monkeypatch, stores):
    """A store held read-write by another process: the page names the lock and the fix."""
    locked = stores["dir"] / "locked.duckdb"
    build_store(locked, n_per_group=1)
    code = ("import sys, time; from fishersketch_core.store import SignatureStore; "
            f"s = SignatureStore({str(locked)!r}); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        at = make_app(monkeypatch, locked, stores["dir"] / "user-lock.duckdb")
        err = texts(at.error)
        assert "locked" in err and "Fix" in err, err
    finally:
        proc.kill()
        proc.wait()
    # once the writer is gone the store opens (the handle retries on the next run), nothing lost
    at.run()
    assert metrics(at)["Tasks"] == "3"


def test_import_into_locked_user_store(monkeypatch, stores, tmp_path):
    """Your store held read-write by another process (e.g. the CLI): the import says so; nothing is lost."""
    from fishersketch_core import views as V

    user = tmp_path / "user.duckdb"
    first = synthetic_records(n_per_group=1, groups=("kappa",))[0]
    with SignatureStore(user) as st:
        st.add(first.signature, name="kappa-0", group="kappa")
    blob = V.Workspace(stores["base"]).export_parquet_bytes(["base:1"])
    code = ("import time; from fishersketch_core.store import SignatureStore; "
            f"s = SignatureStore({str(user)!r}); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        at = make_app(monkeypatch, stores["base"], user, "signatures")
        at.file_uploader(key="sig_upload").upload("one.parquet", blob).run()
        at.button(key="sig_import").click().run()
        assert not at.exception
        err = texts(at.error)
        assert "locked" in err and "Fix" in err, err
    finally:
        proc.kill()
        proc.wait()
    with SignatureStore(user, read_only=True) as st:
        assert st.list()["name"].tolist() == ["kappa-0"]


# --- Source ranking ------------------------------------------------------------------------------------

def test_ranking_matches_store_and_baseline(monkeypatch, stores):
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-rank.duckdb", "ranking")
    at.selectbox(key="rank_target").set_value("beta-0").run()
    at.number_input(key="rank_k").set_value(4).run()
    assert not at.exception and not at.error
    assert qp(at, "target") == ["beta-0"] and qp(at, "k") == ["4"]
    shown = frame(at, "rank ρ_F", "disagree")
    with SignatureStore(stores["base"], read_only=True) as st:
        ref = rank_sources(st, "beta-0", k=N_TASKS - 1, by="joint")
        ref_h = rank_sources(st, "beta-0", k=N_TASKS - 1, by="activation")
    top = shown[shown["rank ρ_F"] <= 4].sort_values("rank ρ_F")
    assert top["source"].tolist() == ref["name"].head(4).tolist()
    np.testing.assert_allclose(top["ρ_F"], ref["rho_F"].head(4), rtol=1e-6)
    np.testing.assert_allclose(top["± SE"], ref["rho_F_se"].head(4), rtol=1e-6)
    rank_h = dict(zip(ref_h["name"], ref_h["rank"]))
    assert top["rank ρ_h"].tolist() == [rank_h[s] for s in top["source"]]
    m = metrics(at)
    assert m["FisherSketch top-1"] == ref["name"].iloc[0] and m["ρ_h top-1"] == ref_h["name"].iloc[0]
    overlap = len(set(ref["name"].head(4)) & set(ref_h["name"].head(4)))
    assert m["Overlap of the top 4"] == f"{overlap} / 4"
    # every source in one top 4 but not the other is flagged
    flagged = set(shown.loc[shown["disagree"], "source"])
    assert set(ref["name"].head(4)) ^ set(ref_h["name"].head(4)) <= flagged
    # the CSV download holds every candidate with both ranks
    assert at.get("download_button")

    # a candidate-group filter restricts the ranking; the baseline can be switched
    at.multiselect(key="rank_groups").set_value(["gamma"]).run()
    at.radio(key="rank_vs").set_value("kronecker").run()
    shown = frame(at, "rank ρ_F", "disagree")
    assert set(shown["group"]) == {"gamma"} and "rank ρ_h·ρ_e" in shown.columns
    assert qp(at, "groups") == ["gamma"] and qp(at, "vs") == ["kronecker"]


def test_ranking_reads_query_params(monkeypatch, stores):
    monkeypatch.setenv("FISHERSKETCH_STORE", str(stores["base"]))
    monkeypatch.setenv("FISHERSKETCH_USER_STORE", str(stores["dir"] / "user-qp.duckdb"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/ranking.py")
    at.query_params["target"] = "gamma-2"
    at.query_params["k"] = "3"
    at.run()
    assert not at.exception
    assert at.selectbox(key="rank_target").value == "gamma-2"
    assert at.number_input(key="rank_k").value == 3


# --- Decomposition ---------------------------------------------------------------------------------------

def test_decomposition_numbers_and_figures(monkeypatch, stores):
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-dec.duckdb", "decomposition")
    # default sources: the five best by ρ_F
    assert len(at.multiselect(key="dec_sources").value) == 5
    at.selectbox(key="dec_target").set_value("alpha-0").run()
    at.multiselect(key="dec_sources").set_value(["alpha-1", "beta-0", "gamma-3"]).run()
    assert not at.exception and not at.error
    table = frame(at, "explanation")
    with SignatureStore(stores["base"], read_only=True) as st:
        sigs = {n: st.get(n) for n in ("alpha-0", "alpha-1", "beta-0", "gamma-3")}
    for _, row in table.iterrows():
        a = align.alignment(sigs[row["source"]], sigs["alpha-0"], form="U")
        assert row["ρ_F"] == pytest.approx(a.joint.value) and row["SE ρ_F"] == pytest.approx(a.joint.se)
        assert row["ρ_h"] == pytest.approx(a.activation.value) and row["ρ_e"] == pytest.approx(a.error.value)
        assert row["κ"] == pytest.approx(a.coupling.value)
        assert row["ρ_F"] == pytest.approx(row["ρ_h"] * row["ρ_e"] * row["κ"])
        assert row["explanation"].startswith(f"ρ_F = {a.joint.value:.3f}")
    bars = plotly_spec(at, "dec_bars")
    rho_f = next(tr for tr in bars["data"] if tr["name"].startswith("ρ_F"))
    assert list(arr(rho_f["x"])) == table["source"].tolist()
    np.testing.assert_allclose(arr(rho_f["y"]), table["ρ_F"])
    np.testing.assert_allclose(arr(rho_f["error_y"]["array"]), table["SE ρ_F"])
    heat = plotly_spec(at, "dec_heat_joint")["data"][0]
    mats = align.alignment_matrix([sigs[n] for n in ("alpha-0", "alpha-1", "beta-0", "gamma-3")])
    np.testing.assert_allclose(arr(heat["z"]).astype(float), mats["joint"], rtol=1e-6)
    assert "Where the similarity comes from" in texts(at.markdown)
    # the V form changes the numbers and lands in the URL
    at.radio(key="dec_form").set_value("V").run()
    t2 = frame(at, "explanation")
    a = align.alignment(sigs["alpha-1"], sigs["alpha-0"], form="V")
    assert t2.set_index("source").loc["alpha-1", "ρ_F"] == pytest.approx(a.joint.value)
    assert qp(at, "form") == ["V"]


# --- Kronecker δ ----------------------------------------------------------------------------------------

def test_delta_page(monkeypatch, stores):
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-delta.duckdb", "delta")
    assert not at.exception and not at.error
    with SignatureStore(stores["base"], read_only=True) as st:
        names = st.list()["name"].tolist()
        kd = {n: align.kronecker_delta(st.get(n), form="U") for n in names}
    table = frame(at, "delta", "lo")
    for _, row in table.iterrows():
        assert row["delta"] == pytest.approx(kd[row["label"]].value)
        lo, hi = kd[row["label"]].interval()
        assert row["lo"] == pytest.approx(lo) and row["hi"] == pytest.approx(hi)
    # sorted by group, then δ descending inside a group
    assert table["group"].tolist() == sorted(table["group"])
    n_excl = sum(kd[n].interval()[0] > 0 for n in names)
    assert metrics(at)["95% interval excludes 0"] == f"{n_excl} / {N_TASKS}"
    # the decoupled group has the smallest median δ
    by_group = frame(at, "median_delta").set_index("group")["median_delta"]
    assert by_group.idxmin() == "alpha"
    chart = plotly_spec(at, "delta_chart")
    xs = {lab: y for tr in chart["data"] if tr["type"] == "scattergl" for lab, y in zip(arr(tr["x"]), arr(tr["y"]))}
    assert xs == pytest.approx({n: kd[n].value for n in names})
    scatter = plotly_spec(at, "delta_scatter")
    pts = [tr for tr in scatter["data"] if tr.get("mode") == "markers"]
    assert sum(len(arr(tr["x"])) for tr in pts) == N_TASKS * (N_TASKS - 1) // 2
    with SignatureStore(stores["base"], read_only=True) as st:
        a = align.alignment(st.get("beta-1"), st.get("beta-0"))
    same = next(tr for tr in pts if tr["name"] == "same group")
    i = list(arr(same["text"])).index("beta-0 · beta-1")
    assert arr(same["y"])[i] == pytest.approx(a.joint.value, rel=1e-5)
    assert arr(same["x"])[i] == pytest.approx(a.activation.value * a.error.value, rel=1e-5)
    diag = next(tr for tr in scatter["data"] if tr.get("mode") == "lines")
    np.testing.assert_array_equal(arr(diag["x"]), arr(diag["y"]))
    # group filter and V form
    at.multiselect(key="delta_groups").set_value(["beta"]).run()
    assert metrics(at)["Tasks"] == "4"
    at.radio(key="delta_form").set_value("V").run()
    t2 = frame(at, "delta", "lo")
    assert (t2["form"] == "V").all() and len(t2) == 4
    assert qp(at, "groups") == ["beta"] and qp(at, "form") == ["V"]


# --- Task map ----------------------------------------------------------------------------------------------

def test_task_map_pca_selection_and_neighbours(monkeypatch, stores):
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-map.duckdb", "task_map")
    at.radio(key="map_method").set_value("pca").run()
    assert not at.exception and not at.error
    fig = plotly_spec(at, "map_chart")
    pts = [t for tr in fig["data"] for t in arr(tr["text"])]
    assert sorted(pts) == sorted(f"{g}-{i}" for g in ("alpha", "beta", "gamma") for i in range(4))
    assert {tr["name"] for tr in fig["data"]} == {"alpha", "beta", "gamma"}
    at.selectbox(key="map_colour").set_value("tag:parity").run()
    assert {tr["name"] for tr in plotly_spec(at, "map_chart")["data"]} == {"even", "odd"}
    at.multiselect(key="map_selected").set_value(["gamma-1"]).run()
    nb = frame(at, "neighbour")
    with SignatureStore(stores["base"], read_only=True) as st:
        ref = rank_sources(st, "gamma-1", k=5, by="joint")
    assert nb["neighbour"].tolist() == ref["name"].tolist()
    np.testing.assert_allclose(nb["rho"], ref["rho_F"], rtol=1e-5)
    assert qp(at, "method") == ["pca"] and qp(at, "selected") == ["gamma-1"]
    # the error family changes the neighbours' scores to ρ_e
    at.radio(key="map_family").set_value("error").run()
    nb = frame(at, "neighbour")
    with SignatureStore(stores["base"], read_only=True) as st:
        ref = rank_sources(st, "gamma-1", k=5, by="error")
    np.testing.assert_allclose(nb["rho"], ref["rho_e"], rtol=1e-5)


def test_task_map_small_spaces_and_umap(monkeypatch, stores):
    """1, 2 and 3 tasks: a message, PCA instead of UMAP, UMAP with n_neighbors = n − 1 and random init."""
    d = stores["dir"]
    for n_tasks in (1, 2, 3):
        path = d / f"small{n_tasks}.duckdb"
        with SignatureStore(path) as st:
            st.add_many(synthetic_records(n_per_group=1, groups=("alpha", "beta", "gamma")[:n_tasks], m=64))
        at = make_app(monkeypatch, path, d / f"user-small{n_tasks}.duckdb", "task_map")
        if n_tasks == 1:
            assert "needs at least 2" in texts(at.info)
            continue
        at.button(key="map_run").click().run()
        assert not at.exception and not at.error, texts(at.error)
        assert "Only" in texts(at.warning)
        fig = plotly_spec(at, "map_chart")
        assert sum(len(arr(tr["text"])) for tr in fig["data"]) == n_tasks
        caption = " ".join(c.value for c in at.caption)
        if n_tasks == 2:
            assert "PCA" in caption and "UMAP needs at least 3" in caption
        else:
            assert "UMAP" in caption and "lowered to 2" in caption and "random initialisation" in caption


# --- Bias audit -------------------------------------------------------------------------------------------

def test_audit_page_with_and_without_ground_truth(monkeypatch, stores):
    gains_path = stores["dir"] / "gains.parquet"
    at = make_app(monkeypatch, stores["base"], stores["dir"] / "user-audit.duckdb", "audit")
    at.text_input(key="audit_gains").set_value(str(gains_path)).run()
    assert not at.exception and not at.error
    assert "No ground-truth transfer results" in texts(at.info)
    with SignatureStore(stores["base"], read_only=True) as st:
        rep = audit.audit_store(st)
    conc = frame(at, "gini").set_index("method")
    ref = rep.concentration.set_index("method")
    assert conc.loc["ρ_F (FisherSketch)", "gini"] == pytest.approx(ref.loc["joint", "gini"])
    assert conc.loc["ρ_h (activation only)", "top_share"] == pytest.approx(ref.loc["activation", "top_share"])
    assert metrics(at)["ρ_F vs ρ_h disagree on"] == f"{100 * rep.disagreement:.0f}% of targets"
    hub = plotly_spec(at, "audit_hubness")
    fisher = next(tr for tr in hub["data"] if tr["name"].startswith("ρ_F"))
    counts = rep.hubness["joint"]["source"].set_index("source")["n_chosen"]
    assert [int(v) for v in arr(fisher["y"])] == [int(counts.get(s, 0)) for s in arr(fisher["x"])]

    # ground truth present: accuracy per group, long format (source, target, gain)
    with SignatureStore(stores["base"], read_only=True) as st:
        names = st.list()["name"].tolist()
        groups = dict(zip(names, st.list()["group"]))
    rows = [{"source": s, "target": t, "gain": (1.0 if groups[s] == groups[t] else 0.1) + 0.01 * i}
            for i, s in enumerate(names) for t in names if s != t]
    pd.DataFrame(rows).to_parquet(gains_path)
    at.run()
    acc = frame(at, "top1", "method")
    gains = pd.DataFrame(rows).pivot(index="source", columns="target", values="gain")
    ref_acc = audit.accuracy_by_group(rep.choices["joint"], gains, groups=pd.Series(groups))
    got = acc[acc["method"] == "ρ_F (FisherSketch)"].set_index("group")["top1"]
    assert got.to_dict() == pytest.approx(ref_acc.set_index("group")["top1"].to_dict())
    # target-group filter
    at.multiselect(key="audit_groups").set_value(["beta"]).run()
    assert metrics(at)["Targets"] == "4" and qp(at, "groups") == ["beta"]


# --- Signatures: import, validation, export, compute -----------------------------------------------------

def test_signatures_import_validation_and_export(monkeypatch, stores, tmp_path):
    from fishersketch_core import views as V

    user = tmp_path / "user.duckdb"
    at = make_app(monkeypatch, stores["base"], user, "signatures")
    assert frame(at, "delta_u").shape[0] == N_TASKS
    # malformed upload: an in-page error, nothing written
    at.file_uploader(key="sig_upload").upload("broken.parquet", b"this is not parquet").run()
    assert not at.exception
    assert "broken.parquet" in texts(at.error) and "Fix" in texts(at.error)
    assert not user.exists()
    # an incompatible signature (another m): accepted into the user store with a clear warning
    other = synthetic_records(n_per_group=1, groups=("delta",), m=128)[0]
    with SignatureStore(tmp_path / "other.duckdb") as st:
        st.add(other.signature, name="delta-x", group="delta")
    ws = V.Workspace(tmp_path / "other.duckdb")
    good = ws.export_parquet_bytes(ws.tasks()["uid"].tolist())
    at.file_uploader(key="sig_upload").upload("other.parquet", good).run()
    assert "1 valid signature" in texts(at.success)
    assert "matches no signature space" in texts(at.warning)
    at.button(key="sig_import").click().run()
    assert "added 1" in texts(at.success)
    with SignatureStore(user, read_only=True) as st:
        assert st.list()["name"].tolist() == ["delta-x"]
    at.run()
    tasks = frame(at, "delta_u")
    assert len(tasks) == N_TASKS + 1 and set(tasks["store"]) == {"base", "user"}
    # a file whose full means disagree with its halves (corrupted): refused at upload, in the page
    bad_rows = pd.read_parquet(io.BytesIO(good))
    bad_rows["joint_h0"] = [np.asarray(v) * 2 for v in bad_rows["joint_h0"]]
    buf = io.BytesIO()
    bad_rows.to_parquet(buf)
    at.file_uploader(key="sig_upload").upload("changed.parquet", buf.getvalue()).run()
    assert "disagrees with its half vectors" in texts(at.error)
    # same name and settings but other vectors: the import is refused as a conflict, nothing is lost
    clash = synthetic_records(n_per_group=2, groups=("delta",), m=128)[1]
    with SignatureStore(tmp_path / "clash.duckdb") as st:
        st.add(clash.signature, name="delta-x", group="delta")
    blob = V.Workspace(tmp_path / "clash.duckdb").export_parquet_bytes(["base:1"])
    at.file_uploader(key="sig_upload").upload("clash.parquet", blob).run()
    at.button(key="sig_import").click().run()
    assert not at.exception and "conflict" in texts(at.error) and "Nothing was written" in texts(at.error)
    with SignatureStore(user, read_only=True) as st:
        assert len(st) == 1
        np.testing.assert_array_equal(st.get("delta-x").joint_half, other.signature.joint_half)
    # export: the views function behind the download buttons round-trips
    data = at.session_state  # noqa: F841 - the page ran
    ws2 = V.Workspace(stores["base"], user)
    uids = ws2.tasks()["uid"].tolist()[:3]
    recs = V.read_upload("x.parquet", ws2.export_parquet_bytes(uids))
    assert [r.task_name for r in recs] == ws2.tasks()["label"].tolist()[:3]
    blob, fname = ws2.export_npz_bytes(uids[:1])
    assert fname.endswith(".npz") and V.read_upload(fname, blob)[0].task_name == recs[0].task_name


def test_signatures_compute_with_local_model(monkeypatch, stores, tmp_path):
    """Compute a signature of an uploaded text file with a tiny local model; it lands in the user store."""
    model_dir = save_tiny_model(tmp_path / "tiny-llama")
    user = tmp_path / "user.duckdb"
    at = make_app(monkeypatch, stores["base"], user, "signatures", timeout=120)
    at.radio(key="cmp_model_kind").set_value("local").run()
    at.text_input(key="cmp_model_path").set_value(str(model_dir)).run()
    at.radio(key="cmp_corpus").set_value("file").run()
    text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i}." for i in range(40))
    at.file_uploader(key="cmp_upload").upload("notes.txt", text.encode(), "text/plain").run()
    at.number_input(key="cmp_budget").set_value(500).run()
    at.number_input(key="cmp_m").set_value(256).run()
    at.button(key="cmp_start").click().run()
    assert not at.exception and not at.error, texts(at.error)
    deadline = time.time() + 90
    while time.time() < deadline and "Signature computed" not in texts(at.success):
        time.sleep(0.5)
        at.run()
        assert not at.error, texts(at.error)
    assert "Signature computed: notes" in texts(at.success)
    with SignatureStore(user, read_only=True) as st:
        row = st.list().iloc[0]
        assert row["name"] == "notes" and row["n_positions"] == 500 and row["m"] == 256
        assert row["model_id"] == "tiny-llama"
    at.run()
    assert "notes" in frame(at, "delta_u")["label"].tolist()
    # a model path that does not exist: an in-page error before anything starts
    at.text_input(key="cmp_model_path").set_value(str(tmp_path / "missing-model")).run()
    at.button(key="cmp_start").click().run()
    assert "does not exist" in texts(at.error)
