"""The published FisherSketch signature of one task, and its single-file format.

A signature holds the float32 means of the joint, activation and error features
over each of the two deterministic halves of the task's positions, the position
count of each half, and the metadata that decides what it may be compared with.
The published 16 KiB signature is ``Signature.joint`` (the mean over both halves);
the marginals and the halves are kept beside it for the decomposition and the
U-statistic (same-position pairs dropped) forms.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "fishersketch-signature"
FORMAT_VERSION = 1

#: Metadata keys that must agree for two signatures to be compared.
COMPAT_KEYS = ("d", "K", "m", "seed", "method", "model_hash")


class IncompatibleSignatures(ValueError):
    """Two signatures (or states) were built with different settings and cannot be compared."""


@dataclasses.dataclass(frozen=True)
class SketchMeta:
    """What a signature was computed with. ``model_hash`` is a content hash of the weights."""

    d: int
    K: int
    m: int
    seed: int
    method: str
    model_id: str = ""
    model_hash: str = ""
    task_name: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SketchMeta":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> "SketchMeta":
        return dataclasses.replace(self, **changes)


def check_compatible(a: SketchMeta, b: SketchMeta, keys: tuple[str, ...] = COMPAT_KEYS,
                     what: str = "signatures") -> None:
    """Raise :class:`IncompatibleSignatures` naming every key on which ``a`` and ``b`` differ.

    An empty ``model_hash`` on either side is treated as unknown and is not compared.
    """
    mismatches = []
    for key in keys:
        va, vb = getattr(a, key), getattr(b, key)
        if key == "model_hash" and (not va or not vb):
            continue
        if va != vb:
            mismatches.append(f"{key}: {va!r} vs {vb!r}")
    if mismatches:
        names = f" ({a.task_name or '?'} vs {b.task_name or '?'})"
        raise IncompatibleSignatures(
            f"cannot compare {what}{names}: they differ in " + "; ".join(mismatches)
            + ". Recompute one of them with the other's model, method, m and seed.")


@dataclasses.dataclass(frozen=True)
class Signature:
    """Half-split feature means of one task.

    Attributes
    ----------
    joint_half, activation_half, error_half : ndarray of float32, shape (2, m)
        Mean joint feature φ(h, e), activation feature ψ_A(h) and error feature ψ_G(e)
        over the positions routed to half 0 and half 1.
    counts : ndarray of int64, shape (2,)
        Number of positions in each half.
    meta : SketchMeta

    Examples
    --------
    >>> import numpy as np
    >>> from fishersketch_core import Sketcher
    >>> sk = Sketcher(d=8, K=16, m=64, seed=0)
    >>> st = sk.new_state().update(np.random.randn(10, 8), np.random.randn(10, 16))
    >>> sig = st.signature(); sig.joint.shape, sig.n_positions
    ((64,), 10)
    """

    joint_half: np.ndarray
    activation_half: np.ndarray
    error_half: np.ndarray
    counts: np.ndarray
    meta: SketchMeta

    def __post_init__(self) -> None:
        m = self.meta.m
        for name in ("joint_half", "activation_half", "error_half"):
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.shape != (2, m):
                raise ValueError(f"Signature.{name} must have shape (2, {m}), got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Signature.{name} contains NaN or inf; the task's inputs were not finite")
            object.__setattr__(self, name, arr)
        counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        if counts.shape != (2,) or np.any(counts < 0):
            raise ValueError(f"Signature.counts must be two non-negative integers, got {self.counts!r}")
        if counts.sum() == 0:
            raise ValueError("a signature needs at least one position; the task was empty")
        object.__setattr__(self, "counts", counts)

    # --- derived means -------------------------------------------------------------
    @property
    def n_positions(self) -> int:
        return int(self.counts.sum())

    def _full(self, halves: np.ndarray) -> np.ndarray:
        w = self.counts.astype(np.float64) / self.counts.sum()
        return (w[0] * halves[0].astype(np.float64) + w[1] * halves[1].astype(np.float64)).astype(np.float32)

    @property
    def joint(self) -> np.ndarray:
        """The published signature: float32 (m,) mean joint feature (16 KiB at m = 4096)."""
        return self._full(self.joint_half)

    @property
    def activation(self) -> np.ndarray:
        return self._full(self.activation_half)

    @property
    def error(self) -> np.ndarray:
        return self._full(self.error_half)

    @property
    def name(self) -> str:
        return self.meta.task_name

    def with_meta(self, **changes: Any) -> "Signature":
        return dataclasses.replace(self, meta=self.meta.replace(**changes))

    # --- single-file format --------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the signature to one ``.npz`` file (no pickle); returns the path written."""
        path = Path(path)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": self.meta.to_dict()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, header=np.array(json.dumps(header)), joint_half=self.joint_half,
                     activation_half=self.activation_half, error_half=self.error_half, counts=self.counts)
        tmp.replace(path)  # atomic: a crash never leaves a half-written signature
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Signature":
        """Read a signature written by :meth:`save`; raises ``ValueError`` on anything else."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                arrays = {k: npz[k] for k in ("joint_half", "activation_half", "error_half", "counts")}
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ValueError(f"{path} is not a FisherSketch signature file ({exc}); "
                             "expected a .npz written by Signature.save") from exc
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a FisherSketch signature file (format={header.get('format')!r})")
        if int(header.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer FisherSketch (format version "
                             f"{header['version']} > {FORMAT_VERSION}); upgrade fishersketch_core to read it")
        return cls(meta=SketchMeta.from_dict(header["meta"]), **arrays)
