"""Extraction on tiny random models: the hooked head input reproduces the logits, pads and prompt
positions are never scored, chunked errors equal unchunked ones, long sequences are windowed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fishersketch_core.extract import (HeadCapture, errors_from_logits, forward_batch, iter_chunks, make_windows,
                                       plan_batches, effective_lengths, Batch, Window)
from fishersketch_core.models import resolve_device, resolve_dtype, weights_hash, wrap_model
from fishersketch_core.tasks import EncodedSequence, TokenTask
from lm_helpers import VOCAB, random_sequences, tiny_lm, tiny_model

KINDS = ["llama", "llama-bias", "gpt2", "gemma3", "qwen2"]


def _head_logits(model, h):
    """What the model does after its head, written out per architecture (only for the test)."""
    head = model.get_output_embeddings()
    z = h @ head.weight.T                                       # (n, K)
    if getattr(head, "bias", None) is not None:
        z = z + head.bias
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


@pytest.fixture(scope="module", params=KINDS)
def lm(request):
    return tiny_lm(request.param)


def test_hooked_h_reproduces_model_logits(lm):
    seqs = TokenTask("t", random_sequences(3, 6, 20, seed=1)).encode()
    (chunk,) = list(iter_chunks(lm, seqs, max_length=64, batch_tokens=256))
    # h times the head (plus bias, then the model's soft-cap) gives the logits the model returned
    torch.testing.assert_close(_head_logits(lm.model, chunk.h), chunk.logits, rtol=1e-5, atol=1e-5)
    # and those equal a plain full forward of each sequence, without any hook
    for s in seqs:  # rows of one sequence are contiguous and in order (the plan sorts sequences by length)
        with torch.no_grad():
            full = lm.model(input_ids=torch.tensor(s.token_ids)[None]).logits[0]  # (L, K)
        rows = chunk.sequence_ids == s.sequence_id
        torch.testing.assert_close(chunk.logits[rows], full[s.scored], rtol=1e-4, atol=1e-5)
        assert chunk.targets[rows].tolist() == s.token_ids[1:][s.scored[:-1]].tolist()
    assert chunk.n == sum(s.n_scored for s in seqs)


def test_softcap_is_active_in_gemma3():
    lm = tiny_lm("gemma3")
    (chunk,) = list(iter_chunks(lm, TokenTask("t", random_sequences(2, 10, 12)).encode()))
    raw = chunk.h @ lm.model.get_output_embeddings().weight.detach().T
    assert float(raw.abs().max()) > 2.0 >= float(chunk.logits.abs().max())  # capping changed the logits


def test_pad_positions_never_scored_and_do_not_leak():
    lm = tiny_lm("llama")
    lens = [5, 17, 9]
    seqs = [EncodedSequence(np.arange(3, 3 + L) % VOCAB, np.r_[np.ones(L - 1, bool), False], i)
            for i, L in enumerate(lens)]
    batch = Batch(tuple(Window(s.token_ids, s.scored, s.sequence_id) for s in seqs))
    with HeadCapture(lm.model) as cap:
        chunk = forward_batch(lm, batch, cap)
    assert chunk.n == sum(L - 1 for L in lens)                 # no pad position scored
    assert (chunk.targets != lm.tokenizer.pad_token_id).all()
    assert sorted(set(chunk.sequence_ids.tolist())) == [0, 1, 2]
    # each sequence alone, unpadded, gives the same h: pads do not leak into real positions
    for s in seqs:
        with HeadCapture(lm.model) as cap:
            alone = forward_batch(lm, Batch((Window(s.token_ids, s.scored, s.sequence_id),)), cap)
        torch.testing.assert_close(chunk.h[chunk.sequence_ids == s.sequence_id], alone.h, rtol=1e-4, atol=1e-5)


def test_prompt_positions_never_scored():
    lm = tiny_lm("qwen2")
    seqs_raw = random_sequences(4, 8, 15, seed=5)
    plen = [3, 5, 2, 7]
    seqs = TokenTask("pt", seqs_raw, prompt_lengths=plen).encode()
    chunks = list(iter_chunks(lm, seqs))
    got = {}
    for c in chunks:
        for sid, y in zip(c.sequence_ids.tolist(), c.targets.tolist()):
            got.setdefault(sid, []).append(y)
    for i, (s, p) in enumerate(zip(seqs_raw, plen)):
        assert got[i] == s[p:]                                   # exactly the target tokens, in order


def test_errors_match_reference_and_chunking():
    torch.manual_seed(0)
    z = torch.randn(37, 501) * 4
    y = torch.randint(0, 501, (37,))
    ref = torch.softmax(z.double(), -1)
    ref[torch.arange(37), y] -= 1
    e, nll = errors_from_logits(z, y)
    torch.testing.assert_close(e.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nll.double(), torch.nn.functional.cross_entropy(z.double(), y, reduction="none"),
                               rtol=1e-5, atol=1e-5)
    assert torch.allclose(e.sum(1), torch.zeros(37), atol=1e-5)  # rows of softmax − onehot sum to 0
    # a target whose probability underflows float32 still gets its exact NLL
    e2, nll2 = errors_from_logits(torch.tensor([[0.0, -200.0, 100.0]]), torch.tensor([1]))
    assert float(nll2) == pytest.approx(300.0) and float(e2[0, 1]) == -1.0
    # chunked (tiny error budget: 3 rows at a time) == unchunked
    from fishersketch_core.extract import ScoredChunk
    chunk = ScoredChunk(h=torch.randn(37, 4), logits=z.clone(), targets=y, sequence_ids=torch.zeros(37, dtype=torch.long),
                        n_tokens=37)
    parts = list(chunk.iter_errors(max_error_bytes=3 * 4 * 501))
    assert len(parts) == 13 and all(p[1].shape[0] <= 3 for p in parts)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), e)
    # bf16 logits are upcast, not mutated
    zb = z.bfloat16()
    e_b, _ = errors_from_logits(zb, y, inplace=True)
    assert e_b.dtype == torch.float32 and zb.dtype == torch.bfloat16


def test_long_sequences_are_windowed_not_truncated():
    lm = tiny_lm("gpt2", ctx=32)                               # context 32 tokens
    raw = random_sequences(2, 100, 120, seed=7)
    seqs = TokenTask("long", raw).encode()
    chunks = list(iter_chunks(lm, seqs, max_length=None, batch_tokens=64))
    got = {}
    for c in chunks:
        for sid, y in zip(c.sequence_ids.tolist(), c.targets.tolist()):
            got.setdefault(sid, []).append(y)
    assert [got[0], got[1]] == [r[1:] for r in raw]            # every next token scored once, in order


@pytest.mark.parametrize("overlap", [0, 5])
def test_make_windows_cover_each_position_once(overlap):
    rng = np.random.default_rng(0)
    scored = rng.random(50) < 0.7
    scored[-1] = False
    s = EncodedSequence(np.arange(50), scored, 3)
    ws = make_windows(s, 12, overlap)
    assert all(len(w.token_ids) <= 12 for w in ws)
    covered = []
    for w in ws:
        start = int(w.token_ids[0])
        covered += [start + i for i in np.flatnonzero(w.scored)]
    assert covered == np.flatnonzero(scored).tolist()
    with pytest.raises(ValueError, match="max_length"):
        make_windows(s, 1)
    with pytest.raises(ValueError, match="overlap"):
        make_windows(s, 12, 11)


def test_plan_batches_respects_budget_and_is_deterministic():
    seqs = TokenTask("t", random_sequences(20, 3, 40, seed=2)).encode()
    plan = plan_batches(seqs, max_length=32, batch_tokens=96)
    for b in plan:
        assert len(b.windows) * max(len(w.token_ids) for w in b.windows) <= 96
    assert sum(b.n_scored for b in plan) == sum(s.n_scored for s in seqs)
    again = plan_batches(seqs, max_length=32, batch_tokens=96)
    key = lambda p: [[(w.sequence_id, w.token_ids.tolist(), w.scored.tolist()) for w in b.windows] for b in p]
    assert key(plan) == key(again)


def test_logits_budget_caps_batch_and_window():
    ml, bt = effective_lengths(262_144, 32_768, max_length=1024, batch_tokens=1024, max_logits_bytes=256 * 2**20)
    assert bt * 262_144 * 4 <= 256 * 2**20 and ml <= bt
    assert effective_lengths(49_152, 8192) == (1024, 1024)


def test_weights_hash_and_wrap():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert weights_hash(a) == weights_hash(tiny_model("llama", seed=0))
    assert weights_hash(a) != weights_hash(b)
    lm = wrap_model(a)
    assert (lm.d, lm.K, lm.context_length) == (32, VOCAB, 64)


def test_validation_messages():
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_dtype("float8")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    from fishersketch_core.models import load_model
    with pytest.raises(FileNotFoundError, match="neither 'smollm2'"):
        load_model("/no/such/model")


def test_memory_bounded_at_vocabulary_scale():
    """K = 262,144 (Gemma 3): each forward's logits and each error block stay within their budgets."""
    lm = tiny_lm("llama", vocab=262_144)
    seqs = TokenTask("big", random_sequences(3, 40, 60, seed=1, vocab=262_144)).encode()
    budget, err_budget = 16 * 2**20, 4 * 2**20
    n_total = 0
    for chunk in iter_chunks(lm, seqs, max_logits_bytes=budget):
        assert chunk.logits.numel() * 4 <= budget
        for h, e, ids, nll in chunk.iter_errors(err_budget):
            assert e.numel() * 4 <= err_budget and e.shape[1] == 262_144
            n_total += e.shape[0]
    assert n_total == sum(s.n_scored for s in seqs)
