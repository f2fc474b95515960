"""Import and export: Parquet (one row per task), the core's single-file ``.npz``, and other stores.

Importing merges into the store: tasks already stored with identical vectors are reported as
duplicates, tasks with the same key (name, model, method, m, seed) but different vectors as conflicts,
handled by ``on_conflict`` ("error" refuses the whole import, "skip" keeps the stored ones, "replace"
overwrites them). Every import is one transaction.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..signature import Signature
from .core import SignatureStore, WriteReport
from .errors import InvalidSignatureError, StoreError
from .records import (TEXT_FIELDS, TaskRecord, list_matrix, normalise_tags, signatures_from_rows)
from .schema import CURRENT_VERSION, FAMILIES, HALF_COLUMNS, vector_table

PARQUET_FORMAT = "fishersketch-store-parquet"
PARQUET_VERSION = 1
PARQUET_META_KEY = b"fishersketch"
REQUIRED_PARQUET = ("name", "method", "m", "seed", "d", "K", "count_0", "count_1") + HALF_COLUMNS
STORE_EXTRA_KEY = "store"


# --- reading records out of a store ------------------------------------------------------------------

def _rows(store: SignatureStore, **filters: Any) -> Iterable[tuple[int, pa.Table]]:
    """(m, Arrow table of tasks ⋈ vectors_m) for the tasks matching ``filters``."""
    meta = store.list(**filters)
    for m in sorted(meta["m"].unique()):
        ids = [int(i) for i in meta.loc[meta["m"] == m, "id"]]
        placeholders = ", ".join("?" * len(ids))
        vec_cols = ", ".join(f"v.{c}" for c in FAMILIES + HALF_COLUMNS)
        tbl = store._arrow(
            f"SELECT t.*, {vec_cols} FROM tasks AS t JOIN {vector_table(int(m))} AS v ON v.task_id = t.id "
            f"WHERE t.id IN ({placeholders}) ORDER BY t.id", ids)
        yield int(m), tbl


def records_from_store(store: SignatureStore, **filters: Any) -> list[TaskRecord]:
    """Every matching task of ``store`` as a :class:`TaskRecord` (signature + metadata)."""
    out = []
    for _, tbl in _rows(store, **filters):
        out += _records_from_table(tbl)
    return out


def _records_from_table(tbl: pa.Table) -> list[TaskRecord]:
    sigs = signatures_from_rows(tbl)
    cols = {c: tbl.column(c).to_pylist() for c in ("name", "created_at", "tags") + TEXT_FIELDS
            if c in tbl.column_names}
    n = tbl.num_rows
    return [TaskRecord(signature=sig, name=cols["name"][i],
                       tags=normalise_tags(cols.get("tags", [None] * n)[i]),
                       created_at=cols.get("created_at", [None] * n)[i],
                       **{f: cols[f][i] or "" if f in cols else "" for f in TEXT_FIELDS})
            for i, sig in enumerate(sigs)]


# --- Parquet ---------------------------------------------------------------------------------------------

def export_parquet(store: SignatureStore, path: str | os.PathLike, **filters: Any) -> int:
    """Write matching tasks to one Parquet file: metadata columns + ``list<float>`` vectors.

    Columns: the ``tasks`` metadata (``tags``/``extra`` as JSON text), the stored scalars, and
    ``joint, activation, error`` plus the six half vectors. Tasks of different m may share a file.
    Returns the number of rows written.

    Examples
    --------
    >>> export_parquet(store, "smiles.parquet", group="SMILES")   # doctest: +SKIP
    12
    """
    tables = []
    for _, tbl in _rows(store, **filters):
        for c in FAMILIES + HALF_COLUMNS:
            idx = tbl.column_names.index(c)
            tbl = tbl.set_column(idx, c, tbl.column(c).cast(pa.list_(pa.float32())))
        tables.append(tbl.drop_columns(["id"]))
    if not tables:
        raise StoreError(f"nothing to export: no stored task matches {filters or 'the (empty) store'} in "
                         f"{store.path}")
    table = pa.concat_tables(tables, promote_options="default")
    header = {"format": PARQUET_FORMAT, "version": PARQUET_VERSION, "schema_version": CURRENT_VERSION}
    table = table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(header).encode()})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return table.num_rows


def read_parquet_records(path: str | os.PathLike) -> list[TaskRecord]:
    """Parse a Parquet export into records, refusing bad rows with the row number and the fix."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"cannot read {path} as Parquet ({exc}). Fix: pass a file written by "
                         "`export --format parquet` / export_parquet()") from None
    header = json.loads((table.schema.metadata or {}).get(PARQUET_META_KEY, b"{}"))
    if header and int(header.get("version", 0)) > PARQUET_VERSION:
        raise StoreError(f"{path} was written by a newer fishersketch_core (parquet format version "
                         f"{header['version']} > {PARQUET_VERSION}). Fix: upgrade fishersketch_core.")
    missing = [c for c in REQUIRED_PARQUET if c not in table.column_names]
    if missing:
        raise StoreError(f"{path} lacks the column(s) {missing} that a signature needs. Fix: export with "
                         "export_parquet(), which writes metadata and the six half vectors.")
    records, errors = [], []
    for m in sorted(set(table.column("m").to_pylist())):
        mask = pa.compute.equal(table.column("m"), m)
        part = table.filter(mask)
        rows = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))
        try:
            for c in HALF_COLUMNS + tuple(f for f in FAMILIES if f in part.column_names):
                list_matrix(part.column(c), int(m))
        except ValueError as exc:
            errors.append(f"rows with m={m}: {exc}")
            continue
        for j, row in enumerate(rows):
            one = part.slice(j, 1)
            try:
                rec = _records_from_table(one)[0]
            except (ValueError, TypeError) as exc:
                errors.append(f"row {row} ({one.column('name')[0].as_py()!r}): {exc}")
                continue
            for fam in FAMILIES:
                if fam in one.column_names:
                    stored_full = list_matrix(one.column(fam), int(m))[0]
                    if not np.allclose(stored_full, getattr(rec.signature, fam), rtol=1e-5, atol=1e-8):
                        errors.append(f"row {row} ({rec.name!r}): column {fam} disagrees with its half vectors")
                        break
            else:
                records.append(rec)
    if errors:
        raise InvalidSignatureError(f"{path}: {len(errors)} row(s) refused, nothing imported: "
                                    + " | ".join(errors[:10]) + ". Fix: re-export the file from its source "
                                    "store, or drop those rows.")
    return records


def import_parquet(store: SignatureStore, path: str | os.PathLike, on_conflict: str = "error") -> WriteReport:
    """Merge a Parquet export into ``store`` (one transaction); see the module docstring."""
    return store.add_many(read_parquet_records(path), on_conflict=on_conflict)


# --- single-file .npz --------------------------------------------------------------------------------------

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "task"


def export_npz(store: SignatureStore, task: Any, path: str | os.PathLike, **filters: Any) -> Path:
    """Write one stored task to the core's single-file format (:meth:`Signature.save`).

    The task metadata (domain, group, ...) travels in ``meta.extra["store"]`` so that
    :func:`import_npz` restores it.
    """
    rec = _record(store, task, **filters)
    return _record_signature(rec).save(path)


def _record(store: SignatureStore, task: Any, **filters: Any) -> TaskRecord:
    row = store.resolve(task, **filters)
    return records_from_store(store, ids=[int(row["id"])])[0]


def _record_signature(rec: TaskRecord) -> Signature:
    store_meta = {f: getattr(rec, f) for f in TEXT_FIELDS}
    store_meta["tags"] = rec.tags
    if rec.created_at is not None:
        store_meta["created_at"] = pd.Timestamp(rec.created_at).isoformat()
    extra = {**rec.signature.meta.extra, STORE_EXTRA_KEY: store_meta}
    return rec.signature.with_meta(task_name=rec.task_name, extra=extra)


def export_npz_dir(store: SignatureStore, directory: str | os.PathLike, **filters: Any) -> list[Path]:
    """Write every matching task to ``directory/<id>-<name>.npz``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for _, tbl in _rows(store, **filters):
        for rec, tid in zip(_records_from_table(tbl), tbl.column("id").to_pylist()):
            paths.append(_record_signature(rec).save(directory / f"{int(tid):06d}-{_slug(rec.task_name)}.npz"))
    return paths


def read_npz_record(path: str | os.PathLike) -> TaskRecord:
    """A :class:`TaskRecord` from one ``.npz`` signature file (store metadata restored if present)."""
    try:
        sig = Signature.load(path)
    except ValueError as exc:
        raise InvalidSignatureError(f"{path} refused: {exc}") from None
    extra = dict(sig.meta.extra)
    store_meta = extra.pop(STORE_EXTRA_KEY, {}) or {}
    created = store_meta.get("created_at")
    sig = sig.with_meta(extra=extra)
    return TaskRecord(signature=sig, name=sig.meta.task_name or Path(path).stem,
                      tags=normalise_tags(store_meta.get("tags")),
                      created_at=pd.Timestamp(created).to_pydatetime() if created else None,
                      **{f: str(store_meta.get(f) or "") for f in TEXT_FIELDS})


def import_npz(store: SignatureStore, paths: str | os.PathLike | Iterable[str | os.PathLike],
               on_conflict: str = "error") -> WriteReport:
    """Merge ``.npz`` signature files (or every ``*.npz`` in a directory) into ``store``."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        paths = sorted(p.glob("*.npz")) if p.is_dir() else [p]
    records = [read_npz_record(p) for p in paths]
    if not records:
        raise StoreError("no .npz signature files to import. Fix: pass a file or a directory of .npz files")
    return store.add_many(records, on_conflict=on_conflict)


# --- dispatch ---------------------------------------------------------------------------------------------------

def import_file(store: SignatureStore, path: str | os.PathLike, on_conflict: str = "error") -> WriteReport:
    """Import a Parquet export, a ``.npz`` file, a directory of ``.npz`` files, or another store."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist. Fix: check the path of the file to import")
    if p.is_dir() or p.suffix == ".npz":
        return import_npz(store, p, on_conflict=on_conflict)
    if p.suffix == ".parquet":
        return import_parquet(store, p, on_conflict=on_conflict)
    if p.suffix in (".duckdb", ".db"):
        if p.resolve() == store.path.resolve():
            raise StoreError(f"cannot import {p} into itself")
        with SignatureStore(p, read_only=True) as other:
            return store.add_many(records_from_store(other), on_conflict=on_conflict)
    raise StoreError(f"do not know how to import {p}: expected .parquet, .npz, a directory of .npz files, "
                     "or a .duckdb store")


def export_file(store: SignatureStore, path: str | os.PathLike, **filters: Any) -> str:
    """Export to Parquet (``*.parquet``) or to a directory of ``.npz`` files (anything else)."""
    p = Path(path)
    if p.suffix == ".parquet":
        return f"wrote {export_parquet(store, p, **filters)} task(s) to {p}"
    if p.suffix == ".npz":
        meta = store.list(**filters)
        if len(meta) != 1:
            raise StoreError(f"a .npz file holds one task but {len(meta)} match; export to a directory "
                             "(path without .npz) or to a .parquet file, or narrow the filters")
        export_npz(store, int(meta["id"].iloc[0]), p)
        return f"wrote 1 task to {p}"
    return f"wrote {len(export_npz_dir(store, p, **filters))} task file(s) to {p}/"
