"""One streaming pass: model + task + sketcher -> signature, with progress, checkpoints and cancel.

:func:`compute_signature` is what the CLI and the web app call. It plans the forward batches
deterministically, sketches each batch into its own small state and adds it to the running state
(so the running state only ever holds whole batches), checkpoints the running state every
``checkpoint_every`` batches, and can be cancelled between batches; a cancelled or interrupted
job started again with the same checkpoint path skips the batches already done and finishes with
the identical signature.

Example
-------
>>> from fishersketch_core.models import load_model
>>> from fishersketch_core.tasks import CorpusTask
>>> from fishersketch_core.compute import compute_signature
>>> lm = load_model()                                                          # doctest: +SKIP
>>> res = compute_signature(lm, CorpusTask("demo", ["Hello world."]), m=4096,  # doctest: +SKIP
...                         progress=lambda p: print(f"{p.fraction:.0%} {p.tokens_per_s:.0f} tok/s"))
>>> res.signature.joint.shape                                                  # doctest: +SKIP
(4096,)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .extract import (DEFAULT_BATCH_TOKENS, DEFAULT_MAX_ERROR_BYTES, DEFAULT_MAX_LOGITS_BYTES, HeadCapture,
                      effective_lengths, errors_from_logits, forward_batch, plan_batches)
from .signature import Signature
from .sketch import Sketcher, SketchState
from .tasks import EncodedSequence, fingerprint

CHECKPOINT_FORMAT = "fishersketch-checkpoint"
CHECKPOINT_VERSION = 1


class ComputeCancelled(RuntimeError):
    """The job was cancelled between batches; ``checkpoint`` (if any) holds everything done so far."""

    def __init__(self, message: str, checkpoint: Path | None, progress: "Progress"):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.progress = progress


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a compute stands; handed to the ``progress`` callback after every batch.

    ``tokens_per_s`` and ``eta_s`` cover this run only (batches restored from a checkpoint are done
    but were not timed).
    """

    batches_done: int
    batches_total: int
    positions_done: int
    positions_total: int
    tokens_done: int
    tokens_total: int
    elapsed_s: float
    tokens_per_s: float
    eta_s: float
    resumed_batches: int = 0

    @property
    def fraction(self) -> float:
        return self.tokens_done / self.tokens_total if self.tokens_total else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fraction": self.fraction}


@dataclasses.dataclass
class ComputeResult:
    """A finished compute: the signature and what it took."""

    signature: Signature | None
    state: SketchState
    n_positions: int
    n_tokens: int
    mean_nll: float
    seconds: float
    resumed_batches: int = 0

    @property
    def perplexity(self) -> float:
        return float(math.exp(self.mean_nll)) if math.isfinite(self.mean_nll) else float("inf")


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel must be a threading.Event or a callable returning bool, got {type(cancel).__name__}")


def shard_sequences(seqs: Sequence[EncodedSequence], rank: int, world: int) -> list[EncodedSequence]:
    """The sequences rank ``rank`` of ``world`` sketches: sequences sorted by length (longest first,
    ties by position) dealt round-robin, so shards hold similar numbers of tokens."""
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got ({rank!r}, {world!r})")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    mine = sorted(order[rank::world])
    return [seqs[i] for i in mine]


def _job_key(lm: Any, sketcher: Sketcher, seqs: Sequence[EncodedSequence], settings: dict) -> str:
    payload = json.dumps({"model_hash": lm.model_hash, "sketch": sketcher.meta.to_dict(),
                          "task": fingerprint(seqs), "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _save_checkpoint(path: Path, state: SketchState, key: str, counters: dict) -> None:
    state.save(path, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, job=key, **counters)


def _load_checkpoint(path: Path, sketcher: Sketcher, key: str) -> tuple[SketchState, dict]:
    try:
        state, info = SketchState.load(path, sketcher)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from exc
    if info.get("format") != CHECKPOINT_FORMAT or info.get("job") != key:
        raise ValueError(f"checkpoint {path} belongs to a different job (other model, task, sketch or batch "
                         "settings); delete it or pass another checkpoint path to start this job afresh")
    return state, info


def resolve_sketcher(lm: Any, sketcher: Sketcher | None, m: int, seed: int, method: str) -> Sketcher:
    """The sketcher to use: ``sketcher`` (checked against the model's d and K) or a new one."""
    if sketcher is None:
        return Sketcher(lm.d, lm.K, m=m, seed=seed, method=method)
    if (sketcher.d, sketcher.K) != (lm.d, lm.K):
        raise ValueError(f"sketcher has d={sketcher.d}, K={sketcher.K} but the model's head has d={lm.d}, "
                         f"K={lm.K}; build it as Sketcher({lm.d}, {lm.K}, ...)")
    return sketcher


def compute_state(lm: Any, seqs: Sequence[EncodedSequence], sketcher: Sketcher, *,
                  max_length: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS, overlap: int = 0,
                  max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES,
                  progress: Callable[[Progress], Any] | None = None, checkpoint: str | os.PathLike | None = None,
                  checkpoint_every: int = 20, checkpoint_seconds: float = 60.0, cancel: Any = None,
                  keep_checkpoint: bool = False) -> tuple[SketchState, dict]:
    """Sketch already-encoded sequences into a state. Returns ``(state, counters)`` where counters
    holds ``positions``, ``tokens``, ``nll_sum``, ``batches``, ``resumed_batches``, ``seconds``.

    The building block of :func:`compute_signature` and of the sharded (torchrun) path.
    """
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every!r}")
    ml, bt = effective_lengths(lm.K, lm.context_length, max_length=max_length, batch_tokens=batch_tokens,
                               max_logits_bytes=max_logits_bytes)
    ov = min(int(overlap), ml - 2)
    plan = plan_batches(seqs, max_length=ml, batch_tokens=bt, overlap=ov)
    tokens_total = sum(b.n_tokens for b in plan)
    positions_total = sum(b.n_scored for b in plan)
    key = _job_key(lm, sketcher, seqs, {"max_length": ml, "batch_tokens": bt, "overlap": ov})
    ckpt = Path(checkpoint) if checkpoint is not None else None

    state = sketcher.new_state()
    c = {"batches_done": 0, "positions": 0, "tokens": 0, "nll_sum": 0.0}
    if ckpt is not None and ckpt.exists():
        state, info = _load_checkpoint(ckpt, sketcher, key)
        c = {k: info[k] for k in c}
    resumed = int(c["batches_done"])

    t0 = time.perf_counter()
    run_tokens = 0

    def report() -> Progress:
        el = time.perf_counter() - t0
        rate = run_tokens / el if el > 0 else 0.0
        left = tokens_total - c["tokens"]
        p = Progress(c["batches_done"], len(plan), c["positions"], positions_total, c["tokens"], tokens_total,
                     el, rate, (left / rate) if rate > 0 else float("inf") if left else 0.0, resumed)
        if progress is not None:
            progress(p)
        return p

    report()
    last_save = time.perf_counter()
    pending: dict | None = None  # counters of a batch being added to the state
    try:
        with HeadCapture(lm.model) as cap:
            for bi in range(resumed, len(plan)):
                if _is_cancelled(cancel):
                    if ckpt is not None:
                        _save_checkpoint(ckpt, state, key, c)
                    p = report()
                    raise ComputeCancelled(f"cancelled after {c['batches_done']} of {len(plan)} batches"
                                           + (f"; resume with the same checkpoint {ckpt}" if ckpt else ""), ckpt, p)
                chunk = forward_batch(lm, plan[bi], cap)
                bstate = sketcher.new_state()  # one batch, added whole: the running state never holds part of one
                nll_sum = 0.0
                for h, e, ids, nll in chunk.iter_errors(max_error_bytes):  # (n, d), (n, K), (n,), (n,)
                    bstate.update(h, e, sequence_ids=ids)
                    nll_sum += float(nll.double().sum())
                pending = {"batches_done": bi + 1, "positions": c["positions"] + chunk.n,
                           "tokens": c["tokens"] + chunk.n_tokens, "nll_sum": c["nll_sum"] + nll_sum}
                state.merge(bstate)
                c, pending = pending, None
                run_tokens += chunk.n_tokens
                done = c["batches_done"]
                if ckpt is not None and done < len(plan) and (
                        done % int(checkpoint_every) == 0 or time.perf_counter() - last_save >= checkpoint_seconds):
                    _save_checkpoint(ckpt, state, key, c)
                    last_save = time.perf_counter()
                report()
    except KeyboardInterrupt:
        # Ctrl-C: keep every whole batch already added (the state says whether the last one was)
        if pending is not None and state.n_positions == pending["positions"]:
            c = pending
        if ckpt is not None and state.n_positions == c["positions"]:
            _save_checkpoint(ckpt, state, key, c)
        raise
    if ckpt is not None and ckpt.exists() and not keep_checkpoint:
        ckpt.unlink()
    seconds = time.perf_counter() - t0
    return state, {"positions": c["positions"], "tokens": c["tokens"], "nll_sum": c["nll_sum"],
                   "batches": len(plan), "resumed_batches": resumed, "seconds": seconds,
                   "max_length": ml, "batch_tokens": bt, "overlap": ov}


def compute_signature(model: Any, task: Any, sketcher: Sketcher | None = None, *, m: int = 4096, seed: int = 0,
                      method: str = "fast", max_length: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                      overlap: int = 0, max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
                      max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES,
                      progress: Callable[[Progress], Any] | None = None, checkpoint: str | os.PathLike | None = None,
                      checkpoint_every: int = 20, checkpoint_seconds: float = 60.0, cancel: Any = None,
                      shard: tuple[int, int] | None = None, keep_checkpoint: bool = False) -> ComputeResult:
    """Compute a task's FisherSketch signature in one streaming pass.

    Parameters
    ----------
    model : LoadedModel or str
        From :func:`fishersketch_core.models.load_model` (a string is loaded with it).
    task : CorpusTask, PromptTargetTask, TokenTask, or a list of EncodedSequence
    sketcher : Sketcher, optional
        Built from the model's (d, K) with ``m``, ``seed`` and ``method`` when not given.
    max_length : int, optional
        Window length; longer sequences are split into windows (default min(1024, context)).
    batch_tokens : int
        Padded tokens per forward batch (capped so the batch's logits fit ``max_logits_bytes``).
    overlap : int
        Context tokens each later window repeats from the window before it.
    max_error_bytes : int
        Size of one float32 error block e (n_chunk × K) handed to the sketch.
    progress : callable(Progress), optional
        Called before the first batch and after every batch (tokens/s and ETA included).
    checkpoint : path, optional
        Checkpoint file of the streaming state (written every ``checkpoint_every`` batches or
        ``checkpoint_seconds``, on cancel and on Ctrl-C; removed on success unless ``keep_checkpoint``).
        If it exists the job resumes from it.
    cancel : threading.Event or callable, optional
        Checked between batches; when set, the state is checkpointed and :class:`ComputeCancelled` raised.
    shard : (rank, world), optional
        Sketch only this shard of the sequences (the returned state merges with the other shards').

    Returns
    -------
    ComputeResult
        ``.signature`` (None for a shard: merge the states, then call ``state.signature``), ``.state``,
        ``.n_positions``, ``.mean_nll``, ``.perplexity``, ``.seconds``.
    """
    if isinstance(model, (str, os.PathLike)):
        from .models import load_model
        model = load_model(model)
    for attr in ("model", "model_hash", "d", "K", "context_length"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a LoadedModel (fishersketch_core.models.load_model or wrap_model), "
                            f"got {type(model).__name__}")
    sk = resolve_sketcher(model, sketcher, m, seed, method)
    if isinstance(task, (list, tuple)):
        seqs, name, ttype = list(task), "", ""
    else:
        seqs = task.encode(getattr(model, "tokenizer", None))
        name, ttype = task.name, getattr(task, "task_type", "")
    if not seqs:
        raise ValueError(f"task {name!r} has no scored positions; check the data and max_positions")
    bad = [s.token_ids.max() for s in seqs if s.token_ids.size and s.token_ids.max() >= model.K]
    if bad:
        raise ValueError(f"token id {int(max(bad))} is outside the model's vocabulary (K={model.K}); "
                         "the task was tokenised with another tokenizer")
    if shard is not None:
        seqs = shard_sequences(seqs, *shard)
    state, c = compute_state(model, seqs, sk, max_length=max_length, batch_tokens=batch_tokens, overlap=overlap,
                             max_logits_bytes=max_logits_bytes, max_error_bytes=max_error_bytes, progress=progress,
                             checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                             checkpoint_seconds=checkpoint_seconds, cancel=cancel, keep_checkpoint=keep_checkpoint)
    return finish(model, state, c, name=name, task_type=ttype, make_signature=shard is None)


def finish(lm: Any, state: SketchState, c: dict, *, name: str, task_type: str,
           make_signature: bool = True) -> ComputeResult:
    """Wrap a (possibly all-reduced) state and its counters as a :class:`ComputeResult`."""
    n = int(c["positions"])
    mean_nll = float(c["nll_sum"]) / n if n else float("nan")
    sig = None
    if make_signature:
        sig = state.signature(task_name=name, model_id=lm.model_id, model_hash=lm.model_hash,
                              task_type=task_type, n_tokens=int(c["tokens"]), mean_nll=mean_nll,
                              max_length=int(c.get("max_length", 0)), overlap=int(c.get("overlap", 0)))
    return ComputeResult(signature=sig, state=state, n_positions=n, n_tokens=int(c["tokens"]), mean_nll=mean_nll,
                         seconds=float(c["seconds"]), resumed_batches=int(c.get("resumed_batches", 0)))
