"""Helpers behind the Streamlit app: stores, tables, figures and background jobs (no streamlit here).

The app's pages stay thin: they read widgets, call one function of this module and draw what it
returns. Everything here is testable without a browser or a Streamlit runtime.

Stores
------
A :class:`Workspace` shows two signature stores as one table of tasks:

* the **base store** (default ``data/demo.duckdb``, overridden by ``$FISHERSKETCH_STORE`` or the
  sidebar), always opened read-only and never written;
* the **user store** (default ``~/.cache/fishersketch/user.duckdb``, ``$FISHERSKETCH_USER_STORE``),
  where signatures computed or imported in the app are written. It is opened read-only too, and
  read-write only for the few milliseconds of a write (then read-only again), so the CLI can read
  it while the app runs.

Every task gets a workspace-wide ``uid`` (``"<role>:<id>"``) and a unique display ``label`` (its name,
with ``[role#id]`` appended only when the name repeats). Signatures are compared only inside one
*signature space*: tasks sharing model weights, method, m, seed, d and K.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import align
from .signature import IncompatibleSignatures, Signature
from .store import (InvalidSignatureError, SignatureStore, StoreError, StoreLockedError, TaskRecord,
                    WriteReport, rank_sources)
from .store.io import (_record_signature, export_parquet, read_npz_record, read_parquet_records,
                       records_from_store)

__all__ = [
    "ENV_GAINS", "ENV_STORE", "ENV_USER_STORE", "FAMILIES", "FAMILY_LABELS", "ComputeJob", "ComputeRequest",
    "StoreHandle", "UploadError", "Workspace", "compare_rankings", "decomposition_table", "default_gains_path",
    "default_store_path", "default_user_store_path", "delta_table", "explain_alignment", "fig_delta",
    "fig_group_counts", "fig_heatmap", "fig_hubness", "fig_kronecker_scatter", "fig_pair_bars",
    "fig_task_map", "kronecker_pairs", "nearest_neighbours", "parse_choice", "parse_int", "parse_list",
    "read_gains", "read_upload", "task_map",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_STORE = "FISHERSKETCH_STORE"
ENV_USER_STORE = "FISHERSKETCH_USER_STORE"
ENV_GAINS = "FISHERSKETCH_GAINS"
FAMILIES = ("joint", "activation", "error")
FAMILY_LABELS = {"joint": "joint ρ_F (FisherSketch)", "activation": "activation ρ_h", "error": "error ρ_e"}
BY_LABELS = {"joint": "ρ_F (FisherSketch)", "activation": "ρ_h (activation only)", "error": "ρ_e (error only)",
             "kronecker": "ρ_h·ρ_e (Kronecker)"}
SPACE_COLUMNS = ("model_id", "model_hash", "method", "m", "seed", "d", "K")


def default_store_path() -> Path:
    """The base store: ``$FISHERSKETCH_STORE`` if set, else ``<repo>/data/demo.duckdb``."""
    env = os.environ.get(ENV_STORE)
    return Path(env).expanduser() if env else REPO_ROOT / "data" / "demo.duckdb"


def default_user_store_path() -> Path:
    """The user store: ``$FISHERSKETCH_USER_STORE`` if set, else ``~/.cache/fishersketch/user.duckdb``."""
    env = os.environ.get(ENV_USER_STORE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fishersketch" / "user.duckdb"


def default_gains_path() -> Path:
    """Ground-truth transfer gains: ``$FISHERSKETCH_GAINS`` if set, else ``<repo>/data/results/gains.parquet``."""
    env = os.environ.get(ENV_GAINS)
    return Path(env).expanduser() if env else REPO_ROOT / "data" / "results" / "gains.parquet"


# --- query-parameter parsing (pure) ---------------------------------------------------------------------

def parse_int(value: str | None, default: int, lo: int, hi: int) -> int:
    """An int from a query parameter, clipped to [lo, hi]; ``default`` when absent or malformed.

    Examples
    --------
    >>> parse_int("12", 10, 1, 50), parse_int("x", 10, 1, 50), parse_int("999", 10, 1, 50)
    (12, 10, 50)
    """
    try:
        return int(min(max(int(str(value)), lo), hi))
    except (TypeError, ValueError):
        return default


def parse_choice(value: str | None, choices: Sequence[str], default: str) -> str:
    """``value`` if it is one of ``choices``, else ``default``."""
    return value if value in choices else default


def parse_list(values: Iterable[str] | None, choices: Sequence[str]) -> list[str]:
    """The known values of a repeated query parameter, in order, without duplicates."""
    allowed = set(choices)
    out: list[str] = []
    for v in values or []:
        if v in allowed and v not in out:
            out.append(v)
    return out


# --- stores -----------------------------------------------------------------------------------------------

class StoreHandle:
    """One store file opened read-only, shared by every workspace of this process.

    A write closes the read-only connection, opens the file read-write for the duration of one
    transaction, then reopens it read-only. ``version`` increases with every (re)open, so caches keyed
    by it see new data.
    """

    _registry: dict[str, "StoreHandle"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.RLock()
        self.store: SignatureStore | None = None
        self.error: str = ""
        self.version = 0
        self._stamp: tuple | None = None
        self.open()

    @classmethod
    def get(cls, path: str | os.PathLike) -> "StoreHandle":
        """The process-wide handle of ``path`` (opened on first use)."""
        key = str(Path(path).expanduser().resolve())
        with cls._registry_lock:
            handle = cls._registry.get(key)
            if handle is None:
                handle = cls._registry[key] = cls(Path(key))
        return handle

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.path.stat()
            return (st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    def open(self) -> None:
        """(Re)open read-only; on failure keep the message in ``error`` (never raises).

        ``version`` increases only when what can be read changes (a store opened, or an open one closed),
        so a missing or locked file does not invalidate caches on every call.
        """
        with self.lock:
            was_open = self.store is not None
            if was_open:
                self.store.close()
                self.store = None
            self._stamp = self._file_stamp()
            if not self.path.exists():
                self.error = f"missing: no file at {self.path}"
            else:
                try:
                    self.store = SignatureStore(self.path, read_only=True)
                    self.error = ""
                except (StoreError, OSError) as exc:
                    self.error = str(exc)
            if was_open or self.store is not None:
                self.version += 1

    def refresh(self) -> None:
        """Reopen when the file appeared, changed on disk, or could not be opened (e.g. it was locked)."""
        with self.lock:
            stamp = self._file_stamp()
            if stamp != self._stamp or (self.store is None and stamp is not None):
                self.open()

    @property
    def ok(self) -> bool:
        return self.store is not None

    def write(self, fn: Callable[[SignatureStore], Any]) -> Any:
        """Run ``fn(store)`` on a read-write connection, then reopen read-only (also on failure)."""
        with self.lock:
            if self.store is not None:
                self.store.close()
                self.store = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with SignatureStore(self.path) as rw:
                    return fn(rw)
            finally:
                self.open()


@dataclasses.dataclass(frozen=True)
class StoreStatus:
    """What the Overview page says about one store."""

    role: str
    path: str
    ok: bool
    n_tasks: int
    message: str


class Workspace:
    """The base store (read-only) and the user store (written by the app) seen as one set of tasks.

    Parameters
    ----------
    store_path : path
        The base store, e.g. ``data/demo.duckdb``; opened read-only, never written.
    user_path : path, optional
        Where computed and imported signatures go. Must differ from ``store_path``.

    Examples
    --------
    >>> ws = Workspace("data/demo.duckdb", "/tmp/user.duckdb")       # doctest: +SKIP
    >>> ws.tasks()[["label", "group", "space"]].head()               # doctest: +SKIP
    """

    def __init__(self, store_path: str | os.PathLike, user_path: str | os.PathLike | None = None):
        self.store_path = Path(store_path).expanduser()
        self.user_path = Path(user_path).expanduser() if user_path else None
        if self.user_path is not None and self.user_path.resolve() == self.store_path.resolve():
            raise ValueError(f"the user store {self.user_path} is the base store itself; the app never writes "
                             "into the base store. Fix: choose another file for your store.")
        self.handles: dict[str, StoreHandle] = {"base": StoreHandle.get(self.store_path)}
        if self.user_path is not None:
            self.handles["user"] = StoreHandle.get(self.user_path)
        self._memo: dict[tuple, Any] = {}
        self._memo_lock = threading.RLock()

    # --- state ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up stores that appeared or changed on disk since the last call (cheap: a stat)."""
        for h in self.handles.values():
            h.refresh()

    @property
    def version(self) -> tuple[int, ...]:
        """Changes whenever any store is reopened; part of every cache key."""
        return tuple(h.version for h in self.handles.values())

    @property
    def cache_key(self) -> tuple:
        """Identifies this workspace's current contents across the process (paths + version)."""
        return (str(self.store_path), str(self.user_path), self.version)

    def _cached(self, key: tuple, fn: Callable[[], Any]) -> Any:
        key = (self.version,) + key
        with self._memo_lock:
            if key in self._memo:
                return self._memo[key]
        value = fn()
        with self._memo_lock:
            stale = [k for k in self._memo if k[0] != self.version]
            for k in stale:
                del self._memo[k]
            self._memo[key] = value
        return value

    def statuses(self) -> list[StoreStatus]:
        out = []
        for role, h in self.handles.items():
            n = 0
            if h.ok:
                with h.lock:
                    n = len(h.store)
            msg = h.error
            if role == "user" and not h.ok and not h.path.exists():
                msg = "not created yet: it is created when you compute or import a signature"
            out.append(StoreStatus(role=role, path=str(h.path), ok=h.ok, n_tasks=n, message=msg))
        return out

    # --- reading --------------------------------------------------------------------------------
    def tasks(self) -> pd.DataFrame:
        """Metadata of every task in the open stores, with ``uid``, ``store``, ``label`` and ``space``."""
        return self._cached(("tasks",), self._tasks)

    def _tasks(self) -> pd.DataFrame:
        frames = []
        for role, h in self.handles.items():
            if not h.ok:
                continue
            with h.lock:
                df = h.store.list()
            df.insert(0, "store", role)
            df.insert(0, "uid", [f"{role}:{i}" for i in df["id"]])
            frames.append(df)
        if not frames:
            cols = ["uid", "store", "id", "name", "label", "domain", "group", "task_type", "model_id", "model_hash",
                    "method", "m", "seed", "d", "K", "n_positions", "delta_u", "delta_u_se", "space"]
            return pd.DataFrame(columns=cols)
        df = pd.concat(frames, ignore_index=True)
        dup = df["name"].duplicated(keep=False)
        df.insert(3, "label", np.where(dup, df["name"] + " [" + df["uid"].str.replace(":", "#") + "]", df["name"]))
        df["space"] = space_labels(df)
        df["group"] = df["group"].fillna("").replace("", "(none)")
        return df

    def spaces(self) -> pd.DataFrame:
        """Signature spaces (one model + sketch setting) with their task counts, largest first."""
        t = self.tasks()
        if t.empty:
            return pd.DataFrame(columns=["space", "n_tasks", *SPACE_COLUMNS])
        g = t.groupby("space", sort=False).agg(n_tasks=("uid", "size"), **{c: (c, "first") for c in SPACE_COLUMNS})
        return g.reset_index().sort_values(["n_tasks", "space"], ascending=[False, True]).reset_index(drop=True)

    def tasks_in(self, space: str, groups: Sequence[str] | None = None) -> pd.DataFrame:
        """Tasks of one signature space (optionally of some groups), ordered by group then label."""
        t = self.tasks()
        t = t[t["space"] == space]
        if groups:
            t = t[t["group"].isin(list(groups))]
        return t.sort_values(["group", "label"]).reset_index(drop=True)

    def row(self, uid: str) -> pd.Series:
        t = self.tasks()
        hit = t[t["uid"] == uid]
        if hit.empty:
            raise KeyError(f"no task {uid!r} in the open stores")
        return hit.iloc[0]

    def signatures(self, uids: Sequence[str]) -> list[Signature]:
        """Signatures of the given tasks, in order (read from their stores)."""
        out: dict[str, Signature] = {}
        by_role: dict[str, list[int]] = {}
        for uid in uids:
            role, i = uid.split(":")
            by_role.setdefault(role, []).append(int(i))
        for role, ids in by_role.items():
            h = self.handles[role]
            with h.lock:
                if not h.ok:
                    raise StoreError(f"the {role} store {h.path} is not open: {h.error}")
                for i, sig in zip(ids, h.store.get_many(ids)):
                    out[f"{role}:{i}"] = sig
        return [out[u] for u in uids]

    def matrix(self, space: str, family: str = "joint") -> tuple[pd.DataFrame, np.ndarray]:
        """Metadata (ordered as :meth:`tasks_in`) and the (n, m) float32 full means of one family."""
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        return self._cached(("matrix", space, family), lambda: self._matrix(space, family))

    def _matrix(self, space: str, family: str) -> tuple[pd.DataFrame, np.ndarray]:
        meta = self.tasks_in(space)
        if meta.empty:
            return meta, np.zeros((0, 0), np.float32)
        parts = {}
        for role, sub in meta.groupby("store"):
            h = self.handles[role]
            with h.lock:
                m_meta, mat = h.store.matrix(family, ids=sub["id"].tolist())
            for i, row in zip(m_meta["id"], mat):
                parts[f"{role}:{i}"] = row
        return meta, np.stack([parts[u] for u in meta["uid"]]).astype(np.float32)

    def rho(self, space: str, family: str = "joint", form: str = "U") -> tuple[pd.DataFrame, np.ndarray]:
        """Pairwise alignments ρ of one family over a space (the same formula as the SQL ranking).

        ``ρ_X(S, T) = ⟨μ_S, μ_T⟩ / sqrt(n_S n_T)`` with the stored self inner products n (U form:
        ⟨μ⁽⁰⁾, μ⁽¹⁾⟩, same-position pairs dropped; V form: ‖μ‖²). The diagonal is set to 1.
        """
        if form not in ("U", "V"):
            raise ValueError(f"form must be 'U' or 'V', got {form!r}")

        def compute() -> tuple[pd.DataFrame, np.ndarray]:
            meta, x = self.matrix(space, family)
            if meta.empty:
                return meta, np.zeros((0, 0))
            x = x.astype(np.float64)
            n = meta[f"self_{form.lower()}_{family}"].to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = (x @ x.T) / np.sqrt(np.outer(n, n))
            np.fill_diagonal(r, 1.0)
            return meta, r

        return self._cached(("rho", space, family, form), compute)

    def delta(self, space: str, form: str = "U") -> pd.DataFrame:
        """:func:`delta_table` of every task of a space (memoised until a store changes)."""
        def compute() -> pd.DataFrame:
            meta = self.tasks_in(space)
            return delta_table(meta, self.signatures(meta["uid"].tolist()), form=form)
        return self._cached(("delta", space, form), compute)

    def pairs(self, space: str, form: str = "U") -> pd.DataFrame:
        """:func:`kronecker_pairs` of a space: ρ_F, ρ_h, ρ_e, ρ_h·ρ_e for every pair (memoised)."""
        def compute() -> pd.DataFrame:
            rho = {}
            meta = None
            for fam in FAMILIES:
                meta, rho[fam] = self.rho(space, fam, form)
            return kronecker_pairs(meta, rho)
        return self._cached(("pairs", space, form), compute)

    def warm(self) -> None:
        """Precompute what the pages read first (tasks, ρ matrices, δ of the largest space); never raises."""
        try:
            spaces = self.spaces()
            if len(spaces):
                space = spaces["space"].iloc[0]
                self.delta(space)
                self.pairs(space)
        except Exception:  # a store that cannot be read shows its own message in the pages
            pass

    def start_warming(self) -> threading.Thread:
        """:meth:`warm` in a daemon thread (the app calls it when a workspace is opened)."""
        t = threading.Thread(target=self.warm, name="fishersketch-warm", daemon=True)
        t.start()
        return t

    def full_ranking(self, target_uid: str, by: str = "joint", form: str = "U",
                     groups: Sequence[str] | None = None) -> pd.DataFrame:
        """Every compatible candidate ranked for a target, from the memoised ρ matrices (NumPy, float64).

        Same scores and order rule as ``rank_sources`` (score descending, ties by uid); used for the
        rank of each source under another method and for rank correlations, where a full list is needed.
        Columns ``rank, uid, store, label, group, score``.
        """
        space = self.row(target_uid)["space"]
        if by == "kronecker":
            meta, rh = self.rho(space, "activation", form)
            _, re_ = self.rho(space, "error", form)
            r = rh * re_
        else:
            meta, r = self.rho(space, by, form)
        i = int(np.flatnonzero(meta["uid"].to_numpy() == target_uid)[0])
        df = meta[["uid", "store", "label", "group"]].assign(score=r[:, i])
        df = df[df["uid"] != target_uid]
        if groups:
            df = df[df["group"].isin(list(groups))]
        df = df[np.isfinite(df["score"].to_numpy())]
        df = df.sort_values(["score", "uid"], ascending=[False, True]).reset_index(drop=True)
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        return df

    def alignments_to(self, target_uid: str, form: str = "U") -> pd.DataFrame:
        """ρ_F, ρ_h, ρ_e, κ and ρ_h·ρ_e of every task of the target's space with the target (memoised ρ)."""
        space = self.row(target_uid)["space"]
        out = None
        for fam, col in (("joint", "rho_F"), ("activation", "rho_h"), ("error", "rho_e")):
            meta, r = self.rho(space, fam, form)
            i = int(np.flatnonzero(meta["uid"].to_numpy() == target_uid)[0])
            if out is None:
                out = meta[["uid", "store"]].copy()
            out[col] = r[:, i]
        out["kronecker"] = out["rho_h"] * out["rho_e"]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["kappa"] = out["rho_F"] / out["kronecker"]
        return out

    def rank(self, target_uid: str, k: int = 10, by: str = "joint", form: str = "U",
             groups: Sequence[str] | None = None, with_se: bool = True) -> pd.DataFrame:
        """Top-k sources for a target across the open stores, ranked in SQL (``rank_sources``).

        Each store ranks its own compatible candidates (a target stored elsewhere is passed as its
        signature); the lists are merged by score. Adds ``uid``, ``store`` and ``label`` columns.
        """
        target = self.row(target_uid)
        frames = []
        tsig: Signature | None = None
        for role, h in self.handles.items():
            if not h.ok:
                continue
            with h.lock:
                try:
                    if role == target["store"]:
                        df = rank_sources(h.store, int(target["id"]), k=k, by=by, form=form,
                                          group=list(groups) if groups else None, with_se=with_se)
                    else:
                        if tsig is None:
                            tsig = self.signatures([target_uid])[0].with_meta(task_name=str(target["name"]))
                        df = rank_sources(h.store, tsig, k=k, by=by, form=form,
                                          group=list(groups) if groups else None, with_se=with_se)
                except IncompatibleSignatures:
                    continue  # this store holds no signature comparable with the target
            df.insert(1, "store", role)
            frames.append(df)
        cols = ["rank", "uid", "store", "label", "group", "score", "rho_F", "rho_h", "rho_e", "kappa",
                "kronecker", "rho_F_se", "rho_h_se", "rho_e_se", "kappa_se", "n_positions"]
        if not frames:
            return pd.DataFrame(columns=cols)
        df = pd.concat(frames, ignore_index=True)
        df["uid"] = df["store"] + ":" + df["id"].astype(str)
        labels = self.tasks().set_index("uid")["label"]
        df["label"] = df["uid"].map(labels).fillna(df["name"])
        df["group"] = df["group"].fillna("").replace("", "(none)")
        df = df.sort_values(["score", "uid"], ascending=[False, True]).head(k).reset_index(drop=True)
        df["rank"] = np.arange(1, len(df) + 1)
        return df[cols]

    # --- writing (user store only) ----------------------------------------------------------------
    def _user(self) -> StoreHandle:
        if "user" not in self.handles:
            raise StoreError("no user store is configured; set one in the sidebar to compute or import signatures")
        return self.handles["user"]

    def add_signature(self, sig: Signature, *, name: str, group: str = "", domain: str = "",
                      task_type: str = "", corpus_source: str = "", tags: Mapping[str, Any] | None = None,
                      on_conflict: str = "error") -> WriteReport:
        """Write one signature to the user store (never to the base store)."""
        rec = TaskRecord(sig, name=name, group=group, domain=domain, task_type=task_type,
                         corpus_source=corpus_source, tags=dict(tags or {}))
        return self._user().write(lambda st: st.add_many([rec], on_conflict=on_conflict))

    def import_records(self, records: Sequence[TaskRecord], on_conflict: str = "error") -> WriteReport:
        """Write already-validated records to the user store in one transaction."""
        return self._user().write(lambda st: st.add_many(list(records), on_conflict=on_conflict))

    def delete(self, uid: str) -> None:
        """Delete a task of the user store (tasks of the base store cannot be deleted here)."""
        role, i = uid.split(":")
        if role != "user":
            raise StoreError("only tasks of your user store can be deleted; the base store is read-only")
        self._user().write(lambda st: st.delete(int(i)))

    # --- export ---------------------------------------------------------------------------------
    def records(self, uids: Sequence[str]) -> list[TaskRecord]:
        """The stored records (signature + metadata) of the given tasks, in order."""
        out: dict[str, TaskRecord] = {}
        by_role: dict[str, list[int]] = {}
        for uid in uids:
            role, i = uid.split(":")
            by_role.setdefault(role, []).append(int(i))
        for role, ids in by_role.items():
            h = self.handles[role]
            with h.lock:
                recs = records_from_store(h.store, ids=ids)
                meta = h.store.list(ids=ids)
            for i, rec in zip(meta["id"], recs):
                out[f"{role}:{i}"] = rec
        return [out[u] for u in uids if u in out]

    def export_parquet_bytes(self, uids: Sequence[str]) -> bytes:
        """A Parquet export (``export_parquet`` format, importable anywhere) of the given tasks."""
        if not uids:
            raise ValueError("select at least one task to export")
        recs = self.records(uids)
        with tempfile.TemporaryDirectory(prefix="fs-export-") as tmp:
            with SignatureStore(Path(tmp) / "export.duckdb") as st:
                st.add_many(recs, on_conflict="skip")
                export_parquet(st, Path(tmp) / "out.parquet")
            return (Path(tmp) / "out.parquet").read_bytes()

    def export_npz_bytes(self, uids: Sequence[str]) -> tuple[bytes, str]:
        """One task: its ``.npz`` signature file; several: a zip of them. Returns (bytes, file name)."""
        if not uids:
            raise ValueError("select at least one task to export")
        recs = self.records(uids)
        files = []
        with tempfile.TemporaryDirectory(prefix="fs-export-") as tmp:
            for i, rec in enumerate(recs):
                p = _record_signature(rec).save(Path(tmp) / f"{i}.npz")
                files.append((f"{_slug(rec.task_name)}.npz", p.read_bytes()))
        if len(files) == 1:
            return files[0][1], files[0][0]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for fname, data in files:
                zf.writestr(fname, data)
        return out.getvalue(), "signatures.zip"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")[:80] or "task"


def space_label(row: Any) -> str:
    """A readable, unique key of a signature space: model, method, m, seed, weights hash prefix."""
    model_id, model_hash, method, m, seed, d, K = row
    h = (model_hash or "").removeprefix("sha256:")[:8] or "no-hash"
    return f"{model_id or '?'} · {method} · m={int(m)} · seed={int(seed)} · d={int(d)} K={int(K)} · {h}"


def _space_key(row: Any) -> tuple:
    mid, h, meth, m, s, d, k = row
    return (h or f"id:{mid}", meth, int(m), int(s), int(d), int(k))


def space_labels(df: pd.DataFrame) -> list[str]:
    """The signature space of every row: tasks that may be compared share one label.

    Comparability follows the store's rule (same method, m, seed, d, K and weights hash); the model
    name is only shown (the first one seen for a hash), so renaming a model does not split a space.
    """
    keys = [_space_key(row) for row in df[list(SPACE_COLUMNS)].itertuples(index=False)]
    first: dict[tuple, str] = {}
    for key, row in zip(keys, df[list(SPACE_COLUMNS)].itertuples(index=False)):
        first.setdefault(key, space_label(tuple(row)))
    return [first[k] for k in keys]


# --- uploads ----------------------------------------------------------------------------------------------

class UploadError(ValueError):
    """An uploaded file cannot be used; the message names the problem and the fix."""


def read_upload(filename: str, data: bytes) -> list[TaskRecord]:
    """Validate an uploaded signature file and return its records (nothing is written).

    Parameters
    ----------
    filename : str
        Decides the format: ``.parquet`` (``export_parquet``), ``.npz`` (``Signature.save``),
        ``.duckdb`` (another store) or ``.zip`` (of ``.npz`` files).
    data : bytes

    Raises
    ------
    UploadError
        With the file name, the problem and the fix.
    """
    suffix = Path(filename).suffix.lower()
    if not data:
        raise UploadError(f"{filename} is empty. Fix: upload a signature file (.parquet, .npz, .zip or .duckdb).")
    with tempfile.TemporaryDirectory(prefix="fs-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            if suffix == ".parquet":
                return read_parquet_records(path)
            if suffix == ".npz":
                return [read_npz_record(path)]
            if suffix == ".zip":
                recs = []
                try:
                    zf = zipfile.ZipFile(path)
                except zipfile.BadZipFile:
                    raise UploadError(f"{filename} is not a zip archive. Fix: upload a .zip of .npz signature files.")
                with zf:
                    names = [n for n in zf.namelist() if n.endswith(".npz")]
                    if not names:
                        raise UploadError(f"{filename} holds no .npz file. Fix: zip .npz signature files.")
                    for n in names:
                        p = Path(tmp) / f"z{len(recs)}.npz"
                        p.write_bytes(zf.read(n))
                        try:
                            recs.append(read_npz_record(p))
                        except (ValueError, StoreError) as exc:
                            raise UploadError(f"{filename}/{n}: {exc}") from None
                return recs
            if suffix in (".duckdb", ".db"):
                with SignatureStore(path, read_only=True) as other:
                    return records_from_store(other)
        except UploadError:
            raise
        except (StoreError, ValueError, OSError, KeyError) as exc:
            msg = _strip_tmp(str(exc), path, filename)
            raise UploadError(msg if msg.startswith(filename) else f"{filename} was refused: {msg}") from None
        except Exception as exc:  # a malformed file can make any parser fail
            raise UploadError(f"{filename} is not a readable signature file ({type(exc).__name__}: "
                              f"{_strip_tmp(str(exc), path, filename)}). Fix: upload a file written by "
                              "export_parquet(), Signature.save() or a FisherSketch store.") from None
    raise UploadError(f"{filename}: unknown file type {suffix or '(none)'}. Fix: upload a .parquet export, "
                      "a .npz signature, a .zip of .npz files, or a .duckdb store.")


def _strip_tmp(text: str, path: Path, filename: str) -> str:
    return text.replace(str(path), filename)


def records_summary(records: Sequence[TaskRecord]) -> pd.DataFrame:
    """One row per record: name, group, model, method, m, seed, positions."""
    return pd.DataFrame([{"name": r.task_name, "group": r.group, "domain": r.domain,
                          "model": r.signature.meta.model_id, "method": r.signature.meta.method,
                          "m": r.signature.meta.m, "seed": r.signature.meta.seed,
                          "positions": r.signature.n_positions} for r in records])


def check_records_against(records: Sequence[TaskRecord], ws: Workspace) -> list[str]:
    """Warnings for records that cannot be compared with any task already open (other model/m/seed)."""
    t = ws.tasks()
    if t.empty:
        return []
    keys = {_space_key(row) for row in t[list(SPACE_COLUMNS)].itertuples(index=False)}
    out = []
    for r in records:
        m = r.signature.meta
        if _space_key((m.model_id, m.model_hash, m.method, m.m, m.seed, m.d, m.K)) not in keys:
            out.append(f"{r.task_name!r} ({m.model_id or '?'}, {m.method}, m={m.m}, seed={m.seed}) matches no "
                       "signature space already open: it will be stored, but it can only be compared with "
                       "signatures computed with the same model and sketch settings")
    return out


# --- decomposition ------------------------------------------------------------------------------------------

def decomposition_table(target: Signature, sources: Sequence[Signature], labels: Sequence[str],
                        form: str = "U") -> pd.DataFrame:
    """ρ_F, ρ_h, ρ_e, κ and their standard errors for each (source, target) pair.

    Returns
    -------
    DataFrame
        Columns ``source, rho_F, rho_F_se, rho_h, rho_h_se, rho_e, rho_e_se, kappa, kappa_se,
        kronecker, explanation``, in the order given.
    """
    rows = []
    for lab, sig in zip(labels, sources):
        a = align.alignment(sig, target, form=form)
        rows.append({"source": lab, "rho_F": a.joint.value, "rho_F_se": a.joint.se,
                     "rho_h": a.activation.value, "rho_h_se": a.activation.se,
                     "rho_e": a.error.value, "rho_e_se": a.error.se,
                     "kappa": a.coupling.value, "kappa_se": a.coupling.se, "kronecker": a.kronecker,
                     "explanation": explain_alignment(a.joint.value, a.activation.value, a.error.value,
                                                      a.coupling.value)})
    return pd.DataFrame(rows)


def explain_alignment(rho_f: float, rho_h: float, rho_e: float, kappa: float) -> str:
    """One sentence saying where the joint alignment ρ_F = ρ_h · ρ_e · κ comes from.

    The factor furthest below 1 (in log terms) is what limits ρ_F; κ > 1 means the coupling of
    activations and errors adds alignment beyond the Kronecker (K-FAC) prediction.

    Examples
    --------
    >>> explain_alignment(0.2, 0.95, 0.25, 0.84).split(":")[0]
    'ρ_F = 0.200 = ρ_h 0.950 × ρ_e 0.250 × κ 0.842'
    """
    vals = {"ρ_h": rho_h, "ρ_e": rho_e, "κ": kappa}
    if not all(np.isfinite(v) and v > 0 for v in (rho_f, rho_h, rho_e)) or not np.isfinite(kappa):
        return (f"ρ_F = {rho_f:.3f}, ρ_h = {rho_h:.3f}, ρ_e = {rho_e:.3f}: an alignment is ≤ 0 or undefined "
                "(a tiny task or an incompatible pair), so it cannot be split into factors.")
    head = f"ρ_F = {rho_f:.3f} = ρ_h {rho_h:.3f} × ρ_e {rho_e:.3f} × κ {kappa:.3f}"
    logs = {k: -math.log(v) for k, v in vals.items() if v > 0}
    limiting = max(logs, key=logs.get)
    what = {"ρ_h": "the activations (inputs to the head) differ",
            "ρ_e": "the errors (what the model gets wrong) differ",
            "κ": "activations and errors are coupled differently in the two tasks"}
    if rho_h >= 0.9 and rho_e < rho_h:
        lead = ("the activations look alike (ρ_h ≥ 0.9, activation-dark), so the similarity is decided by "
                "the errors")
    elif logs[limiting] < 0.1:
        lead = "every factor is close to 1: the tasks are nearly identical in activations, errors and coupling"
    else:
        lead = f"it is limited mostly by {limiting}: {what[limiting]}"
    if kappa > 1.05:
        tail = f"; the coupling adds {100 * (kappa - 1):.0f}% beyond the Kronecker prediction ρ_h·ρ_e"
    elif kappa < 0.95:
        tail = f"; the coupling removes {100 * (1 - kappa):.0f}% from the Kronecker prediction ρ_h·ρ_e"
    else:
        tail = "; the Kronecker prediction ρ_h·ρ_e is within 5% of ρ_F"
    return f"{head}: {lead}{tail}."


def summarise_sources(table: pd.DataFrame) -> str:
    """A sentence over all pairs: which factor limits ρ_F most often, and the mean κ."""
    if table.empty:
        return ""
    ok = table[(table[["rho_F", "rho_h", "rho_e", "kappa"]] > 0).all(axis=1)]
    if ok.empty:
        return "No pair has positive alignments in every factor, so none can be decomposed."
    logs = pd.DataFrame({"activation (ρ_h)": -np.log(ok["rho_h"]), "error (ρ_e)": -np.log(ok["rho_e"]),
                         "coupling (κ)": -np.log(ok["kappa"]).clip(lower=0)})
    counts = logs.idxmax(axis=1).value_counts()
    top = counts.index[0]
    return (f"Across {len(ok)} pair(s), similarity is lost mostly to {top} ({counts.iloc[0]} of {len(ok)}); "
            f"mean ρ_h = {ok['rho_h'].mean():.3f}, mean ρ_e = {ok['rho_e'].mean():.3f}, "
            f"mean κ = {ok['kappa'].mean():.3f}.")


# --- Kronecker δ ------------------------------------------------------------------------------------------------

def delta_table(meta: pd.DataFrame, sigs: Sequence[Signature], form: str = "U", z: float = 1.96) -> pd.DataFrame:
    """δ_T = ‖F − A⊗G‖/‖F‖ of each task with its standard error and interval.

    Returns
    -------
    DataFrame
        ``label, group, model_id, store, delta, se, lo, hi, delta_sq, n_positions, form``, sorted by
        group, model, then δ (descending).
    """
    rows = []
    for (_, r), sig in zip(meta.iterrows(), sigs):
        try:
            kd = align.kronecker_delta(sig, form=form)
        except ValueError:
            continue  # a task without positions in one half has no U-form δ
        lo, hi = kd.interval(z)
        rows.append({"label": r["label"], "group": r["group"], "model_id": r["model_id"], "store": r["store"],
                     "delta": kd.value, "se": kd.se, "lo": lo, "hi": hi, "delta_sq": kd.delta_sq,
                     "n_positions": kd.n_positions, "form": form})
    df = pd.DataFrame(rows, columns=["label", "group", "model_id", "store", "delta", "se", "lo", "hi", "delta_sq",
                                     "n_positions", "form"])
    return df.sort_values(["group", "model_id", "delta"], ascending=[True, True, False]).reset_index(drop=True)


def delta_by_group(df: pd.DataFrame) -> pd.DataFrame:
    """Per group and model: number of tasks, median δ, and how many intervals exclude 0."""
    if df.empty:
        return pd.DataFrame(columns=["group", "model_id", "n_tasks", "median_delta", "n_excluding_0"])
    g = df.assign(excl=df["lo"] > 0).groupby(["group", "model_id"])
    return g.agg(n_tasks=("label", "size"), median_delta=("delta", "median"),
                 n_excluding_0=("excl", "sum")).reset_index()


def kronecker_pairs(meta: pd.DataFrame, rho: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Every unordered pair of tasks with ρ_F, ρ_h, ρ_e and the Kronecker prediction ρ_h·ρ_e."""
    n = len(meta)
    iu, ju = np.triu_indices(n, k=1)
    labels = meta["label"].to_numpy()
    groups = meta["group"].to_numpy()
    df = pd.DataFrame({"a": labels[iu], "b": labels[ju], "rho_F": rho["joint"][iu, ju],
                       "rho_h": rho["activation"][iu, ju], "rho_e": rho["error"][iu, ju],
                       "same_group": groups[iu] == groups[ju]})
    df["kronecker"] = df["rho_h"] * df["rho_e"]
    return df


# --- task map ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MapResult:
    """2-D coordinates of tasks and how they were obtained (``note`` explains any fallback)."""

    coords: np.ndarray
    method: str
    params: dict
    note: str = ""
    seconds: float = 0.0


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def task_map(x: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15,
             min_dist: float = 0.1) -> MapResult:
    """2-D map of signatures (rows L2-normalised, so distances follow cosine alignment).

    Parameters
    ----------
    x : ndarray (n, m)
        Full feature means of one family.
    method : {"umap", "pca"}
    seed : int
        ``random_state`` of UMAP (deterministic, single-threaded).
    n_neighbors, min_dist : UMAP settings; ``n_neighbors`` is lowered to n − 1 for small n.

    Returns
    -------
    MapResult
        Fewer than 2 tasks raise ``ValueError``; 2 tasks fall back to PCA (UMAP cannot embed 2 points);
        3 tasks use ``init="random"`` (the spectral initialisation fails there).
    """
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(f"a map needs at least 2 tasks, this selection has {n}; add tasks or widen the filters")
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca', got {method!r}")
    t0 = time.perf_counter()
    xn = _normalised(x)
    note = ""
    if method == "umap" and n < 3:
        method, note = "pca", "UMAP needs at least 3 tasks; showing PCA instead."
    if method == "pca":
        # PCA through the n × n Gram matrix (an SVD of the wide n × m matrix is far slower here)
        xc = xn - xn.mean(0, keepdims=True)
        w, u = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(w)[::-1][:2]
        lam = np.clip(w[order], 0.0, None)
        coords = u[:, order] * np.sqrt(lam)
        if coords.shape[1] < 2:
            coords = np.column_stack([coords, np.zeros(n)])
        # a deterministic sign per axis
        signs = np.sign(coords[np.argmax(np.abs(coords), axis=0), np.arange(2)])
        coords = coords * np.where(signs == 0, 1, signs)
        var = lam / max(float(np.clip(w, 0.0, None).sum()), 1e-300)
        params = {"explained_variance": [float(v) for v in var[:2]]}
        return MapResult(coords, "pca", params, note, time.perf_counter() - t0)
    import umap  # noqa: PLC0415 - slow import (numba), only when a UMAP map is asked for

    nn = int(min(max(n_neighbors, 2), n - 1))
    init = "spectral"
    notes = []
    if nn != n_neighbors:
        notes.append(f"n_neighbors lowered to {nn} (n − 1 for {n} tasks)")
    if n <= 4:
        init = "random"
        notes.append("random initialisation (the spectral one fails on so few tasks)")
    reducer = umap.UMAP(n_neighbors=nn, min_dist=float(min_dist), random_state=int(seed), init=init,
                        metric="euclidean", n_components=2)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = reducer.fit_transform(xn)
    params = {"n_neighbors": nn, "min_dist": float(min_dist), "init": init, "seed": int(seed)}
    note = "; ".join(notes).capitalize() + ("." if notes else "")
    return MapResult(np.asarray(coords, dtype=np.float64), "umap", params, note, time.perf_counter() - t0)


def nearest_neighbours(meta: pd.DataFrame, rho: np.ndarray, selected: Sequence[str], k: int = 5) -> pd.DataFrame:
    """Nearest tasks of each selected task in the full signature space (by ρ, not by map distance).

    Returns
    -------
    DataFrame
        ``selected, rank, neighbour, group, rho``: k rows per selected label.
    """
    labels = meta["label"].tolist()
    index = {lab: i for i, lab in enumerate(labels)}
    rows = []
    for lab in selected:
        if lab not in index:
            continue
        i = index[lab]
        r = rho[i].copy()
        r[i] = -np.inf
        order = np.argsort(-r, kind="stable")[: min(k, len(labels) - 1)]
        for rank, j in enumerate(order, 1):
            rows.append({"selected": lab, "rank": rank, "neighbour": labels[j], "group": meta["group"].iloc[j],
                         "rho": float(rho[i, j])})
    return pd.DataFrame(rows, columns=["selected", "rank", "neighbour", "group", "rho"])


def tag_columns(meta: pd.DataFrame) -> list[str]:
    """Tag keys present in the tasks' ``tags`` JSON (for colouring the map)."""
    keys: set[str] = set()
    for t in meta.get("tags", []):
        if isinstance(t, dict):
            keys.update(t)
    return sorted(keys)


def colour_values(meta: pd.DataFrame, colour: str) -> list[str]:
    """Values to colour the map by: a metadata column, or ``tag:<key>``."""
    if colour.startswith("tag:"):
        key = colour[4:]
        return [str(t.get(key, "")) if isinstance(t, dict) else "" for t in meta["tags"]]
    return meta[colour].astype(str).tolist()


# --- ranking comparison ---------------------------------------------------------------------------------------

def compare_rankings(primary: pd.DataFrame, baseline: pd.DataFrame, k: int) -> tuple[pd.DataFrame, dict]:
    """Put two full rankings of the same candidates side by side.

    Parameters
    ----------
    primary, baseline : DataFrame
        Full rankings with at least ``rank, uid, label`` (e.g. :meth:`Workspace.full_ranking` by ρ_F and
        by ρ_h).
    k : int
        How many of each ranking's top sources to show.

    Returns
    -------
    table : DataFrame
        The primary's top k plus any source in the baseline's top k, with ``rank`` (primary),
        ``baseline_rank`` and ``disagree`` (in one top k but not the other, or ranks differ by more
        than max(3, k/3)).
    summary : dict
        ``top1_agree``, ``overlap`` (shared sources in the two top-k lists), ``spearman`` over all
        candidates, ``n_candidates``, ``primary_top1`` and ``baseline_top1``.
    """
    if primary.empty:
        return primary.assign(baseline_rank=pd.Series(dtype=int), disagree=pd.Series(dtype=bool)), {
            "top1_agree": False, "overlap": 0, "spearman": float("nan"), "n_candidates": 0,
            "primary_top1": None, "baseline_top1": None}
    base_rank = baseline.set_index("uid")["rank"]
    full = primary.copy()
    full["baseline_rank"] = full["uid"].map(base_rank)
    top_p = set(primary["uid"].head(k))
    top_b = set(baseline["uid"].head(k))
    show = full[full["uid"].isin(top_p | top_b)].copy()
    tol = max(3, k // 3)
    show["disagree"] = (show["uid"].isin(top_p) != show["uid"].isin(top_b)) | (
        (show["rank"] - show["baseline_rank"]).abs() > tol)
    both = full.dropna(subset=["baseline_rank"])
    if len(both) > 2:
        rho_s = float(pd.Series(both["rank"].to_numpy()).corr(pd.Series(both["baseline_rank"].to_numpy()),
                                                                method="spearman"))
    else:
        rho_s = float("nan")
    summary = {"top1_agree": bool(primary["uid"].iloc[0] == baseline["uid"].iloc[0]),
               "overlap": len(top_p & top_b), "spearman": rho_s, "n_candidates": int(len(primary)),
               "primary_top1": primary["label"].iloc[0], "baseline_top1": baseline["label"].iloc[0]}
    return show.reset_index(drop=True), summary


@dataclasses.dataclass
class RankingView:
    """What the Source ranking page shows (see :func:`ranking_view`)."""

    table: pd.DataFrame      # the primary's top k ∪ the baseline's top k, with ρ's, SEs, both ranks, disagree
    baseline_top: pd.DataFrame  # the baseline's own top k (DuckDB)
    summary: dict            # top-1 of each, agreement, overlap, Spearman, n_candidates
    export: pd.DataFrame     # every candidate with both ranks and scores (the CSV download)
    seconds: float


def ranking_view(ws: Workspace, target_uid: str, k: int = 10, baseline: str = "activation", form: str = "U",
                 groups: Sequence[str] | None = None) -> RankingView:
    """Rank sources for a target by ρ_F and by a baseline, side by side.

    The two top-k lists (and the SEs) come from DuckDB (:meth:`Workspace.rank`); the rank of every
    candidate under both methods, needed for the disagreement flags and the Spearman correlation, comes
    from the memoised ρ matrices (:meth:`Workspace.full_ranking`), which use the same formula.
    """
    t0 = time.perf_counter()
    sel = list(groups) if groups else None
    top = ws.rank(target_uid, k=int(k), by="joint", form=form, groups=sel, with_se=True)
    top_b = ws.rank(target_uid, k=int(k), by=baseline, form=form, groups=sel, with_se=False)
    full_f = ws.full_ranking(target_uid, by="joint", form=form, groups=sel)
    full_b = ws.full_ranking(target_uid, by=baseline, form=form, groups=sel)
    if top.empty:
        return RankingView(top, top_b, {"n_candidates": 0}, top, time.perf_counter() - t0)
    table, summary = compare_rankings(full_f, full_b, int(k))
    summary.update(primary_top1=top["label"].iloc[0], baseline_top1=top_b["label"].iloc[0],
                   top1_agree=bool(top["uid"].iloc[0] == top_b["uid"].iloc[0]))
    cols = ["uid", "store", "rho_F", "rho_h", "rho_e", "kappa", "kronecker", "rho_F_se", "rho_h_se", "rho_e_se",
            "kappa_se"]
    table = table.drop(columns=["store"]).merge(top[cols], on="uid", how="left")
    if table["rho_F"].isna().any():  # sources only in the baseline's top k: ρ's from the memoised matrices
        fill = ws.alignments_to(target_uid, form=form).set_index("uid")
        for c in ("store", "rho_F", "rho_h", "rho_e", "kappa", "kronecker"):
            table[c] = table[c].fillna(table["uid"].map(fill[c]))
    export = full_f.rename(columns={"rank": "rank_fishersketch", "score": "rho_F"}).merge(
        full_b[["uid", "rank", "score"]].rename(columns={"rank": f"rank_{baseline}", "score": f"score_{baseline}"}),
        on="uid", how="left").merge(top[["uid", "rho_F_se", "rho_h", "rho_e", "kappa"]], on="uid", how="left")
    export.insert(0, "target", ws.row(target_uid)["label"])
    return RankingView(table, top_b, summary, export, time.perf_counter() - t0)


# --- bias audit ------------------------------------------------------------------------------------------

def score_matrices(ws: Workspace, space: str, form: str = "U") -> tuple[dict[str, pd.DataFrame], pd.Series]:
    """Score matrices (sources × targets, by task label) of ρ_F, ρ_h, ρ_e and ρ_h·ρ_e over a space."""
    mats: dict[str, pd.DataFrame] = {}
    meta = None
    for fam in FAMILIES:
        meta, r = ws.rho(space, fam, form)
        mats[fam] = pd.DataFrame(r, index=meta["label"].tolist(), columns=meta["label"].tolist())
    mats["kronecker"] = mats["activation"] * mats["error"]
    return mats, pd.Series(meta["group"].to_numpy(), index=meta["label"].tolist(), dtype=object)


def read_gains(path: str | os.PathLike, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Ground-truth transfer gains as a (sources × targets) matrix.

    Accepts Parquet or CSV, either long (columns ``source``, ``target`` and ``gain``) or wide
    (a ``source`` column or index, one column per target). ``names`` (optional) keeps only those tasks.

    Raises
    ------
    FileNotFoundError, ValueError
        With the fix in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ground-truth results at {path}")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"cannot read {path} ({type(exc).__name__}: {exc}). Fix: write a Parquet or CSV file "
                         "with columns source, target, gain") from None
    cols = {c.lower(): c for c in df.columns}
    if {"source", "target"} <= set(cols):
        gain_col = next((cols[c] for c in ("gain", "g", "delta_nll", "gain_nll") if c in cols), None)
        if gain_col is None:
            raise ValueError(f"{path} has source and target columns but no gain column (columns: "
                             f"{list(df.columns)}). Fix: name the gain column 'gain'.")
        mat = df.pivot_table(index=cols["source"], columns=cols["target"], values=gain_col, aggfunc="mean")
    else:
        if "source" in cols:
            df = df.set_index(cols["source"])
        mat = df.select_dtypes("number")
        if mat.empty:
            raise ValueError(f"{path} has no numeric gain columns. Fix: long format (source, target, gain) or a "
                             "wide matrix with sources as rows and targets as columns")
    mat.index = mat.index.astype(str)
    mat.columns = mat.columns.astype(str)
    if names is not None:
        keep = [n for n in names if n in mat.index]
        keep_t = [n for n in names if n in mat.columns]
        mat = mat.reindex(index=keep, columns=keep_t)
    return mat.astype(float)


# --- figures ---------------------------------------------------------------------------------------------

def fig_group_counts(tasks: pd.DataFrame) -> go.Figure:
    """Bar chart: number of tasks per group, stacked by store."""
    counts = tasks.groupby(["group", "store"]).size().reset_index(name="n")
    fig = go.Figure()
    for store, part in counts.groupby("store"):
        fig.add_bar(x=part["group"], y=part["n"], name=f"{store} store")
    fig.update_layout(barmode="stack", height=320, margin=dict(l=10, r=10, t=30, b=10),
                      title="Tasks per group", yaxis_title="tasks")
    return fig


def fig_pair_bars(table: pd.DataFrame, target: str) -> go.Figure:
    """Grouped bars of ρ_F, ρ_h, ρ_e and κ per source, with ±1 SE error bars."""
    fig = go.Figure()
    for col, name in (("rho_F", "ρ_F joint"), ("rho_h", "ρ_h activation"), ("rho_e", "ρ_e error"),
                      ("kappa", "κ coupling")):
        fig.add_bar(x=table["source"], y=table[col], name=name,
                    error_y=dict(type="data", array=table[col + "_se"].fillna(0).to_numpy(), visible=True))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    # κ explodes when ρ_h·ρ_e ≈ 0: keep the axis on the alignments (hover shows every true value)
    vals = np.concatenate([table[c].to_numpy(dtype=float) for c in ("rho_F", "rho_h", "rho_e")]
                          + [np.clip(table["kappa"].to_numpy(dtype=float), -0.5, 2.0)])
    vals = vals[np.isfinite(vals)]
    lo = min(0.0, float(vals.min()) if vals.size else 0.0) - 0.05
    hi = max(1.1, float(vals.max()) if vals.size else 1.0) + 0.05
    fig.update_layout(barmode="group", height=380, margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[lo, hi],
                      title=f"Alignment with target {target} (bars ± 1 SE)", yaxis_title="value")
    return fig


def fig_heatmap(mat: np.ndarray, labels: Sequence[str], title: str, zmid: float | None = None,
                zrange: tuple[float, float] | None = None) -> go.Figure:
    """Heatmap of a pairwise matrix over a set of tasks (``zrange`` clips the colour scale, not the data)."""
    zmin, zmax = zrange if zrange is not None else (None, None)
    fig = go.Figure(go.Heatmap(z=np.asarray(mat, dtype=float), x=list(labels), y=list(labels),
                               colorscale="RdBu" if zmid is not None else "Viridis", zmid=zmid, zmin=zmin, zmax=zmax,
                               hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=max(320, 24 * len(labels) + 140), margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(autorange="reversed"))
    return fig


def fig_delta(df: pd.DataFrame) -> go.Figure:
    """δ per task with its interval: tasks along x, sorted by group then δ, one colour per group."""
    fig = go.Figure()
    for group, part in df.groupby("group", sort=True):
        fig.add_scattergl(x=part["label"], y=part["delta"], mode="markers", name=group,
                          error_y=dict(type="data", symmetric=False, array=(part["hi"] - part["delta"]).to_numpy(),
                                       arrayminus=(part["delta"] - part["lo"]).to_numpy()),
                          customdata=np.column_stack([part["lo"], part["hi"], part["model_id"], part["n_positions"]]),
                          hovertemplate="%{x}: δ = %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<br>"
                                        "%{customdata[2]}, %{customdata[3]} positions<extra></extra>")
    form = df["form"].iloc[0] if len(df) else "U"
    fig.add_hline(y=0.0, line_dash="dot", line_color="grey")
    fig.update_layout(title=f"Kronecker discrepancy δ per task ({form} form, 95% interval), sorted by group",
                      yaxis_title="δ = ‖F − A⊗G‖ / ‖F‖", height=440, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(categoryorder="array", categoryarray=df["label"].tolist(),
                                 showticklabels=len(df) <= 40, title="task" if len(df) > 40 else None))
    return fig


def fig_kronecker_scatter(pairs: pd.DataFrame) -> go.Figure:
    """ρ_F against the Kronecker prediction ρ_h·ρ_e for every pair, with the diagonal y = x."""
    fig = go.Figure()
    for same, name in ((True, "same group"), (False, "different groups")):
        part = pairs[pairs["same_group"] == same]
        if part.empty:
            continue
        fig.add_scattergl(x=part["kronecker"], y=part["rho_F"], mode="markers", name=name,
                          marker=dict(size=5, opacity=0.6), text=part["a"] + " · " + part["b"],
                          hovertemplate="%{text}<br>ρ_h·ρ_e = %{x:.3f}, ρ_F = %{y:.3f}<extra></extra>")
    lo = float(np.nanmin(pairs[["kronecker", "rho_F"]].to_numpy())) if len(pairs) else 0.0
    hi = float(np.nanmax(pairs[["kronecker", "rho_F"]].to_numpy())) if len(pairs) else 1.0
    lo, hi = min(lo, 0.0), max(hi, 1.0)
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="ρ_F = ρ_h·ρ_e (K-FAC)",
                    line=dict(dash="dash", color="black"))
    fig.update_layout(title="Joint alignment against the Kronecker prediction", xaxis_title="ρ_h · ρ_e",
                      yaxis_title="ρ_F", height=460, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def fig_task_map(meta: pd.DataFrame, res: MapResult, colour: str, family: str) -> go.Figure:
    """Scatter of the map, coloured by a metadata column (or tag), hover with metadata."""
    values = colour_values(meta, colour)
    fig = go.Figure()
    df = meta.assign(_x=res.coords[:, 0], _y=res.coords[:, 1], _c=values)
    for val, part in df.groupby("_c", sort=True):
        fig.add_scatter(x=part["_x"], y=part["_y"], mode="markers", name=val or "(none)",
                        marker=dict(size=9), text=part["label"], customdata=np.column_stack(
                            [part["group"], part["model_id"], part["n_positions"], part["store"], part["uid"]]),
                        hovertemplate="<b>%{text}</b><br>group %{customdata[0]}<br>model %{customdata[1]}<br>"
                                      "%{customdata[2]} positions · %{customdata[3]} store<extra></extra>")
    axis = "PC" if res.method == "pca" else "UMAP "
    fig.update_layout(title=f"{res.method.upper()} of the {family} signatures ({len(meta)} tasks)",
                      xaxis_title=f"{axis}1", yaxis_title=f"{axis}2", height=560, dragmode="lasso",
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig


def fig_hubness(hub: Mapping[str, pd.DataFrame], top: int = 15) -> go.Figure:
    """How often each source is chosen, per method (the most-chosen ``top`` sources)."""
    fig = go.Figure()
    order: list[str] = []
    for method, df in hub.items():
        for s in df.head(top)["source"]:
            if s not in order:
                order.append(s)
    order = order[: top * 2]
    for method, df in hub.items():
        d = df.set_index("source").reindex(order)
        fig.add_bar(x=order, y=d["n_chosen"].fillna(0), name=BY_LABELS.get(method, method))
    fig.update_layout(barmode="group", title="Hubness: how often each source is the top choice",
                      yaxis_title="targets choosing it", height=400, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def fig_group_share(group_tables: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Share of picks per group against the group's share of sources (ratio 1 = unbiased)."""
    fig = go.Figure()
    for method, df in group_tables.items():
        fig.add_bar(x=df["group"], y=df["ratio"], name=BY_LABELS.get(method, method))
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
    fig.update_layout(barmode="group", title="Picks per group relative to its share of sources (1 = no bias)",
                      yaxis_title="share of picks / share of sources", height=380, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def fig_accuracy(acc: pd.DataFrame) -> go.Figure:
    """Top-1 accuracy per group and method (from ``AuditReport.accuracy_table``)."""
    fig = go.Figure()
    for method, part in acc.groupby("method", sort=False):
        fig.add_bar(x=part["group"], y=part["top1"], name=BY_LABELS.get(method, method))
    fig.update_layout(barmode="group", title="Top-1 source selection accuracy per target group",
                      yaxis_title="top-1", yaxis_range=[0, 1], height=380, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# --- computing a signature in the background -------------------------------------------------------------

@dataclasses.dataclass
class ComputeRequest:
    """Everything a compute job needs (built from the Signatures page's widgets).

    ``corpus`` is ``"domain"`` (a bundled domain id in ``domain``) or ``"file"`` (an uploaded file saved at
    ``data_path``). ``model`` is ``"smollm2"`` or a local Hugging Face folder / ``.gguf`` path.
    """

    name: str
    model: str = "smollm2"
    corpus: str = "domain"
    domain: str = ""
    data_path: str = ""
    task_type: str = "corpus"
    text_column: str | None = None
    prompt_column: str | None = None
    target_column: str | None = None
    max_positions: int | None = 2000
    m: int = 4096
    seed: int = 0
    method: str = "fast"
    group: str = "user"
    sample_seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the problem and the fix before anything slow starts."""
        if not self.name.strip():
            raise ValueError("the task needs a name. Fix: type one in 'Task name'.")
        if self.corpus == "domain" and not self.domain:
            raise ValueError("no bundled domain chosen. Fix: pick one, or upload a file.")
        if self.corpus == "file" and not (self.data_path and Path(self.data_path).is_file()):
            raise ValueError("no data file uploaded. Fix: upload a text, FASTA, SMILES or CSV file.")
        if self.task_type not in ("corpus", "prompt-target"):
            raise ValueError(f"task type {self.task_type!r} is not 'corpus' or 'prompt-target'")
        if self.max_positions is not None and self.max_positions < 2:
            raise ValueError("the position budget must be at least 2 (one per half of the task)")
        if self.m < 1 or self.seed < 0:
            raise ValueError("m must be positive and the seed non-negative")
        if self.model.strip().lower() not in ("smollm2", "default", "") and not Path(self.model).expanduser().exists():
            raise ValueError(f"model path {self.model!r} does not exist. Fix: give a local Hugging Face folder "
                             "(config.json + weights + tokenizer) or a .gguf file, or use the default SmolLM2.")

    def build_task(self) -> Any:
        """The task spec (``CorpusTask`` or ``PromptTargetTask``) of this request."""
        from .tasks import CorpusTask, load_task
        if self.corpus == "domain":
            from .data import load_domain
            docs = load_domain(self.domain)["probe"]
            return CorpusTask(self.name, docs, max_positions=self.max_positions, seed=self.sample_seed)
        return load_task(self.name, self.data_path, task_type=self.task_type, text_column=self.text_column or None,
                         prompt_column=self.prompt_column or None, target_column=self.target_column or None,
                         max_positions=self.max_positions, seed=self.sample_seed)


_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def load_model_cached(source: str, device: str = "cpu") -> Any:
    """``models.load_model`` once per (source, device) in this process (at most two kept)."""
    from .models import load_model
    key = (str(source), str(device))
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
    lm = load_model(source or "smollm2", device=device)
    with _MODELS_LOCK:
        if len(_MODELS) >= 2:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = lm
    return lm


class ComputeJob:
    """One signature computation in a background thread, with progress, cancel and a store write.

    States: ``"starting" → "loading model" → "running" → "writing" → "done"``, or ``"cancelled"`` /
    ``"failed"`` (``error`` holds the message and the fix). The result is written to the workspace's
    user store; if that write fails (e.g. the file is locked) the signature is kept in ``saved_path``.

    Examples
    --------
    >>> job = ComputeJob(ws, ComputeRequest(name="mine", domain="fortunes-art")).start()   # doctest: +SKIP
    >>> job.wait(); job.state, job.report                                                  # doctest: +SKIP
    """

    def __init__(self, ws: Workspace, request: ComputeRequest):
        self.ws = ws
        self.request = request
        self.state = "starting"
        self.fraction = 0.0
        self.detail = ""
        self.error = ""
        self.report: WriteReport | None = None
        self.signature: Signature | None = None
        self.saved_path: Path | None = None
        self.perplexity = float("nan")
        self.started = time.time()
        self.finished: float | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fishersketch-compute-{request.name}", daemon=True)

    def start(self) -> "ComputeJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at the next batch boundary."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> "ComputeJob":
        self._thread.join(timeout)
        return self

    def _progress(self, p: Any) -> None:
        self.fraction = float(p.fraction)
        rate = f"{p.tokens_per_s:,.0f} tok/s" if p.tokens_per_s > 0 else "starting"
        eta = f", {p.eta_s:,.0f} s left" if math.isfinite(p.eta_s) and p.tokens_per_s > 0 else ""
        self.detail = (f"{p.tokens_done:,}/{p.tokens_total:,} tokens, {p.positions_done:,}/{p.positions_total:,} "
                       f"positions, batch {p.batches_done}/{p.batches_total}, {rate}{eta}")

    def _run(self) -> None:
        from .compute import ComputeCancelled, compute_signature
        req = self.request
        try:
            req.validate()
            task = req.build_task()
            self.state = "loading model"
            lm = load_model_cached(req.model.strip() or "smollm2", req.device)
            if self._cancel.is_set():
                raise ComputeCancelled("cancelled before the first batch", None, None)
            self.state = "running"
            res = compute_signature(lm, task, m=req.m, seed=req.seed, method=req.method, progress=self._progress,
                                    cancel=self._cancel)
            self.signature = res.signature
            self.perplexity = res.perplexity
            self.fraction = 1.0
            self.state = "writing"
            source = f"bundled domain {req.domain}" if req.corpus == "domain" else Path(req.data_path).name
            try:
                self.report = self.ws.add_signature(
                    res.signature, name=req.name, group=req.group, domain=req.domain or Path(req.data_path).stem,
                    task_type=task.task_type, corpus_source=source,
                    tags={"computed_in": "app", "max_positions": req.max_positions})
            except Exception as exc:  # locked, conflicting ...: keep the signature on disk
                user = self.ws.user_path or Path(tempfile.gettempdir()) / "fishersketch.duckdb"
                self.saved_path = user.with_name(f"{user.name}.{_slug(req.name)}.npz")
                self.saved_path.parent.mkdir(parents=True, exist_ok=True)
                res.signature.with_meta(task_name=req.name).save(self.saved_path)
                raise RuntimeError(f"the signature was computed but could not be written to your store: {exc} "
                                   f"It is saved in {self.saved_path}; import it on the Signatures page "
                                   "once the store is free.") from None
            self.state = "done"
        except ComputeCancelled:
            self.state = "cancelled"
        except Exception as exc:  # shown in the page with its message; never a traceback
            self.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, RuntimeError)) else str(exc)
            self.state = "failed"
        finally:
            self.finished = time.time()

    def summary(self) -> dict[str, Any]:
        return {"state": self.state, "fraction": self.fraction, "detail": self.detail, "error": self.error,
                "report": str(self.report) if self.report else "", "name": self.request.name}


def store_note_for_json(ws: Workspace) -> str:
    """A compact JSON description of the workspace (for debugging and the Overview expander)."""
    return json.dumps([dataclasses.asdict(s) for s in ws.statuses()], indent=1)
