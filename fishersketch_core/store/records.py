"""Conversion between :class:`Signature` objects and store rows, and validation at ingest."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from .. import align
from ..signature import Signature, SketchMeta
from .errors import InvalidSignatureError
from .schema import FAMILIES, HALF_COLUMNS

#: Columns of ``tasks`` that hold user-facing metadata (everything but vectors and scalars).
META_COLUMNS = ("name", "domain", "group", "task_type", "corpus_source", "corpus_licence",
                "model_id", "model_hash", "method", "m", "seed", "d", "K", "n_positions",
                "count_0", "count_1", "created_at", "tags", "extra")
SCALAR_COLUMNS = tuple(f"self_{form}_{fam}" for form in ("u", "v") for fam in FAMILIES) + ("delta_u", "delta_u_se")
TEXT_FIELDS = ("domain", "group", "task_type", "corpus_source", "corpus_licence")


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """A signature together with the task metadata the store keeps beside it.

    Parameters
    ----------
    signature : Signature
    name : str, optional
        Task name; defaults to ``signature.meta.task_name``. Stored verbatim (any characters).
    domain, group, task_type, corpus_source, corpus_licence : str
        Free text. ``group`` is the domain group used by the audit (e.g. "SMILES", "code").
    tags : dict or list, optional
        Anything JSON-serialisable.

    Examples
    --------
    >>> rec = TaskRecord(sig, name="smiles/aromatic", group="SMILES")  # doctest: +SKIP
    """

    signature: Signature
    name: str | None = None
    domain: str = ""
    group: str = ""
    task_type: str = ""
    corpus_source: str = ""
    corpus_licence: str = ""
    tags: Any = None
    created_at: datetime | None = None

    @property
    def task_name(self) -> str:
        return self.name if self.name is not None else self.signature.meta.task_name

    @property
    def key(self) -> tuple:
        """(name, model_id, model_hash, method, m, seed): what makes two rows "the same task"."""
        meta = self.signature.meta
        return (self.task_name, meta.model_id, meta.model_hash, meta.method, int(meta.m), int(meta.seed))


def as_record(item: TaskRecord | Signature, **metadata: Any) -> TaskRecord:
    """Wrap a :class:`Signature` (or pass a :class:`TaskRecord` through) for ingest."""
    if isinstance(item, TaskRecord):
        return dataclasses.replace(item, **metadata) if metadata else item
    if isinstance(item, Signature):
        return TaskRecord(signature=item, **metadata)
    raise TypeError(f"expected a Signature or TaskRecord, got {type(item).__name__}; "
                    "build one with Signature(...) or Signature.load(path)")


# --- validation ------------------------------------------------------------------------------------

def _refuse(name: str, problem: str, fix: str) -> InvalidSignatureError:
    return InvalidSignatureError(f"task {name!r} refused: {problem}. Fix: {fix}.")


def validate_record(rec: TaskRecord) -> str:
    """Check a record before anything is written; return its (validated) name.

    Raises
    ------
    InvalidSignatureError
        Naming the task, the problem (empty name, wrong length, NaN, zero vector, non-positive U
        self-norm, non-JSON tags ...) and the fix.
    """
    sig, meta = rec.signature, rec.signature.meta
    name = rec.task_name
    if not isinstance(name, str) or not name.strip():
        raise _refuse(str(name), "the task name is empty", "pass name='...' or set meta.task_name")
    for field in TEXT_FIELDS:
        if not isinstance(getattr(rec, field), str):
            raise _refuse(name, f"{field} must be a string, got {type(getattr(rec, field)).__name__}",
                          f"pass {field}='...' (use '' for none)")
    for field in ("model_id", "model_hash", "method"):
        if not isinstance(getattr(meta, field), str):
            raise _refuse(name, f"meta.{field} must be a string, got {getattr(meta, field)!r}",
                          f"rebuild the signature with a string {field}")
    if not meta.method:
        raise _refuse(name, "meta.method is empty", "record the feature map (e.g. 'fast' or 'dense')")
    for field in ("d", "K", "m"):
        value = getattr(meta, field)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise _refuse(name, f"meta.{field} must be a positive integer, got {value!r}",
                          "rebuild the signature with the model's dimensions")
    if isinstance(meta.seed, bool) or not isinstance(meta.seed, (int, np.integer)):
        raise _refuse(name, f"meta.seed must be an integer, got {meta.seed!r}", "use an integer seed")
    for fam in FAMILIES:
        half = np.asarray(getattr(sig, fam + "_half"))
        if half.shape != (2, meta.m):
            raise _refuse(name, f"{fam} half vectors have shape {half.shape}, expected (2, m={meta.m})",
                          "store vectors of the length the signature's m says")
        if not np.all(np.isfinite(half)):
            raise _refuse(name, f"the {fam} vectors contain NaN or inf",
                          "recompute the signature from finite activations and logits")
        if not np.any(getattr(sig, fam)):
            raise _refuse(name, f"the {fam} mean is the zero vector (no direction, so every cosine "
                          "against it is NaN)", "recompute the signature from a task with scored positions")
    counts = sig.counts
    if counts.min() == 0:
        raise _refuse(name, f"half {int(np.argmin(counts))} has no positions (counts {counts.tolist()}); "
                      "the U form needs both halves", "add sequences to the task so both halves get positions")
    norms = align.self_norms(sig, form="U")
    for fam in FAMILIES:
        if not norms[fam] > 0:
            raise _refuse(name, f"the U-form self inner product ⟨μ^(0), μ^(1)⟩ of the {fam} family is "
                          f"{norms[fam]:.3g} ≤ 0 (counts {counts.tolist()}): the two halves disagree, so "
                          "U-form alignments are undefined", "add positions to the task and recompute")
    try:
        json.dumps(rec.tags if rec.tags is not None else {})
        json.dumps(meta.extra)
    except (TypeError, ValueError) as exc:
        raise _refuse(name, f"tags or meta.extra are not JSON-serialisable ({exc})",
                      "use strings, numbers, lists and dicts only") from None
    return name


# --- scalars ----------------------------------------------------------------------------------------

def delta_u(sig: Signature) -> tuple[float, float]:
    """U-form Kronecker discrepancy δ and its SE (NaN, NaN when undefined)."""
    try:
        est = align.kronecker_delta(sig, form="U")
    except ValueError:
        return float("nan"), float("nan")
    return float(est.value), float(est.se)


def scalars(sig: Signature) -> dict[str, float]:
    """Self inner products (U and V) per family and δ_U with SE, as stored in ``tasks``."""
    out = {}
    for form in ("U", "V"):
        for fam, value in align.self_norms(sig, form=form).items():
            out[f"self_{form.lower()}_{fam}"] = value
    out["delta_u"], out["delta_u_se"] = delta_u(sig)
    return out


# --- rows <-> signatures -----------------------------------------------------------------------------

def fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, m) float32 matrix → Arrow FixedSizeList<float32>[m] (maps to DuckDB FLOAT[m])."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def list_matrix(column: pa.ChunkedArray | pa.Array, m: int) -> np.ndarray:
    """Arrow (fixed-size) list column of length-m float vectors → (n, m) float32 matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = column.value_lengths() if hasattr(column, "value_lengths") else None
    if lengths is not None and len(column) and (pa.compute.min(lengths).as_py() != m
                                                or pa.compute.max(lengths).as_py() != m):
        raise ValueError(f"vectors of lengths {sorted(set(lengths.to_pylist()))} found where m = {m}")
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), m)


def records_to_arrow(records: list[TaskRecord], names: list[str], ids: list[int],
                     created_at: list[datetime] | None = None) -> tuple[pa.Table, pa.Table]:
    """Build the ``tasks`` rows and the ``vectors_m<m>`` rows of records sharing one m."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    created_at = created_at or [r.created_at or now for r in records]
    metas = [r.signature.meta for r in records]
    sc = [scalars(r.signature) for r in records]
    tasks = pa.table({
        "id": pa.array(ids, pa.int64()),
        "name": names,
        **{f: [getattr(r, f) for r in records] for f in TEXT_FIELDS},
        "model_id": [mt.model_id for mt in metas],
        "model_hash": [mt.model_hash for mt in metas],
        "method": [mt.method for mt in metas],
        "m": pa.array([int(mt.m) for mt in metas], pa.int32()),
        "seed": pa.array([int(mt.seed) for mt in metas], pa.int64()),
        "d": pa.array([int(mt.d) for mt in metas], pa.int32()),
        "K": pa.array([int(mt.K) for mt in metas], pa.int32()),
        "n_positions": pa.array([r.signature.n_positions for r in records], pa.int64()),
        "count_0": pa.array([int(r.signature.counts[0]) for r in records], pa.int64()),
        "count_1": pa.array([int(r.signature.counts[1]) for r in records], pa.int64()),
        "created_at": pa.array(created_at, pa.timestamp("us")),
        "extra": [json.dumps(mt.extra, sort_keys=True) for mt in metas],
        **{c: pa.array([s[c] for s in sc], pa.float64()) for c in SCALAR_COLUMNS},
        "tags": [json.dumps(r.tags if r.tags is not None else {}, sort_keys=True) for r in records],
    })
    vectors = {"task_id": pa.array(ids, pa.int64())}
    for fam in FAMILIES:
        vectors[fam] = fixed_list(np.stack([getattr(r.signature, fam) for r in records]))
    for fam in FAMILIES:
        for h in (0, 1):
            vectors[f"{fam}_h{h}"] = fixed_list(np.stack([getattr(r.signature, fam + "_half")[h] for r in records]))
    return tasks, pa.table(vectors)


def signatures_from_rows(rows: pa.Table) -> list[Signature]:
    """Rebuild signatures from rows holding the meta columns, counts and the six half vectors.

    All rows must share one m (they come from one ``vectors_m<m>`` table).
    """
    if rows.num_rows == 0:
        return []
    cols = {c: rows.column(c).to_pylist() for c in rows.column_names if c not in HALF_COLUMNS}
    m = int(cols["m"][0])
    halves = {c: list_matrix(rows.column(c), m) for c in HALF_COLUMNS}
    out = []
    for i in range(rows.num_rows):
        extra = cols.get("extra", [None] * rows.num_rows)[i]
        meta = SketchMeta(d=int(cols["d"][i]), K=int(cols["K"][i]), m=int(cols["m"][i]),
                          seed=int(cols["seed"][i]), method=cols["method"][i],
                          model_id=cols.get("model_id", [""] * rows.num_rows)[i],
                          model_hash=cols.get("model_hash", [""] * rows.num_rows)[i],
                          task_name=cols["name"][i], extra=json.loads(extra) if extra else {})
        out.append(Signature(
            joint_half=np.stack([halves["joint_h0"][i], halves["joint_h1"][i]]),
            activation_half=np.stack([halves["activation_h0"][i], halves["activation_h1"][i]]),
            error_half=np.stack([halves["error_h0"][i], halves["error_h1"][i]]),
            counts=np.array([cols["count_0"][i], cols["count_1"][i]], dtype=np.int64), meta=meta))
    return out


def same_vectors(a: Signature, b: Signature) -> bool:
    """True when two signatures hold bit-identical half vectors and counts."""
    return (np.array_equal(a.counts, b.counts)
            and all(np.array_equal(getattr(a, f + "_half"), getattr(b, f + "_half")) for f in FAMILIES))


def normalise_tags(tags: Any) -> Any:
    """Tags as stored (JSON text) → Python object."""
    if tags is None or tags == "":
        return {}
    return json.loads(tags) if isinstance(tags, str) else tags


def iter_records(items: Iterable[TaskRecord | Signature] | TaskRecord | Signature) -> list[TaskRecord]:
    if isinstance(items, (TaskRecord, Signature)):
        items = [items]
    return [as_record(it) for it in items]
