"""Tests of fishersketch_core.store on temporary stores of synthetic signatures."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishersketch_core import align
from fishersketch_core.signature import IncompatibleSignatures, Signature, SketchMeta
from fishersketch_core.store import (CURRENT_VERSION, AmbiguousTaskError, ConflictError, InvalidSignatureError,
                                     SchemaVersionError, SignatureStore, StoreError, StoreLockedError,
                                     TaskNotFoundError, TaskRecord, export_file, export_npz, export_parquet,
                                     import_file, import_npz, import_parquet, rank_sources, reference_ranking,
                                     register_cli)
from fishersketch_core.store import schema
from fishersketch_core.store.records import records_to_arrow, same_vectors

ROOT = Path(__file__).resolve().parents[1]
M = 32
EVIL = "x'); DROP TABLE tasks; --"


def make_sig(name: str, rng: np.random.Generator, m: int = M, method: str = "fast", seed: int = 0,
             model_hash: str = "hash-a", counts=(40, 50), noise: float = 0.4, base=None) -> Signature:
    meta = SketchMeta(d=8, K=16, m=m, seed=seed, method=method, model_id="toy", model_hash=model_hash,
                      task_name=name, extra={"note": "synthetic"})
    base = rng.standard_normal((3, m)) if base is None else base
    halves = [np.stack([b + noise * rng.standard_normal(m), b + noise * rng.standard_normal(m)]).astype(np.float32)
              for b in base]
    return Signature(*halves, counts=list(counts), meta=meta)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "store.duckdb"


@pytest.fixture
def filled(path, rng):
    """A store of 30 compatible tasks in 3 groups, plus 2 with another method and 1 with another m."""
    with SignatureStore(path) as store:
        recs = [TaskRecord(make_sig(f"t{i:02d}", rng), group=f"g{i % 3}", domain=f"d{i}", tags={"i": i})
                for i in range(30)]
        recs += [TaskRecord(make_sig(f"dense{i}", rng, method="dense"), group="g0") for i in range(2)]
        recs.append(TaskRecord(make_sig("t00", rng, m=16), group="g0"))
        store.add_many(recs)
    return path


# --- schema, round trips -----------------------------------------------------------------------------------

def test_new_store_has_current_schema_and_meta(path):
    with SignatureStore(path) as store:
        assert store.schema_version == CURRENT_VERSION == 2
        meta = dict(store._query("SELECT key, value FROM schema_meta").fetchall())
        assert meta["schema_version"] == "2" and "created_by" in meta
        assert len(store) == 0


def test_add_get_list_round_trip(path, rng):
    sig = make_sig("a", rng)
    with SignatureStore(path) as store:
        rep = store.add(sig, group="SMILES", domain="aromatic", task_type="corpus", corpus_source="moses",
                        corpus_licence="MIT", tags={"k": [1, 2]})
        assert rep.added == ["a"]
    with SignatureStore(path, read_only=True) as store:
        got = store.get("a")
        assert same_vectors(got, sig) and got.meta == sig.meta
        row = store.list().iloc[0]
        assert (row["group"], row["domain"], row["corpus_licence"], row["tags"]) == ("SMILES", "aromatic", "MIT",
                                                                                    {"k": [1, 2]})
        assert (row["m"], row["count_0"], row["count_1"], row["n_positions"]) == (M, 40, 50, 90)
        norms = align.self_norms(sig, "U")
        assert row["self_u_joint"] == pytest.approx(norms["joint"])
        delta = align.kronecker_delta(sig, "U")
        assert row["delta_u"] == pytest.approx(delta.value) and row["delta_u_se"] == pytest.approx(delta.se)


def test_sql_looking_names_stored_verbatim(path, rng):
    with SignatureStore(path) as store:
        store.add(make_sig(EVIL, rng), group="g'; DELETE FROM tasks; --")
        store.add(make_sig("plain", rng))
        assert store.get(EVIL).name == EVIL
        assert store.list(group="g'; DELETE FROM tasks; --")["name"].tolist() == [EVIL]
        assert store.list(group="x' OR '1'='1").empty
        df = rank_sources(store, EVIL, k=5)
        assert df["name"].tolist() == ["plain"]
        assert rank_sources(store, "plain", k=5)["name"].tolist() == [EVIL]
        assert len(store) == 2


def test_filters(filled):
    with SignatureStore(filled, read_only=True) as store:
        assert len(store.list(group="g1")) == 10
        assert len(store.list(group=["g1", "g2"])) == 20
        assert len(store.list(method="dense")) == 2
        assert len(store.list(m=16)) == 1
        assert len(store.filter(model="hash-a", method="fast", m=M)) == 30
        assert len(store.compat_groups()) == 3


# --- migrations ---------------------------------------------------------------------------------------------

def _write_v1_store(path: Path, sigs: list[Signature]) -> None:
    """A file exactly as schema version 1 wrote it (no tags, no δ columns)."""
    con = duckdb.connect(str(path))
    schema.migrate(con, 0, 1, created_by="test v1")
    table = schema.ensure_vector_table(con, M)
    tasks, vectors = records_to_arrow([TaskRecord(s) for s in sigs], [s.name for s in sigs],
                                      list(range(1, len(sigs) + 1)))
    v1_tasks = tasks.drop_columns(["tags", "delta_u", "delta_u_se"])  # noqa: F841 (read by DuckDB)
    con.execute("INSERT INTO tasks SELECT * FROM v1_tasks")
    con.execute(f"INSERT INTO {table} SELECT * FROM vectors")
    for _ in sigs:
        con.execute("SELECT nextval('task_id_seq')")
    con.close()


def test_migration_v1_to_v2_keeps_data_and_backfills_delta(path, rng):
    sigs = [make_sig(f"old{i}", rng) for i in range(4)]
    _write_v1_store(path, sigs)
    con = duckdb.connect(str(path), read_only=True)
    assert schema.read_version(con) == 1
    con.close()
    with pytest.raises(SchemaVersionError, match="open it read-write once"):
        SignatureStore(path, read_only=True)
    with SignatureStore(path) as store:
        assert store.schema_version == 2
        df = store.list()
        assert df["name"].tolist() == [s.name for s in sigs]
        for sig, (_, row) in zip(sigs, df.iterrows()):
            assert row["delta_u"] == pytest.approx(align.kronecker_delta(sig).value)
            assert row["tags"] == {}
            assert same_vectors(store.get(sig.name), sig)
        store.add(make_sig("new", rng))  # ids continue after the migrated rows
        assert store.info("new")["id"] == 5
        meta = dict(store._query("SELECT key, value FROM schema_meta").fetchall())
        assert "migrated_to_v2_at" in meta


def test_newer_schema_refused_and_file_untouched(path):
    SignatureStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    for ro in (False, True):
        with pytest.raises(SchemaVersionError, match=r"schema version 99.*upgrade fishersketch_core"):
            SignatureStore(path, read_only=ro)
    con = duckdb.connect(str(path), read_only=True)
    assert schema.read_version(con) == 99
    con.close()


def test_failed_migration_rolls_back(path, rng, monkeypatch):
    _write_v1_store(path, [make_sig("old", rng)])

    def boom(con):
        con.execute("ALTER TABLE tasks ADD COLUMN tags JSON")
        raise RuntimeError("interrupted migration")
    monkeypatch.setitem(schema.MIGRATIONS, 2, ("boom", boom))
    with pytest.raises(RuntimeError, match="interrupted"):
        SignatureStore(path)
    con = duckdb.connect(str(path), read_only=True)
    assert schema.read_version(con) == 1
    assert "tags" not in [r[0] for r in con.execute("DESCRIBE tasks").fetchall()]
    con.close()


def test_not_a_store_refused(tmp_path):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE foo (x INT)")
    con.close()
    with pytest.raises(StoreError, match="not a FisherSketch signature store"):
        SignatureStore(other)
    text = tmp_path / "notes.duckdb"
    text.write_text("hello")
    with pytest.raises(StoreError, match="cannot open"):
        SignatureStore(text)
    with pytest.raises(FileNotFoundError, match="no signature store"):
        SignatureStore(tmp_path / "missing.duckdb", read_only=True)


# --- refusals ---------------------------------------------------------------------------------------------

def _tampered(sig: Signature, **arrays) -> Signature:
    for k, v in arrays.items():
        object.__setattr__(sig, k, v)
    return sig


@pytest.mark.parametrize("case, pattern", [
    ("zero", r"joint mean is the zero vector.*Fix:"),
    ("nan", r"contain NaN or inf.*Fix:"),
    ("length", r"shape \(2, 31\), expected \(2, m=32\).*Fix:"),
    ("negative", r"U-form self inner product .* ≤ 0.*Fix: add positions"),
    ("empty_half", r"half 1 has no positions.*Fix:"),
    ("no_name", r"task name is empty"),
])
def test_refusals_name_problem_and_fix(path, rng, case, pattern):
    good = make_sig("good", rng)
    if case == "zero":
        bad = make_sig("bad", rng, base=np.zeros((3, M)), noise=0.0)
    elif case == "nan":
        jh = good.joint_half.copy()
        jh[0, 3] = np.nan
        bad = _tampered(make_sig("bad", rng), joint_half=jh)
    elif case == "length":
        bad = _tampered(make_sig("bad", rng), joint_half=np.ones((2, M - 1), np.float32))
    elif case == "negative":
        b = rng.standard_normal((3, M)).astype(np.float32)
        bad = Signature(np.stack([b[0], -0.5 * b[0]]), np.stack([b[1], b[1]]), np.stack([b[2], b[2]]), [5, 5],
                        good.meta.replace(task_name="bad"))
    elif case == "empty_half":
        bad = make_sig("bad", rng, counts=(10, 0))
    else:
        bad = make_sig("", rng)
    with SignatureStore(path) as store:
        store.add(good)
        with pytest.raises(InvalidSignatureError, match=pattern):
            store.add_many([make_sig("ok2", rng), bad])
        assert store.list()["name"].tolist() == ["good"]  # the refused batch wrote nothing
        assert same_vectors(store.get("good"), good)


def test_bad_arguments(path, rng):
    with SignatureStore(path) as store:
        with pytest.raises(ValueError, match="on_conflict must be one of"):
            store.add(make_sig("a", rng), on_conflict="overwrite")
        with pytest.raises(TypeError, match="expected a Signature or TaskRecord"):
            store.add_many([np.zeros(3)])
        store.add(make_sig("a", rng))
        with pytest.raises(ValueError, match="k must be a positive integer"):
            rank_sources(store, "a", k=0)
        with pytest.raises(ValueError, match="by must be one of"):
            rank_sources(store, "a", by="cka")
        with pytest.raises(TaskNotFoundError, match="no stored task with name 'zz'.*Fix"):
            rank_sources(store, "zz")


# --- conflicts, replace, delete ----------------------------------------------------------------------------

def test_duplicates_conflicts_and_on_conflict(path, rng):
    a = make_sig("a", rng)
    a2 = make_sig("a", rng)  # same key, different vectors
    with SignatureStore(path) as store:
        store.add(a, group="g")
        rep = store.add(a)
        assert rep.duplicates == ["a"] and not rep.added
        with pytest.raises(ConflictError, match=r"'a' stored as id 1 with different vectors.*on_conflict='skip'"):
            store.add_many([make_sig("b", rng), a2])
        assert store.list()["name"].tolist() == ["a"]
        rep = store.add_many([make_sig("b", rng), a2], on_conflict="skip")
        assert rep.added == ["b"] and rep.skipped == ["a"] and rep.conflicts == ["a"]
        assert same_vectors(store.get("a"), a)
        rep = store.add(a2, group="g2", on_conflict="replace")
        assert rep.replaced == ["a"]
        assert same_vectors(store.get("a"), a2)
        info = store.info("a")
        assert info["id"] == 1 and info["group"] == "g2"
        assert len(store) == 2


def test_replace_update_delete_and_ambiguity(path, rng):
    with SignatureStore(path) as store:
        with pytest.raises(TaskNotFoundError, match="cannot replace 'a'"):
            store.replace(make_sig("a", rng))
        store.add(make_sig("a", rng))
        store.add(make_sig("a", rng, method="dense"))
        with pytest.raises(AmbiguousTaskError, match=r"2 stored signatures are named 'a'.*method="):
            store.get("a")
        assert store.get("a", method="dense").meta.method == "dense"
        new = make_sig("a", rng)
        store.replace(new, group="G")
        assert same_vectors(store.get("a", method="fast"), new)
        store.update_metadata("a", method="fast", domain="dom", tags=["x"])
        assert store.info("a", method="fast")["tags"] == ["x"]
        with pytest.raises(ValueError, match="cannot update"):
            store.update_metadata("a", method="fast", K=3)
        store.delete("a", method="dense")
        assert store.list()["method"].tolist() == ["fast"]
        assert store._query("SELECT count(*) FROM vectors_m32").fetchall()[0][0] == 1


def test_read_only_store_refuses_writes(filled, rng):
    with SignatureStore(filled, read_only=True) as store:
        with pytest.raises(StoreError, match="open read-only"):
            store.add(make_sig("new", rng))


# --- ranking ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("by", ["joint", "activation", "error", "kronecker"])
@pytest.mark.parametrize("form", ["U", "V"])
def test_ranking_equals_numpy_reference(filled, by, form):
    with SignatureStore(filled, read_only=True) as store:
        for target in ("t00", "t07", "t13"):
            got = rank_sources(store, target, k=8, by=by, form=form, method="fast", m=M, with_se=False)
            ref = reference_ranking(store, target, k=8, by=by, form=form, method="fast", m=M)
            assert got["id"].tolist() == ref["id"].tolist()
            for col in ("score", "rho_F", "rho_h", "rho_e"):
                np.testing.assert_allclose(got[col], ref[col], rtol=1e-5, atol=1e-6)
            assert got["rank"].tolist() == list(range(1, 9))
            np.testing.assert_allclose(got["rho_F"], got["rho_h"] * got["rho_e"] * got["kappa"], rtol=1e-12)


def test_ranking_matches_align_and_has_standard_errors(filled):
    with SignatureStore(filled, read_only=True) as store:
        df = rank_sources(store, "t05", k=4, method="fast", m=M)
        target = store.get("t05", method="fast", m=M)
        for row in df.itertuples():
            a = align.alignment(store.get_many([row.id])[0], target)
            assert row.rho_F == pytest.approx(a.joint.value, rel=1e-5)
            assert row.rho_h == pytest.approx(a.activation.value, rel=1e-5)
            assert row.rho_F_se == pytest.approx(a.joint.se) and row.kappa_se == pytest.approx(a.coupling.se)
        assert np.all(np.isfinite(df[["rho_F_se", "rho_h_se", "rho_e_se", "kappa_se"]].to_numpy()))
        assert df.attrs["target"] == "t05" and df.attrs["by"] == "joint"


def test_ranking_never_mixes_incompatible(filled, rng):
    with SignatureStore(filled, read_only=True) as store:
        df = rank_sources(store, "t01", k=100)
        assert len(df) == 29 and set(df["method"]) == {"fast"} and set(df["m"]) == {M}
        assert "t01" not in df["name"].tolist()
        assert df.attrs["n_candidates"] == 29 and df.attrs["n_incompatible_excluded"] == 3
        # a name stored under two m values: the filters pick which one is the target
        with pytest.raises(AmbiguousTaskError, match="m="):
            rank_sources(store, "t00")
        with pytest.raises(IncompatibleSignatures, match="filters .* exclude"):
            rank_sources(store, "t01", method="dense")
        # the only task of m = 16 is the target itself: every candidate is incompatible → said so
        with pytest.raises(IncompatibleSignatures, match="32 task.* other settings"):
            rank_sources(store, "t00", m=16)
        # dense target, candidates filtered to a group holding only fast tasks of that group → refuse
        with pytest.raises(IncompatibleSignatures, match="never ranked together"):
            rank_sources(store, "dense0", group="g1")
        # a signature that is not stored is ranked like a stored one
        outside = make_sig("outside", rng)
        got = rank_sources(store, outside, k=5, method="fast")
        with SignatureStore.snapshot(filled) as snap_path_store:
            assert len(snap_path_store) == len(store)
        assert len(got) == 5 and set(got["method"]) == {"fast"}
        with pytest.raises(IncompatibleSignatures, match="contradict the target"):
            rank_sources(store, outside, method="dense")


def test_ranking_filters_and_pools(filled):
    with SignatureStore(filled, read_only=True) as store:
        df = rank_sources(store, "t01", k=100, group="g2", m=M)
        assert len(df) == 10 and set(df["group"]) == {"g2"}
        pool = ["t03", "t04", "t05"]
        df = rank_sources(store, "t01", k=2, candidates=pool, m=M)
        assert len(df) == 2 and set(df["name"]) <= set(pool)
        ref = reference_ranking(store, "t01", k=2, m=M, name=pool)
        assert df["id"].tolist() == ref["id"].tolist()


def test_unstored_target_equals_stored(path, rng):
    sigs = [make_sig(f"s{i}", rng) for i in range(12)]
    with SignatureStore(path) as store:
        store.add_many(sigs)
        a = rank_sources(store, "s3", k=5, by="kronecker")
        b = rank_sources(store, sigs[3], k=5, by="kronecker")
        assert a["id"].tolist() == b["id"].tolist()
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)


# --- import / export ---------------------------------------------------------------------------------------

def _all(store):
    return {(r.name, r.method, r.m): r for r in store.list().itertuples()}


def test_parquet_round_trip(filled, tmp_path):
    pq_path = tmp_path / "all.parquet"
    with SignatureStore(filled, read_only=True) as store:
        assert export_parquet(store, pq_path) == 33
        before = _all(store)
        sigs = {k: store.get(int(r.id)) for k, r in before.items()}
    table = pq.read_table(pq_path)
    assert json.loads(table.schema.metadata[b"fishersketch"])["schema_version"] == CURRENT_VERSION
    assert {"name", "group", "joint", "joint_h0", "error_h1", "delta_u"} <= set(table.column_names)
    with SignatureStore(tmp_path / "copy.duckdb") as copy:
        rep = import_parquet(copy, pq_path)
        assert len(rep.added) == 33
        after = _all(copy)
        assert after.keys() == before.keys()
        for k, r in after.items():
            assert same_vectors(copy.get(int(r.id)), sigs[k])
            assert (r.group, r.domain, r.tags, r.created_at) == (before[k].group, before[k].domain,
                                                                  before[k].tags, before[k].created_at)
        rep = import_parquet(copy, pq_path)
        assert len(rep.duplicates) == 33 and not rep.added


def test_npz_round_trip_and_merge_report(filled, tmp_path, rng):
    with SignatureStore(filled, read_only=True) as store:
        export_npz(store, "t04", tmp_path / "one.npz")
        msg = export_file(store, tmp_path / "dir", group="g1")
        assert "10 task file(s)" in msg
        original = store.get("t04")
    with SignatureStore(tmp_path / "b.duckdb") as other:
        rep = import_npz(other, tmp_path / "one.npz")
        assert rep.added == ["t04"]
        assert same_vectors(other.get("t04"), original)
        assert other.info("t04")["group"] == "g1" and other.info("t04")["tags"] == {"i": 4}
        assert other.get("t04").meta.extra == {"note": "synthetic"}
        other.add(make_sig("t07", rng))  # a colleague's different t07
        with pytest.raises(ConflictError, match="'t07'"):
            import_file(other, tmp_path / "dir")
        assert len(other) == 2
        rep = import_file(other, tmp_path / "dir", on_conflict="skip")
        assert rep.duplicates == ["t04"] and rep.skipped == ["t07"] and len(rep.added) == 8
        rep = import_file(other, filled, on_conflict="skip")  # another store file
        assert len(rep.added) == 33 - 10


def test_import_refuses_bad_parquet_rows(filled, tmp_path):
    pq_path = tmp_path / "x.parquet"
    with SignatureStore(filled, read_only=True) as store:
        export_parquet(store, pq_path, group="g2")
    table = pq.read_table(pq_path)
    rows = table.to_pylist()
    rows[2]["joint_h0"] = rows[2]["joint_h0"][:-1]            # wrong length
    rows[4]["error_h1"] = [float("nan")] * len(rows[4]["error_h1"])  # NaN
    bad = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(bad, tmp_path / "bad.parquet")
    with SignatureStore(tmp_path / "c.duckdb") as store:
        with pytest.raises(InvalidSignatureError, match=r"row\(s\) refused, nothing imported.*Fix"):
            import_parquet(store, tmp_path / "bad.parquet")
        assert len(store) == 0
    pq.write_table(table.drop_columns(["joint_h0"]), tmp_path / "cols.parquet")
    with SignatureStore(tmp_path / "c.duckdb") as store:
        with pytest.raises(StoreError, match="lacks the column"):
            import_parquet(store, tmp_path / "cols.parquet")


# --- locking and concurrency ---------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from fishersketch_core.store import SignatureStore
    store = SignatureStore({path!r}, read_only={ro})
    print("ready", flush=True)
    sys.stdin.readline()
    store.close()
""")

READER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from fishersketch_core.store import SignatureStore, rank_sources, StoreLockedError
    try:
        with SignatureStore({path!r}, read_only=True) as s:
            print("ok", len(rank_sources(s, "t03", k=3, m=32)))
    except StoreLockedError as e:
        print("locked", e)
""")


def _holder(path: Path, read_only: bool) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), path=str(path), ro=read_only)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


def test_writer_in_another_process_locks_out_readers_with_clear_message(filled):
    writer = _holder(filled, read_only=False)
    try:
        with pytest.raises(StoreLockedError) as err:
            SignatureStore(filled, read_only=True)
        msg = str(err.value)
        assert str(filled) in msg and f"process {writer.pid}" in msg and "read-write" in msg and "Fix" in msg
    finally:
        _release(writer)
    with SignatureStore(filled, read_only=True) as store:  # writer gone: readers fine
        assert len(store) == 33


def test_concurrent_read_only_readers(filled):
    holder = _holder(filled, read_only=True)
    try:
        readers = [subprocess.Popen([sys.executable, "-c", READER.format(root=str(ROOT), path=str(filled))],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [r.communicate(timeout=60) for r in readers]  # both run at once, beside the holder
        assert [o.strip() for o, _ in outs] == ["ok 3", "ok 3"], [e for _, e in outs]
        with SignatureStore(filled, read_only=True) as store:
            assert len(rank_sources(store, "t03", k=3, m=M)) == 3
        with pytest.raises(StoreLockedError, match="read-only processes"):
            SignatureStore(filled)  # a writer cannot open while readers hold the file
    finally:
        _release(holder)


def test_one_writer_per_process(filled):
    with SignatureStore(filled):
        with pytest.raises(StoreLockedError, match="already open read-write in this process"):
            SignatureStore(filled)
        with pytest.raises(StoreLockedError, match="other mode"):
            SignatureStore(filled, read_only=True)
    with SignatureStore(filled):  # closed → can open again
        pass


def test_snapshot_lets_a_writer_proceed(filled, rng):
    snap = SignatureStore.snapshot(filled)
    try:
        with SignatureStore(filled) as writer:
            writer.add(make_sig("while-reading", rng))
        assert len(snap) == 33
    finally:
        snap.close()
    with SignatureStore(filled, read_only=True) as store:
        assert len(store) == 34


KILLER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from fishersketch_core.signature import Signature, SketchMeta
    from fishersketch_core.store import SignatureStore
    from fishersketch_core.store.core import SignatureStore as S
    orig = S._write
    def dying_write(self, con, plan):
        orig(self, con, plan)        # rows inserted inside the transaction ...
        os._exit(3)                  # ... and the process dies before COMMIT
    S._write = dying_write
    rng = np.random.default_rng(1)
    meta = SketchMeta(d=8, K=16, m=32, seed=0, method="fast", model_hash="hash-a")
    sigs = [Signature(*(rng.standard_normal((2, 32)) + 1 for _ in range(3)), counts=[5, 5],
                      meta=meta.replace(task_name=f"new{{i}}")) for i in range(5)]
    with SignatureStore({path!r}) as store:
        store.add_many(sigs)
""")


def test_interrupted_write_loses_nothing(filled):
    with SignatureStore(filled, read_only=True) as store:
        before = store.list()[["id", "name"]]
        t03 = store.get("t03")
    proc = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT), path=str(filled))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    with SignatureStore(filled) as store:
        pd.testing.assert_frame_equal(store.list()[["id", "name"]], before)
        assert same_vectors(store.get("t03"), t03)
        assert store._query("SELECT count(*) FROM vectors_m32").fetchall()[0][0] == 32


# --- CLI ------------------------------------------------------------------------------------------------------

def _cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = args.func(args)
    return code, buf.getvalue()


def test_cli_rank_list_import_export(filled, tmp_path, capsys):
    code, out = _cli("rank", "--target", "t02", "--store", str(filled), "--m", "32", "--k", "3", "--format", "json")
    payload = json.loads(out)
    assert code == 0 and payload["target"] == "t02" and len(payload["rows"]) == 3
    assert {"rho_F", "rho_h", "rho_e", "kappa", "rho_F_se"} <= set(payload["rows"][0])
    with SignatureStore(filled, read_only=True) as store:
        ref = rank_sources(store, "t02", k=3, m=M)
    assert [r["name"] for r in payload["rows"]] == ref["name"].tolist()
    code, out = _cli("rank", "--target", "t02", "--store", str(filled), "--m", "32", "--by", "kronecker",
                     "--format", "csv")
    assert code == 0 and len(pd.read_csv(io.StringIO(out))) == 10
    code, out = _cli("rank", "--target", "t02", "--store", str(filled), "--m", "32")
    assert code == 0 and "rho_F" in out
    code, out = _cli("list", "--store", str(filled), "--group", "g1", "--format", "csv")
    assert code == 0 and len(pd.read_csv(io.StringIO(out))) == 10
    code, out = _cli("export", "--store", str(filled), "--out", str(tmp_path / "e.parquet"))
    assert code == 0 and "wrote 33" in out
    code, out = _cli("import", str(tmp_path / "e.parquet"), "--store", str(tmp_path / "new.duckdb"))
    assert code == 0 and "added 33" in out
    code, _ = _cli("rank", "--target", "nope", "--store", str(filled))
    assert code == 2 and "no stored task with name 'nope'" in capsys.readouterr().err


def test_cli_through_python_m(filled):
    proc = subprocess.run([sys.executable, "-m", "fishersketch_core", "rank", "--target", "t02", "--store",
                           str(filled), "--m", "32", "--k", "2", "--format", "csv", "--no-se"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(io.StringIO(proc.stdout))) == 2
