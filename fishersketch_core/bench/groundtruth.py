"""Ground-truth transfer: head-only adaptation from cached head inputs, and the gains it gives.

The quantity FisherSketch is about is the output head ``W`` (K × d). For every source ``s`` the head is
adapted — a detached float32 copy of the pretrained ``W``, never the model's own (tied) embeddings — on
``s``'s adaptation split with one fixed :class:`Recipe`; the gain on target ``t`` is

    g(s → t) = L_t(W) − L_t(W_s)          (mean NLL in nats on t's held-out evaluation split)

so that positive means "adapting on s helps t". Only cached head inputs ``h`` and targets ``y`` are used:
no transformer forward pass. Logits of ``n`` positions cost ``n·d·K`` multiply-adds (28 M per position
for SmolLM2), so every computation is chunked over positions (``Recipe.chunk`` rows of logits at a time)
and only the (source, target) pairs the protocol needs are evaluated.

Recipe (default, chosen on calibration domains that are excluded from evaluation; see docs/RESULTS.md):
full-batch gradient descent on the mean NLL of the source's adaptation positions with Armijo backtracking
(start step ``lr0``; a step is accepted when ``L(W − ηG) ≤ L(W) − c·η‖G‖²``, otherwise η is halved and kept
for later steps), ``steps`` accepted steps. Every loss evaluation also yields the gradient at that point,
so an accepted step costs one pass of 2·n·d·K multiply-adds.

:func:`compute_gains` runs as a checkpointing job: one CSV row per (source, target) pair, rewritten
atomically after every source, so a stopped job loses at most the source in flight and a rerun resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["Recipe", "DomainCache", "subsample_index", "head_weight", "mean_nll", "per_position_nll",
           "loss_and_grad", "adapt_head", "compute_gains", "needed_pairs", "load_positions", "GAIN_COLUMNS"]

GAIN_COLUMNS = ["source", "target", "gain", "loss_before", "loss_after", "adapt_loss_before",
                "adapt_loss_after", "steps", "final_lr", "backtracks", "seconds"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One fixed head-only adaptation recipe (the same for every source).

    Attributes
    ----------
    optimizer : "gd-armijo" (full-batch GD with backtracking) or "gd" (fixed step ``lr0``)
    steps : accepted gradient steps
    lr0 : initial step size (on the mean-NLL gradient ``Eᵀ H / n``)
    armijo_c : sufficient-decrease constant c
    backtrack : factor η is multiplied by after a rejected step
    max_backtracks : rejected tries per step before giving up (the step is then skipped)
    adapt_positions : adaptation positions per source (seeded subsample of the adapt split)
    eval_positions : evaluation positions per target (seeded subsample of the eval split)
    subsample_seed : seed of both subsamples
    chunk : rows of logits computed at a time (memory: chunk × K × 4 bytes)
    """

    optimizer: str = "gd-armijo"
    steps: int = 5
    lr0: float = 0.01
    armijo_c: float = 0.5
    backtrack: float = 0.5
    max_backtracks: int = 12
    adapt_positions: int = 1024
    eval_positions: int = 512
    subsample_seed: int = 0
    chunk: int = 512

    def __post_init__(self) -> None:
        if self.optimizer not in ("gd-armijo", "gd"):
            raise ValueError(f"optimizer must be 'gd-armijo' or 'gd', got {self.optimizer!r}")
        for name in ("steps", "adapt_positions", "eval_positions", "chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Recipe.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr0 > 0:
            raise ValueError(f"Recipe.lr0 must be > 0, got {self.lr0!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Short hash of everything that changes the gains (not ``chunk``, which only changes memory)."""
        d = self.to_dict()
        d.pop("chunk")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        if self.optimizer == "gd":
            opt = f"full-batch gradient descent, fixed step {self.lr0:g}"
        else:
            opt = (f"full-batch gradient descent with Armijo backtracking (initial step {self.lr0:g}, "
                   f"c = {self.armijo_c:g}, step × {self.backtrack:g} on rejection, carried over)")
        return (f"head only (detached float32 copy of the pretrained output embedding W), {opt}, "
                f"{self.steps} accepted steps on the mean NLL of {self.adapt_positions} adaptation positions "
                f"per source; gain = drop in mean NLL on {self.eval_positions} held-out evaluation positions "
                f"of the target (subsample seed {self.subsample_seed})")


# --- data ---------------------------------------------------------------------------------------------------

def subsample_index(n: int, k: int | None, name: str, split: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subsample of ``k`` of ``n`` positions, fixed per (name, split, seed).

    ``k`` ≥ ``n`` (or None) keeps every position.
    """
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{name}/{split}".encode())])
    return np.sort(rng.choice(n, size=int(k), replace=False))


class DomainCache:
    """Read-only view of the activation cache written by ``python -m fishersketch_core domains``.

    ``<cache>/<model_slug>/<domain>/<split>.npz`` with ``h`` (n, d) float16, ``targets``, ``sequence_ids``,
    ``nll``. Arrays are loaded lazily and kept (subsampled) in memory.
    """

    def __init__(self, cache: str | os.PathLike, model_hash: str):
        from ..domains import model_slug

        self.root = Path(cache).expanduser() / model_slug(model_hash)
        self.cache = Path(cache).expanduser()
        self.model_hash = model_hash
        self._mem: dict[tuple, dict[str, np.ndarray]] = {}

    def available(self, splits: Sequence[str] = ("probe", "adapt", "eval")) -> list[str]:
        """Domains with every split in ``splits`` cached (sorted)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and all((p / f"{s}.npz").is_file() for s in splits))

    def load(self, domain: str, split: str, k: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Arrays of one split, subsampled to ``k`` positions by :func:`subsample_index`."""
        key = (domain, split, k, seed)
        if key not in self._mem:
            from ..domains import load_cached

            full = load_cached(self.cache, self.model_hash, domain, split)
            idx = subsample_index(len(full["targets"]), k, domain, split, seed)
            self._mem[key] = {name: arr[idx] for name, arr in full.items()}
        return self._mem[key]

    def forget(self) -> None:
        self._mem.clear()


def head_weight(source: Any) -> torch.Tensor:
    """A detached float32 (K, d) copy of the output head: from a LoadedModel, an nn.Module, a tensor,
    an array or a ``.npy`` file."""
    if isinstance(source, (str, os.PathLike)):
        return torch.from_numpy(np.load(source).astype(np.float32))
    if isinstance(source, np.ndarray):
        return torch.from_numpy(source.astype(np.float32, copy=True))
    if isinstance(source, torch.Tensor):
        return source.detach().to(torch.float32).clone()
    model = getattr(source, "model", source)
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("the ground truth needs a bias-free linear output head (logits = h Wᵀ)")
    return head.weight.detach().to(torch.float32, copy=True).cpu()


def _as_f32(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _as_long(y: Any) -> torch.Tensor:
    return y.long() if isinstance(y, torch.Tensor) else torch.from_numpy(np.asarray(y, dtype=np.int64))


# --- losses -------------------------------------------------------------------------------------------------

def per_position_nll(W: torch.Tensor, h: Any, y: Any, chunk: int = 512) -> torch.Tensor:
    """−log softmax(h Wᵀ)_y for every position (float32, chunked over positions)."""
    h, y = _as_f32(h), _as_long(y)
    out = torch.empty(len(y), dtype=torch.float32)
    with torch.no_grad():
        for a in range(0, len(y), chunk):
            z = h[a:a + chunk] @ W.T                                             # (c, K)
            out[a:a + chunk] = torch.logsumexp(z, 1) - z.gather(1, y[a:a + chunk, None]).squeeze(1)
    return out


def mean_nll(W: torch.Tensor, h: Any, y: Any, chunk: int = 512) -> float:
    """Mean NLL of the head ``W`` on positions (h, y), accumulated in float64."""
    return float(per_position_nll(W, h, y, chunk).double().mean())


def loss_and_grad(W: torch.Tensor, h: Any, y: Any, chunk: int = 512) -> tuple[float, torch.Tensor]:
    """Mean NLL and its gradient ``Eᵀ H / n`` (K × d) with ``E = softmax(H Wᵀ) − onehot(y)``."""
    h, y = _as_f32(h), _as_long(y)
    n = len(y)
    G = torch.zeros_like(W)
    total = 0.0
    with torch.no_grad():
        for a in range(0, n, chunk):
            hc, yc = h[a:a + chunk], y[a:a + chunk]
            z = hc @ W.T                                                         # (c, K)
            lse = torch.logsumexp(z, 1)                                          # (c,)
            total += float((lse - z.gather(1, yc[:, None]).squeeze(1)).double().sum())
            z.sub_(lse[:, None]).exp_()                                          # p, in place
            z.scatter_add_(1, yc[:, None], torch.full((len(yc), 1), -1.0))       # e = p − onehot
            G.addmm_(z.T, hc)
    G.div_(n)
    return total / n, G


def adapt_head(W0: torch.Tensor, h: Any, y: Any, recipe: Recipe,
               log: Callable[[str], Any] | None = None,
               on_step: Callable[[int, torch.Tensor, dict[str, Any]], Any] | None = None
               ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Adapt a copy of ``W0`` on positions (h, y) with ``recipe``; returns (W, info).

    ``info``: adapt_loss_before, adapt_loss_after, steps (accepted), final_lr, backtracks.
    ``on_step(k, W, info)`` is called after every accepted step k = 1, 2, ... (W must not be modified).
    """
    h, y = _as_f32(h), _as_long(y)
    W = W0.clone()
    L, G = loss_and_grad(W, h, y, recipe.chunk)
    info = {"adapt_loss_before": L, "steps": 0, "backtracks": 0}
    eta = float(recipe.lr0)
    for step in range(recipe.steps):
        if recipe.optimizer == "gd":
            W.sub_(G, alpha=eta)
            L, G = loss_and_grad(W, h, y, recipe.chunk)
            info["steps"] += 1
            if on_step:
                on_step(info["steps"], W, {**info, "adapt_loss_after": L, "final_lr": eta})
            continue
        gn = float((G.double() ** 2).sum())
        if gn == 0.0:
            break
        accepted = False
        for _ in range(recipe.max_backtracks + 1):
            Wn = W - eta * G
            Ln, Gn = loss_and_grad(Wn, h, y, recipe.chunk)
            if math.isfinite(Ln) and Ln <= L - recipe.armijo_c * eta * gn:
                accepted = True
                break
            eta *= recipe.backtrack
            info["backtracks"] += 1
        if not accepted:
            break
        W, L, G = Wn, Ln, Gn
        info["steps"] += 1
        if on_step:
            on_step(info["steps"], W, {**info, "adapt_loss_after": L, "final_lr": eta})
        if log:
            log(f"  step {step + 1}: adapt NLL {L:.4f} (η = {eta:.3g})")
    info["adapt_loss_after"] = L
    info["final_lr"] = eta
    return W, info


# --- the job ------------------------------------------------------------------------------------------------

def needed_pairs(pools: Mapping[str, Sequence[str]], self_gain: bool = True) -> dict[str, list[str]]:
    """For every source, the targets whose pool contains it (and itself when ``self_gain``), sorted."""
    need: dict[str, set[str]] = {}
    for t, pool in pools.items():
        for s in pool:
            if s != t:
                need.setdefault(s, set()).add(t)
        if self_gain:
            need.setdefault(t, set()).add(t)
    return {s: sorted(ts) for s, ts in sorted(need.items())}


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in name)


def _savez_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_positions(positions_dir: str | os.PathLike, sources: Iterable[str]) -> tuple[dict[str, np.ndarray],
                                                                                       dict[tuple[str, str], np.ndarray]]:
    """Per-position evaluation NLLs written by :func:`compute_gains`: (before[target], after[(source, target)])."""
    pdir = Path(positions_dir)
    with np.load(pdir / "_before.npz", allow_pickle=False) as z:
        before = {k: z[k] for k in z.files}
    after: dict[tuple[str, str], np.ndarray] = {}
    for s in sources:
        f = pdir / f"{_safe_name(s)}.npz"
        if f.exists():
            with np.load(f, allow_pickle=False) as z:
                after.update({(s, t): z[t] for t in z.files})
    return before, after


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def compute_gains(W0: torch.Tensor, adapt: Callable[[str], tuple[Any, Any]], evaluate: Callable[[str], tuple[Any, Any]],
                  needed: Mapping[str, Sequence[str]], recipe: Recipe, checkpoint: str | os.PathLike | None = None,
                  log: Callable[[str], Any] | None = None, should_stop: Callable[[], bool] | None = None,
                  positions_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Gains g(s → t) for every source s and target t in ``needed[s]``; resumable.

    Parameters
    ----------
    W0 : (K, d) float32 pretrained head (not modified)
    adapt, evaluate : callables name → (h, y) giving a domain's adaptation / evaluation positions
    needed : source → targets (see :func:`needed_pairs`)
    recipe : the one adaptation recipe
    checkpoint : CSV file; rows already there (same recipe) are kept and not recomputed
    should_stop : polled between sources; when it returns True the job returns what it has
    positions_dir : optional folder for the per-position evaluation NLLs (``_before.npz``, one
        ``<source>.npz`` per source keyed by target), for bootstrap estimates of the ground truth's noise;
        with it, a source whose file is missing is recomputed even if its rows are in the checkpoint

    Returns
    -------
    DataFrame with :data:`GAIN_COLUMNS`, one row per pair.
    """
    log = log or (lambda s: None)
    path = Path(checkpoint) if checkpoint is not None else None
    before_path = path.with_name(path.stem + ".before.csv") if path is not None else None
    rows: list[dict[str, Any]] = []
    if path is not None and path.exists():
        rows = pd.read_csv(path).to_dict("records")
    done = {(r["source"], r["target"]) for r in rows}
    before: dict[str, float] = {}
    if before_path is not None and before_path.exists():
        before = dict(pd.read_csv(before_path)[["target", "loss_before"]].itertuples(index=False, name=None))
    targets = sorted({t for ts in needed.values() for t in ts})
    pdir = Path(positions_dir) if positions_dir is not None else None
    if pdir is not None:
        pdir.mkdir(parents=True, exist_ok=True)
        bfile = pdir / "_before.npz"
        have = {}
        if bfile.exists():
            with np.load(bfile, allow_pickle=False) as z:
                have = {k: z[k] for k in z.files}
        miss = [t for t in targets if t not in have]
        if miss:
            for t in miss:
                have[t] = per_position_nll(W0, *evaluate(t), chunk=recipe.chunk).numpy()
            _savez_atomic(bfile, have)
        for s_ in list(needed):
            f = pdir / f"{_safe_name(s_)}.npz"
            ok = False
            if f.exists():
                with np.load(f, allow_pickle=False) as z:
                    ok = set(needed[s_]) <= set(z.files)
            if not ok and any(r["source"] == s_ for r in rows):
                rows = [r for r in rows if r["source"] != s_]
        done = {(r["source"], r["target"]) for r in rows}
    missing_before = [t for t in targets if t not in before]
    if missing_before:
        t0 = time.time()
        for t in missing_before:
            before[t] = mean_nll(W0, *evaluate(t), chunk=recipe.chunk)
        if before_path is not None:
            _write_csv_atomic(pd.DataFrame({"target": list(before), "loss_before": list(before.values())}),
                              before_path)
        log(f"pretrained head: eval NLL of {len(missing_before)} targets in {time.time() - t0:.1f} s")
    todo = [(s, [t for t in ts if (s, t) not in done]) for s, ts in needed.items()]
    todo = [(s, ts) for s, ts in todo if ts]
    log(f"{len(done)} pairs already done; {sum(len(ts) for _, ts in todo)} pairs from {len(todo)} sources to go")
    t_start = time.time()
    for i, (s, ts) in enumerate(todo, 1):
        if should_stop is not None and should_stop():
            log("stop requested: returning the pairs done so far")
            break
        t0 = time.time()
        W, info = adapt_head(W0, *adapt(s), recipe)
        t_adapt = time.time() - t0
        per_pos: dict[str, np.ndarray] = {}
        for t in ts:
            pp = per_position_nll(W, *evaluate(t), chunk=recipe.chunk)
            per_pos[t] = pp.numpy()
            after = float(pp.double().mean())
            rows.append({"source": s, "target": t, "gain": before[t] - after, "loss_before": before[t],
                         "loss_after": after, "adapt_loss_before": info["adapt_loss_before"],
                         "adapt_loss_after": info["adapt_loss_after"], "steps": info["steps"],
                         "final_lr": info["final_lr"], "backtracks": info["backtracks"],
                         "seconds": time.time() - t0})
        del W
        if pdir is not None:
            f = pdir / f"{_safe_name(s)}.npz"
            if f.exists():
                with np.load(f, allow_pickle=False) as z:
                    per_pos = {**{k: z[k] for k in z.files}, **per_pos}
            _savez_atomic(f, per_pos)
        if path is not None:
            _write_csv_atomic(pd.DataFrame(rows, columns=GAIN_COLUMNS), path)
        el = time.time() - t_start
        self_g = next((r["gain"] for r in rows[-len(ts):] if r["target"] == s), float("nan"))
        log(f"[{i}/{len(todo)}] {s}: {info['steps']} steps, adapt NLL {info['adapt_loss_before']:.3f} → "
            f"{info['adapt_loss_after']:.3f}, self-gain {self_g:+.4f}, {len(ts)} targets, "
            f"{t_adapt:.0f}+{time.time() - t0 - t_adapt:.0f} s (ETA {el / i * (len(todo) - i) / 60:.0f} min)")
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def gain_matrix(gains: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Long gains (source, target, gain) → (sources × targets) matrix (NaN where not computed)."""
    mat = gains.pivot_table(index="source", columns="target", values="gain", aggfunc="mean")
    if names is not None:
        names = list(names)
        mat = mat.reindex(index=names, columns=names)
    return mat.astype(float)
