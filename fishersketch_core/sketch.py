"""Factored Random Maclaurin features of (h, e) and the streaming state that averages them.

For m features and four independent sign families a1, a2 (length d) and b1, b2 (length K):

    ψ_A(h)_j = (a1_j·h)(a2_j·h)/√m          activation feature, E ψ_A(h)·ψ_A(h') = (h·h')²
    ψ_G(e)_j = (b1_j·e)(b2_j·e)/√m          error feature,      E ψ_G(e)·ψ_G(e') = (e·e')²
    φ(h,e)_j = √m ψ_A(h)_j ψ_G(e)_j         joint feature,      E φ·φ'          = (h·h')²(e·e')²

Averaged over a task's positions these are linear sketches of A = E hhᵀ, G = E eeᵀ and the
head Fisher F = E vec(ehᵀ)vec(ehᵀ)ᵀ. Positions are routed to two halves (by sequence when ids
are given) so that the U-statistic forms (same-position pairs dropped) are cross-half products.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .projectors import PROJECTORS, Projector
from .signature import Signature, SketchMeta, check_compatible

METHODS = tuple(PROJECTORS)
_CHUNK = 1024  # positions per internal chunk: keeps (chunk, m) feature blocks small


def _validate_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_tensor(name: str, x: Any, cols: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"{name} must have shape (n, {cols}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x


def route_halves(sequence_ids: np.ndarray) -> np.ndarray:
    """Half (0 or 1) of each position: a fixed hash of its sequence id (splitmix64), so that a
    sequence always lands in the same half whichever process or shard sketches it."""
    z = np.asarray(sequence_ids).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z & np.uint64(1)).astype(np.int64)


class Sketcher:
    """Feature maps for FisherSketch signatures.

    Parameters
    ----------
    d : int
        Width of the output head's input h.
    K : int
        Vocabulary size (length of the error e).
    m : int, default 4096
        Number of features; the published signature is m float32 values (16 KiB at 4096).
    seed : int, default 0
        Seed of the four sign families. Signatures are comparable only under the same seed.
    method : {"fast", "dense"}, default "fast"
        ``"dense"``: independent Rademacher rows (the reference, m·(d+K) per position).
        ``"fast"``: Kronecker-factored randomised Hadamard rows, same expectation, far cheaper.

    Examples
    --------
    >>> import numpy as np
    >>> sk = Sketcher(d=8, K=32, m=256, seed=1)
    >>> state = sk.new_state()
    >>> state = state.update(np.random.randn(100, 8), np.random.randn(100, 32))
    >>> state.signature(task_name="toy").joint.shape
    (256,)
    """

    def __init__(self, d: int, K: int, m: int = 4096, seed: int = 0, method: str = "fast"):
        self.d = _validate_int("d", d, 1)
        self.K = _validate_int("K", K, 1)
        self.m = _validate_int("m", m, 1)
        self.seed = _validate_int("seed", seed, 0)
        if method not in PROJECTORS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        cls = PROJECTORS[method]
        # Four independent families: reusing one sign vector inside a pair would bias the estimate.
        self.a1: Projector = cls(self.d, self.m, self.seed, 1)
        self.a2: Projector = cls(self.d, self.m, self.seed, 2)
        self.b1: Projector = cls(self.K, self.m, self.seed, 3)
        self.b2: Projector = cls(self.K, self.m, self.seed, 4)

    def __repr__(self) -> str:
        return f"Sketcher(d={self.d}, K={self.K}, m={self.m}, seed={self.seed}, method={self.method!r})"

    @property
    def meta(self) -> SketchMeta:
        return SketchMeta(d=self.d, K=self.K, m=self.m, seed=self.seed, method=self.method)

    # --- feature maps ----------------------------------------------------------------
    def activation_features(self, h: torch.Tensor) -> torch.Tensor:
        """ψ_A(h): (n, d) -> (n, m)."""
        h = _as_tensor("h", h, self.d)
        return self.a1.project(h) * self.a2.project(h) / math.sqrt(self.m)

    def error_features(self, e: torch.Tensor) -> torch.Tensor:
        """ψ_G(e): (n, K) -> (n, m)."""
        e = _as_tensor("e", e, self.K)
        return self.b1.project(e) * self.b2.project(e) / math.sqrt(self.m)

    def features(self, h: Any, e: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(φ, ψ_A, ψ_G), each (n, m) float32, for positions h (n, d) and e (n, K)."""
        psi_a = self.activation_features(h)  # (n, m)
        psi_g = self.error_features(e)  # (n, m)
        return math.sqrt(self.m) * psi_a * psi_g, psi_a, psi_g

    def combine(self, activation_mean: np.ndarray, error_mean: np.ndarray) -> np.ndarray:
        """Sketch of A⊗G from sketches of A and G: √m μ_A ⊙ μ_G (same probes as the joint)."""
        return math.sqrt(self.m) * np.asarray(activation_mean) * np.asarray(error_mean)

    def new_state(self) -> "SketchState":
        return SketchState(self)


class SketchState:
    """Running float64 sums of φ, ψ_A, ψ_G for each half of a task's positions.

    Six m-vectors plus counts (192 KiB at m = 4096). States of the same sketcher merge by
    addition, so shards computed anywhere combine exactly.
    """

    def __init__(self, sketcher: Sketcher):
        self.sketcher = sketcher
        m = sketcher.m
        self.joint_sum = torch.zeros(2, m, dtype=torch.float64)
        self.activation_sum = torch.zeros(2, m, dtype=torch.float64)
        self.error_sum = torch.zeros(2, m, dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.int64)
        self._next_position = 0  # routes positions alternately when no sequence ids are given

    @property
    def meta(self) -> SketchMeta:
        return self.sketcher.meta

    @property
    def n_positions(self) -> int:
        return int(self.counts.sum())

    def update(self, h: Any, e: Any, sequence_ids: Any = None) -> "SketchState":
        """Add positions: h (n, d), e (n, K) in any float dtype; sequence_ids (n,) ints or None.

        With sequence ids, every position of a sequence goes to the same half (a fixed hash of
        the id). Without them positions alternate between halves in arrival order.
        """
        sk = self.sketcher
        h = _as_tensor("h", h, sk.d)
        e = _as_tensor("e", e, sk.K)
        n = h.shape[0]
        if e.shape[0] != n:
            raise ValueError(f"h and e must have the same number of positions, got {n} and {e.shape[0]}")
        if n == 0:
            return self
        if sequence_ids is None:
            halves = (np.arange(self._next_position, self._next_position + n) & 1).astype(np.int64)
            self._next_position += n
        else:
            ids = np.asarray(sequence_ids.cpu() if isinstance(sequence_ids, torch.Tensor) else sequence_ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"sequence_ids must be {n} integers (one per position), got shape "
                                 f"{ids.shape} dtype {ids.dtype}")
            halves = route_halves(ids)
        halves_t = torch.from_numpy(halves)
        for start in range(0, n, _CHUNK):
            sl = slice(start, start + _CHUNK)
            joint, psi_a, psi_g = sk.features(h[sl], e[sl])  # each (chunk, m)
            # NaN/inf in the inputs always reach the projections (every sign is ±1, never 0), so
            # checking the (chunk, m) features is as strict as scanning (n, K) and far cheaper.
            if not bool(torch.isfinite(psi_a.sum(1)).all()):
                raise ValueError("h contains NaN or inf (or values so large that features overflow float32); "
                                 "check the model's activations")
            if not bool(torch.isfinite(psi_g.sum(1)).all()):
                raise ValueError("e contains NaN or inf; compute e = softmax(logits) - onehot(target) in float32")
            # (2, chunk) one-hot of halves times features: per-half sums, accumulated in float64
            onehot = torch.nn.functional.one_hot(halves_t[sl], 2).T.to(torch.float64).to(joint.device)
            self.joint_sum += (onehot @ joint.double()).cpu()
            self.activation_sum += (onehot @ psi_a.double()).cpu()
            self.error_sum += (onehot @ psi_g.double()).cpu()
        self.counts += torch.bincount(halves_t, minlength=2)
        return self

    def update_logits(self, h: Any, logits: torch.Tensor, targets: torch.Tensor,
                      sequence_ids: Any = None, chunk: int = 512) -> "SketchState":
        """Add positions from the model's logits (n, K) and target ids (n,):
        e = softmax(logits) − onehot(target), built chunk by chunk in float32."""
        logits = _as_tensor("logits", logits, self.sketcher.K)
        targets = torch.as_tensor(targets).long()
        if targets.shape != (logits.shape[0],):
            raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.sketcher.K):
            raise ValueError(f"targets must lie in [0, {self.sketcher.K}), got range "
                             f"[{int(targets.min())}, {int(targets.max())}]")
        ids = None if sequence_ids is None else np.asarray(
            sequence_ids.cpu() if isinstance(sequence_ids, torch.Tensor) else sequence_ids)
        if ids is not None and ids.shape != (logits.shape[0],):
            raise ValueError(f"sequence_ids must have shape ({logits.shape[0]},), got {ids.shape}")
        h = _as_tensor("h", h, self.sketcher.d)
        from .extract import errors_from_logits  # fused in-place softmax; imported late (transformers)

        for start in range(0, logits.shape[0], chunk):
            sl = slice(start, start + chunk)
            err, _ = errors_from_logits(logits[sl], targets[sl])  # (chunk, K), float32 copy
            self.update(h[sl], err, None if ids is None else ids[sl])
        return self

    def merge(self, other: "SketchState") -> "SketchState":
        """Add another shard's state in place (refused when its sketch settings differ)."""
        if not isinstance(other, SketchState):
            raise TypeError(f"can only merge a SketchState, got {type(other).__name__}")
        check_compatible(self.meta, other.meta, what="sketch states")
        self.joint_sum += other.joint_sum
        self.activation_sum += other.activation_sum
        self.error_sum += other.error_sum
        self.counts += other.counts
        self._next_position += other._next_position
        return self

    def signature(self, task_name: str = "", model_id: str = "", model_hash: str = "",
                  **extra: Any) -> Signature:
        """The task's signature: float32 half means plus metadata."""
        if self.n_positions == 0:
            raise ValueError("cannot make a signature from an empty state: no positions were added")
        denom = self.counts.clamp(min=1).double()[:, None]
        meta = self.meta.replace(task_name=task_name, model_id=model_id, model_hash=model_hash, extra=extra)
        return Signature(joint_half=(self.joint_sum / denom).float().numpy(),
                         activation_half=(self.activation_sum / denom).float().numpy(),
                         error_half=(self.error_sum / denom).float().numpy(),
                         counts=self.counts.numpy().copy(), meta=meta)

    # --- flat vector form, for torch.distributed all_reduce ------------------------------
    def as_vector(self) -> torch.Tensor:
        """All sums and counts as one float64 vector of length 6m + 3 (counts are exact below 2^53)."""
        return torch.cat([self.joint_sum.reshape(-1), self.activation_sum.reshape(-1),
                          self.error_sum.reshape(-1), self.counts.double(),
                          torch.tensor([float(self._next_position)], dtype=torch.float64)])

    def load_vector(self, vec: torch.Tensor) -> "SketchState":
        m = self.sketcher.m
        vec = torch.as_tensor(vec, dtype=torch.float64).cpu()
        if vec.shape != (6 * m + 3,):
            raise ValueError(f"state vector must have length {6 * m + 3} for m={m}, got {tuple(vec.shape)}")
        self.joint_sum = vec[: 2 * m].reshape(2, m).clone()
        self.activation_sum = vec[2 * m: 4 * m].reshape(2, m).clone()
        self.error_sum = vec[4 * m: 6 * m].reshape(2, m).clone()
        self.counts = vec[6 * m: 6 * m + 2].round().long()
        self._next_position = int(round(float(vec[-1])))
        return self

    # --- checkpoints -------------------------------------------------------------------
    def save(self, path: str | Path, **progress: Any) -> Path:
        """Write the state (and any JSON-able progress info, e.g. how far a task got) atomically."""
        path = Path(path)
        header = {"meta": self.meta.to_dict(), "progress": progress}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, header=np.array(json.dumps(header)), vector=self.as_vector().numpy())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, sketcher: Sketcher | None = None) -> tuple["SketchState", dict]:
        """Read a checkpoint; returns (state, progress). With ``sketcher`` given, its settings must match."""
        with np.load(Path(path), allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            vector = torch.from_numpy(npz["vector"].copy())
        meta = SketchMeta.from_dict(header["meta"])
        if sketcher is None:
            sketcher = Sketcher(meta.d, meta.K, meta.m, meta.seed, meta.method)
        else:
            check_compatible(sketcher.meta, meta, what="checkpoint and sketcher")
        return cls(sketcher).load_vector(vector), header.get("progress", {})
