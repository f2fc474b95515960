"""``SignatureStore``: one DuckDB file of task signatures, with safe writes and metadata queries.

Concurrency (DuckDB's rule, enforced by a file lock)
----------------------------------------------------
* A process that opens the file read-write (the CLI's ``import``, a script with
  ``SignatureStore(path)``) locks out every other process, readers included, until it closes.
* Any number of processes may open it read-only at once (``SignatureStore(path, read_only=True)``,
  the app); while they hold it, a writer cannot open it.
* Inside one process, one ``SignatureStore`` writer per file at a time.
* A refused open raises :class:`StoreLockedError` naming the file and the holder. To keep the app
  serving while the CLI writes, let the CLI write to another file and import or swap it in when done,
  or open a private copy with :meth:`SignatureStore.snapshot`.

Every write runs in one transaction: a refused or interrupted write leaves the stored tasks as they were.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from ..signature import Signature
from .errors import (AmbiguousTaskError, ConflictError, InvalidSignatureError, SchemaVersionError,
                     StoreError, StoreLockedError, TaskNotFoundError)
from .records import (META_COLUMNS, SCALAR_COLUMNS, TaskRecord, iter_records, records_to_arrow,
                      same_vectors, signatures_from_rows, validate_record)
from .schema import (CURRENT_VERSION, FAMILIES, HALF_COLUMNS, ensure_vector_table, migrate, read_version,
                     user_tables, vector_table, vector_tables)

ON_CONFLICT = ("error", "skip", "replace")
COMPAT_COLUMNS = ("model_id", "model_hash", "method", "m", "seed", "d", "K")
_WRITERS: dict[str, int] = {}          # resolved path -> id(store) of the open writer in this process
_WRITERS_LOCK = threading.Lock()



@dataclasses.dataclass
class WriteReport:
    """What a write did, task by task. ``str(report)`` is a one-paragraph summary.

    Attributes
    ----------
    added : list of str
        Tasks written that were not stored before.
    replaced : list of str
        Tasks whose stored vectors were overwritten (``on_conflict="replace"``).
    duplicates : list of str
        Incoming tasks identical to a stored one (same key, bit-identical vectors): not written again.
    conflicts : list of str
        Incoming tasks with a stored key but different vectors (whatever ``on_conflict`` did with them).
    skipped : list of str
        Conflicts left as stored (``on_conflict="skip"``).
    """

    added: list[str] = dataclasses.field(default_factory=list)
    replaced: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        def part(label: str, names: list[str]) -> str:
            shown = ", ".join(repr(n) for n in names[:5]) + (" …" if len(names) > 5 else "")
            return f"{label} {len(names)}" + (f" ({shown})" if names else "")
        return "; ".join(part(lbl, getattr(self, lbl)) for lbl in
                         ("added", "replaced", "duplicates", "conflicts", "skipped"))

    def merge(self, other: "WriteReport") -> "WriteReport":
        return WriteReport(*[getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)])


def _lock_message(path: Path, exc: Exception, read_only: bool) -> str:
    holder = re.search(r"held in (.*?) \(PID (\d+)\)", str(exc))
    who = f"process {holder.group(2)} ({holder.group(1)})" if holder else "another process"
    mode = "read-only" if read_only else "read-write"
    return (f"cannot open the signature store {path} {mode}: it is locked by {who}. DuckDB allows one "
            "read-write process (e.g. the CLI's `import`, or a script with SignatureStore(path)) and then "
            "no other process at all, or any number of read-only processes (e.g. the app) and then no "
            "writer. Fix: wait for that process to finish or close it, or work on a copy "
            "(SignatureStore.snapshot(path), or copy the file while nobody writes it).")


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        return [value]
    return list(value)


def filter_sql(alias: str, *, name: Any = None, group: Any = None, domain: Any = None, model: Any = None,
               method: Any = None, m: Any = None, seed: Any = None, task_type: Any = None,
               ids: Any = None, prefix: str | None = None) -> tuple[str, list | dict]:
    """SQL ``AND``-clauses and their bound parameters for metadata filters.

    Each filter takes one value or a list of values. ``model`` matches ``model_id`` or ``model_hash``.
    Column names are fixed here; every user value is a bound parameter: ``?`` placeholders and a list,
    or, with ``prefix``, ``$<prefix><i>`` placeholders and a dict.
    """
    clauses: list[str] = []
    values: list[Any] = []

    def slot(value: Any) -> str:
        values.append(value)
        return f"${prefix}{len(values) - 1}" if prefix else "?"

    def add(column: str, vals: Any, cast: type = str) -> None:
        vals = _as_list(vals)
        if vals is None:
            return
        clauses.append(f"list_contains({slot([cast(v) for v in vals])}, {alias}.{column})")

    add("name", name)
    add('"group"', group)
    add("domain", domain)
    add("method", method)
    add("task_type", task_type)
    add("m", m, int)
    add("seed", seed, int)
    add("id", ids, int)
    models = _as_list(model)
    if models is not None:
        models = [str(v) for v in models]
        clauses.append(f"(list_contains({slot(models)}, {alias}.model_id) "
                       f"OR list_contains({slot(models)}, {alias}.model_hash))")
    where = "".join(f" AND {c}" for c in clauses)
    if prefix:
        return where, {f"{prefix}{i}": v for i, v in enumerate(values)}
    return where, values


class SignatureStore:
    """A DuckDB file of task signatures.

    Parameters
    ----------
    path : str or Path
        The ``.duckdb`` file. Created (at the current schema) when opened read-write and absent;
        an older schema is migrated on a read-write open.
    read_only : bool, default False
        Open for reading only (the app, ``rank``, ``list``, ``export``); many readers may share a file.
    threads : int, optional
        DuckDB worker threads (default: DuckDB's choice).

    Raises
    ------
    StoreLockedError
        Another process holds the file (see the module docstring for DuckDB's locking rule).
    SchemaVersionError
        The file was written by a newer schema, or needs a migration but was opened read-only.
    StoreError
        The file is not a DuckDB database or not a FisherSketch store.

    Examples
    --------
    >>> with SignatureStore("signatures.duckdb") as store:            # doctest: +SKIP
    ...     store.add(sig, group="SMILES", domain="aromatic rings")
    ...     store.list(group="SMILES")
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False, *, threads: int | None = None) -> None:
        if not isinstance(read_only, bool):
            raise TypeError(f"read_only must be True or False, got {read_only!r}")
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._key = str(self.path.resolve())
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no signature store at {self.path}; create one by opening it "
                                    "read-write (SignatureStore(path)) or with `python -m fishersketch_core import`")
        if not read_only:
            self._claim_writer()
        try:
            self._con = self._connect(threads)
            self._con.execute("SET enable_progress_bar = false")
            self._check_schema()
        except BaseException:
            self.close()
            raise

    # --- opening ---------------------------------------------------------------------------------
    def _claim_writer(self) -> None:
        with _WRITERS_LOCK:
            if self._key in _WRITERS:
                raise StoreLockedError(
                    f"the signature store {self.path} is already open read-write in this process; "
                    "one writer at a time. Fix: reuse that SignatureStore or close() it first.")
            _WRITERS[self._key] = id(self)

    def _connect(self, threads: int | None) -> duckdb.DuckDBPyConnection:
        config = {"threads": int(threads)} if threads else {}
        try:
            return duckdb.connect(str(self.path), read_only=self.read_only, config=config)
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise StoreLockedError(_lock_message(self.path, exc, self.read_only)) from None
            raise StoreError(f"cannot open {self.path} as a signature store: {text}. Fix: check the path; "
                             "a store is a DuckDB (2.x) file written by fishersketch_core") from None
        except duckdb.ConnectionException as exc:
            raise StoreLockedError(
                f"cannot open the signature store {self.path} {'read-only' if self.read_only else 'read-write'}"
                f": this process already has it open in the other mode ({exc}). Fix: close the other "
                "SignatureStore on this file first, or reuse it.") from None
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path} as a signature store: {exc}") from None

    def _check_schema(self) -> None:
        version = read_version(self._con)
        if version is None:
            others = user_tables(self._con)
            if others:
                raise StoreError(f"{self.path} is a DuckDB file but not a FisherSketch signature store "
                                 f"(it has tables {others[:5]} and no schema_meta). Fix: choose another path.")
            if self.read_only:
                raise SchemaVersionError(f"{self.path} is an empty DuckDB file, not a signature store yet. "
                                         "Fix: open it read-write once to create the schema.")
            from .. import __version__
            migrate(self._con, 0, CURRENT_VERSION, created_by=f"fishersketch_core {__version__}")
            return
        if version > CURRENT_VERSION:
            raise SchemaVersionError(
                f"{self.path} was written with store schema version {version}, newer than the version "
                f"this fishersketch_core understands ({CURRENT_VERSION}). The file was not changed. "
                "Fix: upgrade fishersketch_core to open it.")
        if version < CURRENT_VERSION:
            if self.read_only:
                raise SchemaVersionError(
                    f"{self.path} uses store schema version {version}; this fishersketch_core needs "
                    f"{CURRENT_VERSION}. Fix: open it read-write once (SignatureStore(path)) to migrate it "
                    "in place; the migration keeps every stored signature.")
            migrate(self._con, version, CURRENT_VERSION)

    @classmethod
    def snapshot(cls, path: str | os.PathLike, directory: str | os.PathLike | None = None) -> "SignatureStore":
        """Copy ``path`` to a private file and open the copy read-only.

        The original is not locked afterwards, so a writer can update it while the copy is read.
        The copy is deleted on :meth:`close`. Raises ``StoreLockedError`` if a writer holds ``path``
        now (a file being written is not copied).
        """
        src = Path(path)
        with cls(src, read_only=True):  # refuses while a writer holds it; ensures it is a store
            tmpdir = Path(tempfile.mkdtemp(prefix="fs-snapshot-", dir=directory))
            dst = tmpdir / src.name
            shutil.copyfile(src, dst)
        store = cls(dst, read_only=True)
        store._snapshot_dir = tmpdir
        return store

    # --- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent); releases the file lock."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
            if not self.read_only:
                with _WRITERS_LOCK:
                    if _WRITERS.get(self._key) == id(self):
                        del _WRITERS[self._key]
            snap = getattr(self, "_snapshot_dir", None)
            if snap is not None:
                shutil.rmtree(snap, ignore_errors=True)
                self._snapshot_dir = None

    def __enter__(self) -> "SignatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._con is None else ("read-only" if self.read_only else "read-write")
        return f"SignatureStore({str(self.path)!r}, {state})"

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM tasks").fetchall()[0][0])

    @property
    def schema_version(self) -> int:
        return int(read_version(self._connection))

    @property
    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"the signature store {self.path} is closed; open a new SignatureStore")
        return self._con

    def _query(self, sql: str, params: Sequence | dict | None = None) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._connection.execute(sql, params)

    def _arrow(self, sql: str, params: Sequence | dict | None = None) -> pa.Table:
        """Run a query and return an Arrow table (``con.sql`` avoids the DB-API result's extra copy)."""
        with self._lock:
            return self._connection.sql(sql, params=params).to_arrow_table()

    def _fetch_df(self, sql: str, params: Sequence | dict | None = None) -> pd.DataFrame:
        with self._lock:
            return self._connection.execute(sql, params).fetchdf()

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.read_only:
            raise StoreError(f"the signature store {self.path} is open read-only. "
                             "Fix: open it with SignatureStore(path) (read_only=False) to write.")
        with self._lock:
            con = self._connection
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # --- reading -----------------------------------------------------------------------------------
    def list(self, *, name: Any = None, group: Any = None, domain: Any = None, model: Any = None,
             method: Any = None, m: Any = None, seed: Any = None, task_type: Any = None,
             ids: Any = None) -> pd.DataFrame:
        """Metadata of stored tasks (no vectors) as a DataFrame, ordered by id.

        Every filter takes one value or a list; ``model`` matches the model id or weights hash.

        Examples
        --------
        >>> store.list(group=["SMILES", "code"], method="fast")   # doctest: +SKIP
        """
        where, params = filter_sql("t", name=name, group=group, domain=domain, model=model, method=method,
                                   m=m, seed=seed, task_type=task_type, ids=ids)
        cols = ", ".join(["t.id"] + [f't."{c}"' for c in META_COLUMNS] + [f"t.{c}" for c in SCALAR_COLUMNS])
        df = self._fetch_df(f"SELECT {cols} FROM tasks AS t WHERE TRUE{where} ORDER BY t.id", params)
        for col in ("tags", "extra"):
            df[col] = [json.loads(v) if isinstance(v, str) and v else {} for v in df[col]]
        return df

    filter = list

    def compat_groups(self, **filters: Any) -> pd.DataFrame:
        """Distinct (model_id, model_hash, method, m, seed, d, K) combinations with task counts."""
        where, params = filter_sql("t", **filters)
        cols = ", ".join(f't."{c}"' for c in COMPAT_COLUMNS)
        return self._fetch_df(f"SELECT {cols}, count(*) AS n_tasks FROM tasks AS t WHERE TRUE{where} "
                              f"GROUP BY ALL ORDER BY n_tasks DESC, {cols}", params)

    def resolve(self, task: Any, *, model: Any = None, method: Any = None, m: Any = None,
                seed: Any = None) -> dict[str, Any]:
        """The metadata row of exactly one task, by id (int) or name (+ filters when ambiguous).

        Raises
        ------
        TaskNotFoundError, AmbiguousTaskError
        """
        if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
            df = self.list_by_ids([int(task)])
            what = f"id {int(task)}"
        elif isinstance(task, str):
            df = self.list(name=task, model=model, method=method, m=m, seed=seed)
            what = f"name {task!r}"
        else:
            raise TypeError(f"a task is referred to by its name (str) or id (int), got {type(task).__name__}")
        if df.empty:
            filt = {k: v for k, v in dict(model=model, method=method, m=m, seed=seed).items() if v is not None}
            raise TaskNotFoundError(f"no stored task with {what}" + (f" and {filt}" if filt else "")
                                    + f" in {self.path}. Fix: check the name with `list` "
                                    "(names are matched exactly, case included).")
        if len(df) > 1:
            options = "; ".join(f"id {r.id}: model={r.model_id or r.model_hash!r} method={r.method!r} "
                                f"m={r.m} seed={r.seed}" for r in df.itertuples())
            raise AmbiguousTaskError(f"{len(df)} stored signatures are named {task!r} ({options}). "
                                     "Fix: pass model=, method=, m= or seed= (or the id) to pick one.")
        return df.iloc[0].to_dict()

    def list_by_ids(self, ids: Sequence[int]) -> pd.DataFrame:
        """Metadata rows of the given task ids (ordered by id; missing ids are absent)."""
        return self.list(ids=[int(i) for i in ids])

    def info(self, task: Any, **filters: Any) -> dict[str, Any]:
        """Metadata and precomputed scalars (self norms, δ_U ± SE) of one task."""
        return self.resolve(task, **filters)

    def get(self, task: Any, **filters: Any) -> Signature:
        """The stored :class:`Signature` of one task (by name or id), bit-identical to what was added."""
        row = self.resolve(task, **filters)
        return self.get_many([int(row["id"])])[0]

    def get_many(self, ids: Sequence[int]) -> list[Signature]:
        """Signatures for the given task ids, in that order (``TaskNotFoundError`` for a missing id)."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        placeholders = ", ".join("?" * len(ids))
        ms = self._query(f"SELECT DISTINCT m FROM tasks WHERE id IN ({placeholders})", ids).fetchall()
        found: dict[int, Signature] = {}
        meta_cols = "t.id, t.name, t.model_id, t.model_hash, t.method, t.m, t.seed, t.d, t.K, t.count_0, t.count_1, t.extra"
        for (m,) in ms:
            table = vector_table(int(m))
            rows = self._arrow(
                f"SELECT {meta_cols}, {', '.join('v.' + c for c in HALF_COLUMNS)} FROM "
                f"(SELECT * FROM {table} WHERE task_id IN ({placeholders})) AS v "
                f"JOIN tasks AS t ON t.id = v.task_id", ids)
            for i, sig in zip(rows.column("id").to_pylist(), signatures_from_rows(rows)):
                found[i] = sig
        missing = [i for i in ids if i not in found]
        if missing:
            raise TaskNotFoundError(f"no stored task with id(s) {missing} in {self.path}")
        return [found[i] for i in ids]

    def matrix(self, family: str = "joint", *, ids: Sequence[int] | None = None,
               **filters: Any) -> tuple[pd.DataFrame, np.ndarray]:
        """Metadata and the (n, m) float32 matrix of full ``family`` means of compatible tasks.

        Raises ``IncompatibleSignatures`` when the selection mixes models, methods, m or seeds.
        """
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        meta = self.list(**filters) if ids is None else self.list_by_ids(ids)
        check_single_compat_group(meta, what="matrix()")
        if meta.empty:
            return meta, np.zeros((0, 0), np.float32)
        m = int(meta["m"].iloc[0])
        id_list = [int(i) for i in meta["id"]]
        placeholders = ", ".join("?" * len(id_list))
        tbl = self._arrow(f"SELECT task_id, {family} FROM {vector_table(m)} WHERE task_id IN ({placeholders})",
                          id_list)
        from .records import list_matrix
        order = {tid: k for k, tid in enumerate(tbl.column("task_id").to_pylist())}
        mat = list_matrix(tbl.column(family), m)[[order[i] for i in id_list]]
        return meta, mat

    # --- writing -----------------------------------------------------------------------------------
    def add(self, signature: Signature | TaskRecord, *, name: str | None = None, domain: str = "",
            group: str = "", task_type: str = "", corpus_source: str = "", corpus_licence: str = "",
            tags: Any = None, on_conflict: str = "error") -> WriteReport:
        """Store one signature with its task metadata.

        Parameters
        ----------
        signature : Signature or TaskRecord
        name : str, optional
            Defaults to ``signature.meta.task_name``. Stored verbatim.
        domain, group, task_type, corpus_source, corpus_licence, tags
            Task metadata (ignored when a TaskRecord is passed).
        on_conflict : {"error", "skip", "replace"}
            What to do when a task with the same key (name, model, method, m, seed) but different
            vectors is stored. An identical task is always reported as a duplicate and not rewritten.

        Returns
        -------
        WriteReport

        Examples
        --------
        >>> store.add(sig, name="smiles/aromatic", group="SMILES")   # doctest: +SKIP
        WriteReport(added=['smiles/aromatic'], ...)
        """
        if isinstance(signature, Signature):
            signature = TaskRecord(signature, name=name, domain=domain, group=group, task_type=task_type,
                                   corpus_source=corpus_source, corpus_licence=corpus_licence, tags=tags)
        return self.add_many([signature], on_conflict=on_conflict)

    def replace(self, signature: Signature | TaskRecord, **metadata: Any) -> WriteReport:
        """Overwrite a stored task (same key) with new vectors and metadata; it must exist."""
        rec = iter_records([signature])[0] if not metadata else TaskRecord(signature, **metadata)
        return self.add_many([rec], on_conflict="replace", must_exist=True)

    def add_many(self, items: Iterable[Signature | TaskRecord], on_conflict: str = "error", *,
                 must_exist: bool = False) -> WriteReport:
        """Store many tasks in one transaction (all or nothing); see :meth:`add`.

        Every record is validated before anything is written; one invalid record refuses the batch
        with a message naming each bad task, its problem and the fix.
        """
        if on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {ON_CONFLICT}, got {on_conflict!r}")
        records = iter_records(items)
        names = self._validate_all(records)
        report = WriteReport()
        with self._lock:
            plan = self._plan(records, names, on_conflict, must_exist, report)
            if not plan:
                return report
            with self._transaction() as con:
                self._write(con, plan)
        return report

    def _validate_all(self, records: list[TaskRecord]) -> list[str]:
        names, errors = [], []
        for rec in records:
            try:
                names.append(validate_record(rec))
            except InvalidSignatureError as exc:
                errors.append(str(exc))
        if errors:
            head = f"{len(errors)} of {len(records)} signature(s) refused; nothing was written. "
            raise InvalidSignatureError(head + " | ".join(errors[:20]) + (" | …" if len(errors) > 20 else ""))
        return names

    def _existing(self, records: list[TaskRecord], names: list[str]) -> dict[tuple, int]:
        """{key: id} of stored tasks sharing a key with an incoming record."""
        keys = pa.table({
            "name": names,
            "model_id": [r.signature.meta.model_id for r in records],
            "model_hash": [r.signature.meta.model_hash for r in records],
            "method": [r.signature.meta.method for r in records],
            "m": pa.array([int(r.signature.meta.m) for r in records], pa.int32()),
            "seed": pa.array([int(r.signature.meta.seed) for r in records], pa.int64()),
        })
        con = self._connection
        con.register("_incoming_keys", keys)
        try:
            rows = con.execute(
                "SELECT t.id, t.name, t.model_id, t.model_hash, t.method, t.m, t.seed FROM tasks AS t "
                "JOIN (SELECT DISTINCT * FROM _incoming_keys) AS k USING (name, model_id, model_hash, method, m, seed)"
            ).fetchall()
        finally:
            con.unregister("_incoming_keys")
        return {(r[1], r[2], r[3], r[4], int(r[5]), int(r[6])): int(r[0]) for r in rows}

    def _plan(self, records: list[TaskRecord], names: list[str], on_conflict: str, must_exist: bool,
              report: WriteReport) -> list[tuple[TaskRecord, str, int | None]]:
        """Decide per record: add (id None), replace (stored id) or drop; fill the report."""
        existing = self._existing(records, names)
        stored = dict(zip(existing.values(), self.get_many(list(existing.values())))) if existing else {}
        batch: dict[tuple, int] = {}          # key -> index in plan
        plan: list[tuple[TaskRecord, str, int | None]] = []
        conflicts = []
        for rec, name in zip(records, names):
            rec = dataclasses.replace(rec, name=name)
            key = rec.key
            if key in batch:  # the same key twice in one batch
                prev = plan[batch[key]][0]
                if same_vectors(prev.signature, rec.signature):
                    report.duplicates.append(name)
                    continue
                report.conflicts.append(name)
                conflicts.append((name, key, "twice in the incoming batch with different vectors"))
                if on_conflict == "replace":
                    plan[batch[key]] = (rec, name, plan[batch[key]][2])
                elif on_conflict == "skip":
                    report.skipped.append(name)
                continue
            if key in existing:
                sid = existing[key]
                if same_vectors(stored[sid], rec.signature) and not must_exist:
                    report.duplicates.append(name)
                    continue
                if not same_vectors(stored[sid], rec.signature):
                    report.conflicts.append(name)
                    conflicts.append((name, key, f"stored as id {sid} with different vectors"))
                if on_conflict == "skip":
                    report.skipped.append(name)
                    continue
                batch[key] = len(plan)
                plan.append((rec, name, sid))
                continue
            if must_exist:
                raise TaskNotFoundError(f"cannot replace {name!r}: no stored task with key (name, model, "
                                        f"method, m, seed) = {key}. Fix: use add() to store a new task.")
            batch[key] = len(plan)
            plan.append((rec, name, None))
        if conflicts and on_conflict == "error":
            detail = "; ".join(f"{n!r} {why}" for n, _, why in conflicts[:10])
            raise ConflictError(f"{len(conflicts)} incoming task(s) conflict with stored ones: {detail}. "
                                "Nothing was written. Fix: pass on_conflict='skip' to keep the stored "
                                "vectors, on_conflict='replace' to overwrite them, or rename the incoming tasks.")
        for rec, name, sid in plan:
            (report.replaced if sid is not None else report.added).append(name)
        return plan

    def _write(self, con: duckdb.DuckDBPyConnection, plan: list[tuple[TaskRecord, str, int | None]]) -> None:
        n_new = sum(1 for _, _, sid in plan if sid is None)
        new_ids = iter([r[0] for r in con.execute(
            "SELECT nextval('task_id_seq') FROM range(?)", [n_new]).fetchall()])
        replaced = [sid for _, _, sid in plan if sid is not None]
        if replaced:
            self._delete_ids(con, replaced)
        by_m: dict[int, list] = {}
        for rec, name, sid in plan:
            by_m.setdefault(int(rec.signature.meta.m), []).append((rec, name, sid if sid is not None else next(new_ids)))
        cols = ", ".join(f'"{c}"' for c in ("id",) + META_COLUMNS + SCALAR_COLUMNS)
        for m, items in by_m.items():
            table = ensure_vector_table(con, m)
            tasks, vectors = records_to_arrow([r for r, _, _ in items], [n for _, n, _ in items],
                                              [i for _, _, i in items])
            con.register("_new_tasks", tasks)
            con.register("_new_vectors", vectors)
            try:
                con.execute(f"INSERT INTO tasks ({cols}) SELECT {cols} FROM _new_tasks")
                con.execute(f"INSERT INTO {table} SELECT * FROM _new_vectors")
            finally:
                con.unregister("_new_tasks")
                con.unregister("_new_vectors")

    @staticmethod
    def _delete_ids(con: duckdb.DuckDBPyConnection, ids: list[int]) -> None:
        placeholders = ", ".join("?" * len(ids))
        for table in vector_tables(con).values():
            con.execute(f"DELETE FROM {table} WHERE task_id IN ({placeholders})", ids)
        con.execute(f"DELETE FROM tasks WHERE id IN ({placeholders})", ids)

    def delete(self, task: Any, **filters: Any) -> dict[str, Any]:
        """Delete one task (by name or id; filters disambiguate). Returns its metadata row."""
        with self._lock:
            row = self.resolve(task, **filters)
            with self._transaction() as con:
                self._delete_ids(con, [int(row["id"])])
        return row

    def update_metadata(self, task: Any, *, model: Any = None, method: Any = None, m: Any = None,
                        seed: Any = None, **fields: Any) -> None:
        """Change domain, group, task_type, corpus_source, corpus_licence or tags of one task."""
        allowed = {"domain", "group", "task_type", "corpus_source", "corpus_licence", "tags"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}; updatable fields are {sorted(allowed)} "
                             "(vectors and model settings change only through replace())")
        with self._lock:
            row = self.resolve(task, model=model, method=method, m=m, seed=seed)
            with self._transaction() as con:
                for field, value in fields.items():
                    if field == "tags":
                        value = json.dumps(value if value is not None else {}, sort_keys=True)
                    elif not isinstance(value, str):
                        raise ValueError(f"{field} must be a string, got {value!r}")
                    con.execute(f'UPDATE tasks SET "{field}" = ? WHERE id = ?', [value, int(row["id"])])


def check_single_compat_group(meta: pd.DataFrame, what: str = "this query") -> None:
    """Raise ``IncompatibleSignatures`` when rows of ``meta`` cannot all be compared with each other.

    Follows :func:`fishersketch_core.signature.check_compatible`: method, m, seed, d and K must agree;
    ``model_hash`` must agree where known (an empty hash is "unknown" and not compared).
    """
    from ..signature import IncompatibleSignatures
    if meta.empty:
        return
    settings = meta.groupby(["method", "m", "seed", "d", "K"], dropna=False).size()
    hashes = sorted(h for h in meta["model_hash"].unique() if h)
    if len(settings) > 1 or len(hashes) > 1:
        listing = "; ".join(f"method={k[0]!r} m={k[1]} seed={k[2]} d={k[3]} K={k[4]}: {n} task(s)"
                            for k, n in settings.items())
        if len(hashes) > 1:
            listing += f"; model hashes {hashes}"
        raise IncompatibleSignatures(
            f"{what} would mix signatures that cannot be compared ({listing}). "
            "Fix: filter by model=, method=, m= and seed= so that one combination remains.")
