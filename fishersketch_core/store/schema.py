"""Schema of the signature store, its version, and the numbered migrations applied on open.

Layout (schema version 2)
-------------------------
``schema_meta(key, value)``
    ``schema_version`` (DuckDB has no ``PRAGMA user_version``), ``created_by``, and one
    ``migrated_to_v<N>_at`` row per migration applied to an existing file.
``tasks``
    One row per stored signature: names and provenance (``name``, ``domain``, ``"group"``,
    ``task_type``, ``corpus_source``, ``corpus_licence``, ``tags`` JSON), what it was computed with
    (``model_id``, ``model_hash``, ``method``, ``m``, ``seed``, ``d``, ``K``, ``extra`` JSON), the
    positions (``n_positions``, ``count_0``, ``count_1``), ``created_at`` (UTC), and the
    per-task scalars precomputed at ingest: the self inner products of each feature family in both
    forms (``self_u_*`` = ⟨μ^(0), μ^(1)⟩, ``self_v_*`` = ‖μ‖²) and the U-form Kronecker
    discrepancy ``delta_u`` with its standard error ``delta_u_se``.
    Key: ``UNIQUE(name, model_id, model_hash, method, m, seed)``.
``vectors_m<m>``
    One table per sketch size m, created when the first signature of that m arrives, with
    ``FLOAT[m]`` array columns: the full means ``joint``, ``activation``, ``error`` (what ranking
    reads) and the six half means ``<family>_h0``, ``<family>_h1`` (what the U form needs), keyed by
    ``task_id``. A fixed-size array column cannot hold two sizes, and per-m tables keep the ranking
    scan on ``FLOAT[m]`` arrays with no cast (see docs/BENCHMARKS.md).

Migrations
----------
``MIGRATIONS[v]`` takes a file at version ``v - 1`` to ``v``. A new file is created by applying all of
them in order, so every migration runs on every fresh store as well as on old files. All migrations of
one open run in a single transaction: an interrupted migration leaves the old version intact.
"""
from __future__ import annotations

import json
from typing import Callable

import duckdb
import numpy as np

CURRENT_VERSION = 2
FAMILIES = ("joint", "activation", "error")
HALF_COLUMNS = tuple(f"{fam}_h{h}" for fam in FAMILIES for h in (0, 1))
VECTOR_COLUMNS = FAMILIES + HALF_COLUMNS
MAX_M = 1 << 20


def vector_table(m: int) -> str:
    """Name of the table that holds the ``FLOAT[m]`` vectors of sketch size ``m``.

    ``m`` is validated as a positive integer, so the name can be formatted into SQL safely
    (table names cannot be bound as parameters).

    Examples
    --------
    >>> vector_table(4096)
    'vectors_m4096'
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 < int(m) <= MAX_M:
        raise ValueError(f"sketch size m must be an integer in 1..{MAX_M}, got {m!r}")
    return f"vectors_m{int(m)}"


def ensure_vector_table(con: duckdb.DuckDBPyConnection, m: int) -> str:
    """Create ``vectors_m<m>`` if it does not exist yet; return its name."""
    table = vector_table(m)
    cols = ", ".join(f"{c} FLOAT[{int(m)}] NOT NULL" for c in VECTOR_COLUMNS)
    con.execute(f"CREATE TABLE IF NOT EXISTS {table} (task_id BIGINT PRIMARY KEY, {cols})")
    return table


def vector_tables(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """``{m: table}`` for every vector table present in the file."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name LIKE 'vectors_m%'").fetchall()
    out = {}
    for (name,) in rows:
        suffix = name[len("vectors_m"):]
        if suffix.isdigit():
            out[int(suffix)] = name
    return out


def read_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """Schema version stored in the file; ``None`` for a file without ``schema_meta``."""
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = 'schema_meta'").fetchall()[0][0]
    if not has_meta:
        return None
    row = con.execute("SELECT value FROM schema_meta WHERE key = 'schema_version'").fetchall()
    return int(row[0][0]) if row else None


def user_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]


def _set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO schema_meta (key, value) VALUES (?, ?)", [key, value])


# --- migrations -----------------------------------------------------------------------------------

def _v1_initial(con: duckdb.DuckDBPyConnection) -> None:
    """v1: schema_meta, the task id sequence, and the tasks table with self norms."""
    con.execute("CREATE TABLE schema_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
    con.execute("CREATE SEQUENCE task_id_seq START 1")
    self_cols = ", ".join(f"self_{form}_{fam} DOUBLE NOT NULL" for form in ("u", "v") for fam in FAMILIES)
    con.execute(f"""
        CREATE TABLE tasks (
            id BIGINT PRIMARY KEY,
            name VARCHAR NOT NULL,
            domain VARCHAR NOT NULL DEFAULT '',
            "group" VARCHAR NOT NULL DEFAULT '',
            task_type VARCHAR NOT NULL DEFAULT '',
            corpus_source VARCHAR NOT NULL DEFAULT '',
            corpus_licence VARCHAR NOT NULL DEFAULT '',
            model_id VARCHAR NOT NULL DEFAULT '',
            model_hash VARCHAR NOT NULL DEFAULT '',
            method VARCHAR NOT NULL,
            m INTEGER NOT NULL,
            seed BIGINT NOT NULL,
            d INTEGER NOT NULL,
            K INTEGER NOT NULL,
            n_positions BIGINT NOT NULL,
            count_0 BIGINT NOT NULL,
            count_1 BIGINT NOT NULL,
            created_at TIMESTAMP NOT NULL,
            extra JSON NOT NULL DEFAULT '{{}}',
            {self_cols},
            UNIQUE (name, model_id, model_hash, method, m, seed)
        )""")


def _v2_tags_and_delta(con: duckdb.DuckDBPyConnection) -> None:
    """v2: free-form ``tags`` JSON, and the U-form Kronecker discrepancy δ with its SE per task.

    δ of the tasks already stored is computed from their stored half vectors.
    """
    con.execute("ALTER TABLE tasks ADD COLUMN tags JSON DEFAULT '{}'")
    con.execute("ALTER TABLE tasks ADD COLUMN delta_u DOUBLE")
    con.execute("ALTER TABLE tasks ADD COLUMN delta_u_se DOUBLE")
    from .records import delta_u, signatures_from_rows  # local: records imports this module

    for m, table in vector_tables(con).items():
        rows = con.sql(
            f"SELECT t.id, t.name, t.method, t.m, t.seed, t.d, t.K, t.count_0, t.count_1, "
            f"{', '.join('v.' + c for c in HALF_COLUMNS)} "
            f"FROM tasks AS t JOIN {table} AS v ON v.task_id = t.id").to_arrow_table()
        if rows.num_rows == 0:
            continue
        sigs = signatures_from_rows(rows)
        deltas = [delta_u(s) for s in sigs]
        con.executemany("UPDATE tasks SET delta_u = ?, delta_u_se = ? WHERE id = ?",
                        [[dv, ds, int(i)] for (dv, ds), i in zip(deltas, rows.column("id").to_pylist())])


MIGRATIONS: dict[int, tuple[str, Callable[[duckdb.DuckDBPyConnection], None]]] = {
    1: ("initial schema: schema_meta, tasks, per-m vector tables", _v1_initial),
    2: ("tags JSON and U-form Kronecker discrepancy delta_u, delta_u_se per task", _v2_tags_and_delta),
}
assert sorted(MIGRATIONS) == list(range(1, CURRENT_VERSION + 1))


def migrate(con: duckdb.DuckDBPyConnection, from_version: int, to_version: int = CURRENT_VERSION,
            created_by: str = "") -> list[int]:
    """Apply migrations ``from_version + 1 .. to_version`` inside one transaction.

    Returns the list of versions applied. On any error the transaction is rolled back and the
    file stays at ``from_version``.
    """
    if from_version >= to_version:
        return []
    applied = []
    con.execute("BEGIN TRANSACTION")
    try:
        for version in range(from_version + 1, to_version + 1):
            MIGRATIONS[version][1](con)
            applied.append(version)
        from datetime import datetime, timezone
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if from_version == 0:
            _set_meta(con, "created_by", created_by)
            _set_meta(con, "created_at", now)
        else:
            _set_meta(con, f"migrated_to_v{to_version}_at", now)
        _set_meta(con, "schema_version", str(to_version))
        _set_meta(con, "migrations", json.dumps({v: MIGRATIONS[v][0] for v in range(1, to_version + 1)}))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return applied
