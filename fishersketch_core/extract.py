"""From a causal LM and encoded sequences to chunks of (h, logits, targets, sequence ids).

``h`` is captured by a forward *pre*-hook on ``model.get_output_embeddings()``: it is exactly the
input of the output head (after the final norm), never a guessed ``hidden_states`` entry. The hook
also hands the head only the scored positions, so the model computes logits — with its own
scaling or soft-capping applied after the head — for those positions alone: ``(n_scored, K)``
instead of ``(batch, T, K)``. The errors ``e = softmax(z) − onehot(y)`` are formed from those real
logits in float32 (:func:`errors_from_logits`), in row chunks so memory stays bounded at
K = 262,144.

Sequences are right-padded into batches bounded by a token budget; pad positions are never scored.
A sequence longer than the window length is split into windows (each later window starting
``overlap`` tokens before the first position it scores), so every scored position is scored exactly
once and nothing is truncated.

Example
-------
>>> from fishersketch_core.extract import iter_chunks, errors_from_logits     # doctest: +SKIP
>>> for chunk in iter_chunks(lm, task.encode(lm.tokenizer)):                   # doctest: +SKIP
...     for h, e, ids, nll in chunk.iter_errors():                             # (n, d), (n, K), (n,), (n,)
...         state.update(h, e, sequence_ids=ids)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .tasks import EncodedSequence

DEFAULT_MAX_LOGITS_BYTES = 512 * 2**20   # logits of one forward batch (scored positions × K)
DEFAULT_MAX_ERROR_BYTES = 256 * 2**20    # one float32 error chunk handed to the sketch (n_chunk × K)
DEFAULT_BATCH_TOKENS = 1024
DEFAULT_MAX_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class Window:
    """A slice of one sequence that fits the model: ``token_ids`` (L,), ``scored`` (L,) bool."""

    token_ids: np.ndarray
    scored: np.ndarray
    sequence_id: int

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())


def make_windows(seq: EncodedSequence, max_length: int, overlap: int = 0) -> list[Window]:
    """Split ``seq`` into windows of at most ``max_length`` tokens; each scored position lands in
    exactly one window. Window k > 0 starts ``overlap`` tokens before the first position it scores
    (extra context, not re-scored). Windows with nothing to score are dropped.

    Example
    -------
    >>> s = EncodedSequence(np.arange(10), [1] * 9 + [0], 0)
    >>> [len(w.token_ids) for w in make_windows(s, 4)], sum(w.n_scored for w in make_windows(s, 4))
    ([4, 4, 4], 9)
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one position and its target), got {max_length}")
    if not 0 <= overlap <= max_length - 2:
        raise ValueError(f"overlap must be in [0, max_length - 2] = [0, {max_length - 2}], got {overlap}")
    n = len(seq)
    if n <= max_length:
        return [Window(seq.token_ids, seq.scored, seq.sequence_id)] if seq.n_scored else []
    out = []
    start, first = 0, 0  # window start; first position this window scores
    while True:
        end = min(start + max_length, n)
        scored = np.zeros(end - start, dtype=bool)
        scored[first - start: end - 1 - start] = seq.scored[first: end - 1]  # positions [first, end-1)
        if scored.any():
            out.append(Window(seq.token_ids[start:end], scored, seq.sequence_id))
        if end == n:
            return out
        first = end - 1
        start = first - overlap


@dataclasses.dataclass(frozen=True)
class Batch:
    """Windows forwarded together; ``n_tokens`` counts real (non-pad) tokens."""

    windows: tuple[Window, ...]

    @property
    def n_tokens(self) -> int:
        return sum(len(w.token_ids) for w in self.windows)

    @property
    def n_scored(self) -> int:
        return sum(w.n_scored for w in self.windows)


def plan_batches(seqs: Sequence[EncodedSequence], *, max_length: int, batch_tokens: int,
                 overlap: int = 0, max_batch_size: int = 64) -> list[Batch]:
    """Window the sequences and group windows (longest first) so that ``batch × padded length ≤
    batch_tokens``. Deterministic: the same inputs give the same plan (what resuming relies on)."""
    if batch_tokens < max_length:
        raise ValueError(f"batch_tokens ({batch_tokens}) must be at least max_length ({max_length})")
    windows = [w for s in seqs for w in make_windows(s, max_length, overlap)]
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].token_ids))  # stable
    batches, cur, cur_len = [], [], 0
    for i in order:
        w = windows[i]
        new_len = max(cur_len, len(w.token_ids))
        if cur and (new_len * (len(cur) + 1) > batch_tokens or len(cur) >= max_batch_size):
            batches.append(Batch(tuple(cur)))
            cur, new_len = [], len(w.token_ids)
        cur.append(w)
        cur_len = new_len
    if cur:
        batches.append(Batch(tuple(cur)))
    return batches


def effective_lengths(K: int, context_length: int, *, max_length: int | None = None,
                      batch_tokens: int = DEFAULT_BATCH_TOKENS,
                      max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, logit_bytes: int = 4) -> tuple[int, int]:
    """``(max_length, batch_tokens)`` capped by the model's context and by the logits budget
    (``batch_tokens × K × logit_bytes ≤ max_logits_bytes``)."""
    cap = max(2, max_logits_bytes // (K * logit_bytes))
    bt = min(int(batch_tokens), cap)
    ml = min(int(max_length or DEFAULT_MAX_LENGTH), int(context_length), bt)
    if ml < 2:
        raise ValueError(f"the logits budget allows only {cap} positions per batch at K={K}; "
                         "raise max_logits_bytes")
    return ml, max(bt, ml)


@dataclasses.dataclass
class ScoredChunk:
    """The scored positions of one forward batch.

    Attributes
    ----------
    h : Tensor (n, d) float32   — input of the output head
    logits : Tensor (n, K)      — the model's own logits (its dtype), soft-capping/scaling included
    targets : Tensor (n,) int64 — next tokens y_i
    sequence_ids : Tensor (n,) int64
    n_tokens : int              — real tokens forwarded for this chunk (context included)
    """

    h: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    sequence_ids: torch.Tensor
    n_tokens: int

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])

    def iter_errors(self, max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES, inplace: bool = True
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(h, e, sequence_ids, nll)`` over row blocks of at most ``max_error_bytes`` of float32 e.

        With ``inplace`` (default) a float32 ``logits`` tensor is overwritten by e, block by block.
        """
        K = self.logits.shape[1]
        rows = max(1, int(max_error_bytes) // (4 * K))
        for a in range(0, self.n, rows):
            b = min(a + rows, self.n)
            e, nll = errors_from_logits(self.logits[a:b], self.targets[a:b], inplace=inplace)
            yield self.h[a:b], e, self.sequence_ids[a:b], nll


def errors_from_logits(logits: torch.Tensor, targets: torch.Tensor, inplace: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``e = softmax(z) − onehot(y)`` in float32 and the per-position NLL ``−log softmax(z)_y``.

    Parameters
    ----------
    logits : Tensor (n, K)
    targets : Tensor (n,) int64
    inplace : bool
        Overwrite ``logits`` with e when it is already float32 (saves one (n, K) buffer).

    Example
    -------
    >>> z = torch.tensor([[0.0, 0.0]]); e, nll = errors_from_logits(z, torch.tensor([1]))
    >>> e.tolist(), round(float(nll), 4)
    ([[0.5, -0.5]], 0.6931)
    """
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (n, K) and targets (n,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if logits.dtype == torch.float32 and inplace:
        z = logits
    else:
        z = logits.to(torch.float32, copy=True)                  # (n, K)
    idx = targets.to(z.device).long().unsqueeze(1)              # (n, 1)
    zy = z.gather(1, idx).squeeze(1)                            # (n,)
    zmax = z.amax(dim=1)                                        # (n,)
    torch.ops.aten._softmax.out(z, 1, False, out=z)             # fused softmax, in place: z is now p
    py = z.gather(1, idx).squeeze(1)                            # (n,)
    nll = -py.log()                                             # (n,)
    tiny = py < 1e-30                                           # p_y underflowing: use lse = z_max − log p_max
    if bool(tiny.any()):
        rows = tiny.nonzero().squeeze(1)
        pmax = z[rows].amax(dim=1)
        nll[rows] = zmax[rows] - pmax.log() - zy[rows]
    z.scatter_add_(1, idx, torch.full_like(zy, -1.0).unsqueeze(1))
    return z, nll


class HeadCapture:
    """Context manager: a forward pre-hook on the output head that records its input at the scored
    positions and passes only those rows on to the head.

    Set ``capture.mask`` (``(b, T)`` bool) before each forward; afterwards ``capture.h`` is
    ``(n_scored, d)`` and the model's logits are ``(n_scored, K)``.
    """

    def __init__(self, model: Any, select: bool = True):
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise ValueError("the model has no output head (get_output_embeddings() is None)")
        self.select = select
        self.mask: torch.Tensor | None = None
        self.h: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module: Any, args: tuple) -> tuple | None:
        x = args[0]                                              # (b, T, d)
        if self.mask is None or not self.select:
            self.h = x
            return None
        if x.shape[:2] != self.mask.shape:
            raise RuntimeError(f"the output head received input of shape {tuple(x.shape)}, expected "
                               f"(batch, T, d) with (batch, T) = {tuple(self.mask.shape)}; this model slices its "
                               "hidden states before the head, use select=False")
        sel = x[self.mask]                                       # (n, d)
        self.h = sel
        return (sel,) + tuple(args[1:])

    def __enter__(self) -> "HeadCapture":
        self._handle = self.head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _pad_id(lm: Any) -> int:
    tok = getattr(lm, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tok, attr, None) if tok is not None else None
        if isinstance(v, int):
            return v
    return 0


def forward_batch(lm: Any, batch: Batch, capture: HeadCapture) -> ScoredChunk:
    """Run one batch (right-padded, attention-masked) and return its scored positions."""
    model, device = lm.model, lm.device
    b, T = len(batch.windows), max(len(w.token_ids) for w in batch.windows)
    ids = np.full((b, T), _pad_id(lm), dtype=np.int64)           # (b, T)
    attn = np.zeros((b, T), dtype=np.int64)                      # (b, T)
    scored = np.zeros((b, T), dtype=bool)                        # (b, T)
    targets = np.full((b, T), -1, dtype=np.int64)                # (b, T)
    seq_ids = np.zeros((b, T), dtype=np.int64)
    for r, w in enumerate(batch.windows):
        L = len(w.token_ids)
        ids[r, :L] = w.token_ids
        attn[r, :L] = 1
        scored[r, :L] = w.scored
        targets[r, : L - 1] = w.token_ids[1:]
        seq_ids[r, :L] = w.sequence_id
    mask = torch.from_numpy(scored).to(device)
    capture.mask = mask
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(attn).to(device),
                    use_cache=False)
    logits = out.logits                                          # (n, K) thanks to the hook
    n = int(scored.sum())
    if capture.h is None:
        raise RuntimeError("the output-head hook never fired: this model does not call "
                           "get_output_embeddings() as a module, so its head input cannot be captured")
    if logits.shape[0] != n or logits.ndim != 2:
        raise RuntimeError(f"expected logits of shape ({n}, K) for the scored positions, got {tuple(logits.shape)}")
    h = capture.h.to(torch.float32)                              # (n, d)
    capture.h, capture.mask = None, None
    return ScoredChunk(h=h, logits=logits, targets=torch.from_numpy(targets[scored]).to(device),
                       sequence_ids=torch.from_numpy(seq_ids[scored]), n_tokens=batch.n_tokens)


def iter_chunks(lm: Any, seqs: Sequence[EncodedSequence], *, max_length: int | None = None,
                batch_tokens: int = DEFAULT_BATCH_TOKENS, overlap: int = 0,
                max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES, start_batch: int = 0) -> Iterator[ScoredChunk]:
    """Yield one :class:`ScoredChunk` per forward batch of the encoded sequences.

    Parameters
    ----------
    lm : LoadedModel
    seqs : list of EncodedSequence
    max_length : int, optional
        Window length (default min(1024, context)); longer sequences are split, not truncated.
    batch_tokens : int
        Padded tokens per forward batch (capped by ``max_logits_bytes``).
    overlap : int
        Context tokens a window repeats from the one before it.
    start_batch : int
        Skip the first batches of the plan (resuming).
    """
    ml, bt = effective_lengths(lm.K, lm.context_length, max_length=max_length, batch_tokens=batch_tokens,
                               max_logits_bytes=max_logits_bytes)
    plan = plan_batches(seqs, max_length=ml, batch_tokens=bt, overlap=min(overlap, ml - 2))
    with HeadCapture(lm.model) as cap:
        for batch in plan[start_batch:]:
            yield forward_batch(lm, batch, cap)
