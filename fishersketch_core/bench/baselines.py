"""Every similarity method of the protocol, computed on the same probe splits.

Each method gives a symmetric (tasks × tasks) score matrix (higher = more similar = predicted to transfer
better). Methods and what they are computed from:

============== ============================================================ ===================================
key            method                                                       positions
============== ============================================================ ===================================
fishersketch   FisherSketch ρ_F, U form, fast sketch (m, seed of the store)  all probe positions (signature)
exact_rho_F    exact ρ_F, U form, float64 from Gram matrices                 ``exact_positions`` per task
rho_h          activation-only ρ_h, exact uncentred 2nd moment, U form       all probe positions
rho_h_centred  activation-only, cosine of centred covariances (V form)      all probe positions
cka            linear CKA on h, rows paired by index (equal-size subsamples) ``cka_positions`` per task
rho_e          error-only ρ_e, sketch, U form                                all probe positions (signature)
kronecker      Kronecker (K-FAC) prediction ρ_h·ρ_e, sketch                  all probe positions (signature)
mean_gradient  cosine of mean head gradients Eᵀ H / n (K × d)                ``baseline_positions`` per task
diag_fisher    cosine of diagonal head Fishers (E∘E)ᵀ(H∘H)/n (Task2Vec)      ``baseline_positions`` per task
unigram        cosine of target-token count vectors                          all probe positions
random         seeded uniform random scores                                  —
rho_h_sketch   activation-only ρ_h from the sketch (reported for reference)  all probe positions (signature)
============== ============================================================ ===================================

The errors ``e = softmax(h Wᵀ) − onehot(y)`` are recomputed from the cached (float16) head inputs, never
materialised at full size: :func:`error_statistics` makes one pass over vocabulary blocks for all tasks at
once, accumulating the mean-gradient and diagonal-Fisher Gram matrices (tasks × tasks) and the error Gram
of the exact subsample (positions × positions); it checkpoints between blocks.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["METHODS", "METHOD_LABELS", "sketch_scores", "load_store_signatures", "activation_scores",
           "cka_scores", "unigram_scores", "random_scores", "error_statistics", "exact_from_grams",
           "subsample_signatures", "TaskProbe"]

METHOD_LABELS = {
    "fishersketch": "FisherSketch ρ_F (sketch, U)",
    "exact_rho_F": "exact ρ_F (subsample, U)",
    "rho_h": "activation ρ_h (exact, U)",
    "rho_h_centred": "activation ρ_h, centred",
    "cka": "linear CKA on h (paired)",
    "rho_e": "error-only ρ_e (sketch, U)",
    "kronecker": "Kronecker ρ_h·ρ_e (sketch)",
    "mean_gradient": "mean-gradient cosine",
    "diag_fisher": "diagonal-Fisher cosine (Task2Vec-style)",
    "unigram": "unigram target similarity",
    "random": "random",
    "rho_h_sketch": "activation ρ_h (sketch, U)",
}
METHODS = tuple(METHOD_LABELS)


class TaskProbe:
    """Probe positions of one task: h (n, d) float16/32, targets (n,), sequence_ids (n,)."""

    def __init__(self, h: np.ndarray, targets: np.ndarray, sequence_ids: np.ndarray):
        self.h = np.asarray(h)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.sequence_ids = np.asarray(sequence_ids, dtype=np.int64)
        if not (len(self.h) == len(self.targets) == len(self.sequence_ids)):
            raise ValueError("h, targets and sequence_ids must have the same number of positions")

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, idx: np.ndarray) -> "TaskProbe":
        return TaskProbe(self.h[idx], self.targets[idx], self.sequence_ids[idx])


def _frame(mat: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(mat, dtype=float), index=list(names), columns=list(names))


def _cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(gram), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = gram / np.outer(d, d)
    return out


# --- sketch methods (from stored signatures) -------------------------------------------------------------------

def load_store_signatures(store_path: str | os.PathLike, names: Sequence[str] | None = None, *,
                          model_hash: str | None = None, m: int | None = None, seed: int | None = None,
                          method: str | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Signatures of a store (name → Signature) and their metadata rows.

    A store locked by a writer (the domains job) is copied (with its WAL) to a temporary folder and the
    copy is read. Names that repeat within the selection raise; pass model_hash/m/seed/method to pick.
    """
    from ..store import SignatureStore

    path = Path(store_path)
    if not path.exists():
        raise FileNotFoundError(f"no signature store at {path}")
    tmpdir = None
    try:
        try:
            store = SignatureStore(path, read_only=True)
        except Exception:
            tmpdir = Path(tempfile.mkdtemp(prefix="fs-bench-store-"))
            shutil.copyfile(path, tmpdir / path.name)
            wal = path.with_name(path.name + ".wal")
            if wal.exists():
                shutil.copyfile(wal, tmpdir / wal.name)
            store = SignatureStore(tmpdir / path.name, read_only=True)
        with store:
            meta = store.list(model=model_hash, m=m, seed=seed, method=method)
            if names is not None:
                meta = meta[meta["name"].isin(list(names))]
            if meta["name"].duplicated().any():
                dup = meta.loc[meta["name"].duplicated(), "name"].tolist()[:3]
                raise ValueError(f"store {path} holds several signatures named {dup}; pass model_hash/m/seed/method")
            sigs = store.get_many(meta["id"].tolist())
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return dict(zip(meta["name"], sigs)), meta.reset_index(drop=True)


def sketch_scores(sigs: Mapping[str, Any], names: Sequence[str], form: str = "U") -> dict[str, pd.DataFrame]:
    """fishersketch (ρ_F), rho_h_sketch, rho_e and kronecker (ρ_h·ρ_e) from signatures, via
    :func:`fishersketch_core.align.alignment_matrix`."""
    from ..align import alignment_matrix

    mats = alignment_matrix([sigs[n] for n in names], form=form)
    return {"fishersketch": _frame(mats["joint"], names), "rho_h_sketch": _frame(mats["activation"], names),
            "rho_e": _frame(mats["error"], names),
            "kronecker": _frame(mats["activation"] * mats["error"], names)}


# --- activation-only, unigram, random --------------------------------------------------------------------------

def activation_scores(probes: Mapping[str, TaskProbe], names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Exact ρ_h (uncentred second moment, U form) and the cosine of centred covariances, float64."""
    S, Ssq, C = [], [], []
    for n in names:
        h = torch.from_numpy(np.asarray(probes[n].h, dtype=np.float64))
        k = h.shape[0]
        hth = h.T @ h                                                   # (d, d)
        S.append((hth / k).reshape(-1))
        sq = (h * h).sum(1)
        # U-form ‖A‖²: mean over i ≠ j of (h_i·h_j)²
        Ssq.append(float(((hth * hth).sum() - (sq * sq).sum()) / (k * (k - 1))) if k > 1 else math.nan)
        mu = h.mean(0)
        C.append((hth / k - torch.outer(mu, mu)).reshape(-1))
    S_ = torch.stack(S)
    cross = (S_ @ S_.T).numpy()                                         # ⟨A_s, A_t⟩ (distinct tasks: exact)
    selfu = np.array(Ssq)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cross / np.sqrt(np.outer(selfu, selfu))
    np.fill_diagonal(rho, 1.0)
    C_ = torch.stack(C)
    cent = _cosine_from_gram((C_ @ C_.T).numpy())
    return {"rho_h": _frame(rho, names), "rho_h_centred": _frame(cent, names)}


def cka_scores(probes: Mapping[str, TaskProbe], names: Sequence[str], positions: int = 512, seed: int = 0
               ) -> pd.DataFrame:
    """Linear CKA between tasks with rows paired by index: each task's first ``positions`` positions of a
    seeded random order, the same order for tasks of equal size (equal sizes; the smallest task bounds it). ⟨K_x, K_y⟩ / (‖K_x‖‖K_y‖) with
    centred linear kernels K = X_c X_cᵀ, which equals ‖X_cᵀY_c‖²/(‖X_cᵀX_c‖‖Y_cᵀY_c‖)."""
    n = min([positions] + [len(probes[t]) for t in names])
    ks = []
    for t in names:
        # the same permutation for tasks of equal size, so identical inputs stay paired row by row
        idx = np.random.default_rng(seed).permutation(len(probes[t]))[:n]
        x = torch.from_numpy(np.asarray(probes[t].h[idx], dtype=np.float64))
        x = x - x.mean(0)
        ks.append((x @ x.T).reshape(-1).float())
    K = torch.stack(ks)
    return _frame(_cosine_from_gram((K @ K.T).double().numpy()), names)


def unigram_scores(probes: Mapping[str, TaskProbe], names: Sequence[str], K: int) -> pd.DataFrame:
    """Cosine between the target-token count vectors of the tasks' probe positions."""
    rows = [np.bincount(probes[t].targets, minlength=K).astype(np.float64) for t in names]
    X = np.stack(rows)
    return _frame(_cosine_from_gram(X @ X.T), names)


def random_scores(names: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Seeded i.i.d. uniform scores (not symmetric: an independent draw per (source, target))."""
    rng = np.random.default_rng(seed)
    return _frame(rng.random((len(names), len(names))), names)


# --- the vocabulary pass: mean gradient, diagonal Fisher, exact Grams ---------------------------------------------

def _lse(W: torch.Tensor, h: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    out = torch.empty(h.shape[0])
    for a in range(0, h.shape[0], chunk):
        out[a:a + chunk] = torch.logsumexp(h[a:a + chunk] @ W.T, 1)
    return out


def error_statistics(W: torch.Tensor, probes: Mapping[str, TaskProbe], names: Sequence[str], *,
                     exact_index: Mapping[str, np.ndarray], vocab_chunk: int = 1024,
                     checkpoint: str | os.PathLike | None = None, checkpoint_seconds: float = 600.0,
                     log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """One pass over vocabulary blocks for every task at once.

    Parameters
    ----------
    W : (K, d) head
    probes : name → TaskProbe (the baseline subsample of each task's probe split)
    exact_index : name → indices into that task's probe positions forming the exact subsample
    vocab_chunk : vocabulary rows per block (memory ≈ tasks × vocab_chunk × d × 4 bytes, twice)

    Returns
    -------
    dict with ``gram_mean_gradient`` and ``gram_diag_fisher`` (tasks × tasks, float64, of the mean
    gradients Eᵀ H / n and of (E∘E)ᵀ(H∘H)/n), ``gram_error`` (N × N float64, e_i·e_j over the concatenated
    exact subsamples), ``exact_offsets`` (start of each task's rows), and ``seconds``.
    """
    log = log or (lambda s: None)
    K, d = W.shape
    T = len(names)
    H = [torch.from_numpy(np.asarray(probes[t].h, dtype=np.float32)) for t in names]
    Y = [torch.from_numpy(probes[t].targets) for t in names]
    ex = [torch.from_numpy(np.asarray(exact_index[t], dtype=np.int64)) for t in names]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in ex])])
    N = int(offsets[-1])
    state = {"block": 0, "gm": np.zeros((T, T)), "gd": np.zeros((T, T)),
             "ge": torch.zeros((N, N), dtype=torch.float64), "seconds": 0.0}
    lse: list[torch.Tensor] | None = None
    ck = Path(checkpoint) if checkpoint is not None else None
    sig = {"names": list(names), "K": K, "d": d, "N": N, "vocab_chunk": vocab_chunk,
           "n": [len(h) for h in H], "wsum": float(W.double().sum())}
    if ck is not None and ck.exists():
        with np.load(ck, allow_pickle=False) as z:
            if str(z["sig"]) == repr(sig):
                state = {"block": int(z["block"]), "gm": z["gm"], "gd": z["gd"], "ge": torch.from_numpy(z["ge"]),
                         "seconds": float(z["seconds"])}
                lse = [torch.from_numpy(z[f"lse{i}"]) for i in range(T)]
                log(f"vocabulary pass: resuming at block {state['block']}")
            else:
                log("vocabulary pass: checkpoint belongs to other inputs; starting over")
    t0 = time.time()
    if lse is None:
        lse = [_lse(W, h) for h in H]
        log(f"vocabulary pass: log-normalisers of {sum(len(h) for h in H)} positions in {time.time() - t0:.0f} s")
    H2 = [h * h for h in H]
    n_blocks = math.ceil(K / vocab_chunk)
    last_save = time.time()

    def save(block: int) -> None:
        if ck is None:
            return
        tmp = ck.with_name(ck.name + ".tmp.npz")
        np.savez(tmp, sig=np.array(repr(sig)), block=block, gm=state["gm"], gd=state["gd"], ge=state["ge"].numpy(),
                 seconds=state["seconds"] + time.time() - t0, **{f"lse{i}": l.numpy() for i, l in enumerate(lse)})
        tmp.replace(ck)

    for b in range(state["block"], n_blocks):
        lo, hi = b * vocab_chunk, min(K, (b + 1) * vocab_chunk)
        Wc = W[lo:hi]                                                   # (c, d)
        XM = torch.empty(T, (hi - lo) * d)
        XD = torch.empty(T, (hi - lo) * d)
        EX = torch.empty(N, hi - lo)
        for i in range(T):
            E = torch.exp(H[i] @ Wc.T - lse[i][:, None])               # (n, c): p restricted to the block
            inb = (Y[i] >= lo) & (Y[i] < hi)
            rows = torch.nonzero(inb).squeeze(1)
            E[rows, Y[i][rows] - lo] -= 1.0                             # e = p − onehot
            n = E.shape[0]
            XM[i] = (E.T @ H[i]).reshape(-1) / n                        # mean gradient block (c, d)
            XD[i] = ((E * E).T @ H2[i]).reshape(-1) / n                 # diagonal Fisher block
            EX[offsets[i]:offsets[i + 1]] = E[ex[i]]
        state["gm"] += (XM @ XM.T).double().numpy()
        state["gd"] += (XD @ XD.T).double().numpy()
        state["ge"].add_(EX @ EX.T)                                     # float32 block product, float64 sum
        del XM, XD, EX
        if b % 8 == 7 or b == n_blocks - 1:
            el = time.time() - t0
            log(f"vocabulary pass: block {b + 1}/{n_blocks} ({el:.0f} s)")
        if time.time() - last_save > checkpoint_seconds and b < n_blocks - 1:
            save(b + 1)
            last_save = time.time()
    state["seconds"] += time.time() - t0
    if ck is not None and ck.exists():
        ck.unlink()
    return {"gram_mean_gradient": state["gm"], "gram_diag_fisher": state["gd"], "gram_error": state["ge"].numpy(),
            "exact_offsets": offsets, "seconds": state["seconds"]}


def exact_from_grams(probes: Mapping[str, TaskProbe], names: Sequence[str], exact_index: Mapping[str, np.ndarray],
                     gram_error: np.ndarray, offsets: np.ndarray) -> dict[str, Any]:
    """Exact ρ_F, ρ_h, ρ_e between tasks on the exact subsample, in the U form (same-position pairs dropped)
    and the split form (self-norms over cross-half pairs, halves by sequence id as in the sketch).

    Returns dict of (tasks × tasks) DataFrames: ``exact_rho_F`` (U), ``exact_rho_h`` (U), ``exact_rho_e`` (U),
    ``exact_rho_F_split``.
    """
    from ..sketch import route_halves

    T = len(names)
    hx = torch.cat([torch.from_numpy(np.asarray(probes[t].h[exact_index[t]], dtype=np.float64)) for t in names])
    halves = np.concatenate([route_halves(probes[t].sequence_ids[exact_index[t]]) for t in names])
    ge = torch.from_numpy(gram_error)
    block = {k: np.zeros((T, T)) for k in ("F", "h", "e")}
    selfu = {k: np.zeros(T) for k in ("F", "h", "e")}
    selfsplit = np.full(T, np.nan)
    sizes = np.diff(offsets)
    for i in range(T):
        a, b = int(offsets[i]), int(offsets[i + 1])
        kh = (hx[a:b] @ hx.T) ** 2                                      # (n_i, N)
        ke = ge[a:b] ** 2
        kf = kh * ke
        for key, k in (("F", kf), ("h", kh), ("e", ke)):
            sums = np.add.reduceat(k.sum(0).numpy(), offsets[:-1].astype(np.int64))
            block[key][i] = sums / (sizes[i] * sizes)
            diag_blk = k[:, a:b]
            n = b - a
            selfu[key][i] = float((diag_blk.sum() - torch.diagonal(diag_blk).sum()) / (n * (n - 1))) if n > 1 else math.nan
        h0, h1 = halves[a:b] == 0, halves[a:b] == 1
        if h0.any() and h1.any():
            selfsplit[i] = float(kf[:, a:b][np.ix_(h0, h1)].mean())
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, label in (("F", "exact_rho_F"), ("h", "exact_rho_h"), ("e", "exact_rho_e")):
            r = block[key] / np.sqrt(np.outer(selfu[key], selfu[key]))
            np.fill_diagonal(r, 1.0)
            out[label] = _frame(r, names)
        r = block["F"] / np.sqrt(np.outer(selfsplit, selfsplit))
        np.fill_diagonal(r, 1.0)
        out["exact_rho_F_split"] = _frame(r, names)
    return out


def subsample_signatures(W: torch.Tensor, probes: Mapping[str, TaskProbe], names: Sequence[str],
                         exact_index: Mapping[str, np.ndarray], sketcher: Any, model_hash: str = "") -> dict[str, Any]:
    """Signatures of exactly the exact-subsample positions (same sketch settings as the store), so that
    sketch and exact can be compared on identical data: name → Signature."""
    out = {}
    for t in names:
        p = probes[t].take(np.asarray(exact_index[t]))
        h = torch.from_numpy(np.asarray(p.h, dtype=np.float32))
        st = sketcher.new_state()
        st.update_logits(h, h @ W.T, torch.from_numpy(p.targets), sequence_ids=p.sequence_ids, chunk=256)
        out[t] = st.signature(task_name=t, model_hash=model_hash)
    return out
