"""compute_signature: equals a hand-driven pass, shards merge to one pass, cancel + resume gives the
identical signature, progress reports tokens/s and ETA, and the CLI writes a loadable signature."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fishersketch_core.compute import ComputeCancelled, compute_signature, shard_sequences
from fishersketch_core.extract import iter_chunks
from fishersketch_core.signature import Signature
from fishersketch_core.sketch import Sketcher
from fishersketch_core.tasks import CorpusTask, TokenTask
from lm_helpers import random_sequences, tiny_hf_folder, tiny_lm

M = 128


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def task():
    return TokenTask("toy", random_sequences(12, 10, 60, seed=11))


def _assert_same(a: Signature, b: Signature, exact: bool = False):
    assert (a.counts == b.counts).all()
    for name in ("joint_half", "activation_half", "error_half"):
        if exact:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        else:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-7)


def test_compute_equals_hand_driven_pass(lm, task):
    sk = Sketcher(lm.d, lm.K, m=M, seed=3)
    res = compute_signature(lm, task, sk, max_length=32, batch_tokens=64)
    seqs = task.encode()
    st = sk.new_state()
    for chunk in iter_chunks(lm, seqs, max_length=32, batch_tokens=64):
        st.update(chunk.h, torch.softmax(chunk.logits.double(), -1)
                  - torch.nn.functional.one_hot(chunk.targets, lm.K), sequence_ids=chunk.sequence_ids)
    _assert_same(res.signature, st.signature())
    assert res.n_positions == sum(s.n_scored for s in seqs) == res.signature.n_positions
    assert res.signature.meta.model_hash == lm.model_hash and res.signature.meta.task_name == "toy"
    assert 1.0 < res.perplexity < 10 * lm.K


def test_two_shards_merged_equal_one_pass(lm, task):
    sk = Sketcher(lm.d, lm.K, m=M, seed=0)
    one = compute_signature(lm, task, sk, batch_tokens=128)
    a = compute_signature(lm, task, sk, batch_tokens=128, shard=(0, 2))
    b = compute_signature(lm, task, sk, batch_tokens=128, shard=(1, 2))
    assert a.signature is None and a.n_positions > 0 and b.n_positions > 0
    merged = a.state.merge(b.state)
    _assert_same(merged.signature(), one.state.signature())
    seqs = task.encode()
    ids = sorted(s.sequence_id for r in range(3) for s in shard_sequences(seqs, r, 3))
    assert ids == [s.sequence_id for s in seqs]                # shards partition the sequences


def test_cancel_then_resume_gives_identical_signature(lm, task, tmp_path):
    sk = Sketcher(lm.d, lm.K, m=M, seed=5)
    kw = dict(max_length=24, batch_tokens=48, checkpoint_every=2)
    full = compute_signature(lm, task, sk, **kw)
    ckpt = tmp_path / "job.ckpt.npz"
    seen = []
    calls = {"n": 0}

    def cancel_after_5() -> bool:                            # cancel once 5 batches are done
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(ComputeCancelled) as info:
        compute_signature(lm, task, sk, checkpoint=ckpt, cancel=cancel_after_5, progress=seen.append, **kw)
    assert ckpt.exists() and info.value.progress.batches_done == 5 and info.value.checkpoint == ckpt
    # a second interruption, by an Event this time, after a few more batches
    ev = threading.Event()

    def stop_at_8(p):
        if p.batches_done >= 8:
            ev.set()

    with pytest.raises(ComputeCancelled):
        compute_signature(lm, task, sk, checkpoint=ckpt, cancel=ev, progress=stop_at_8, **kw)
    resumed = compute_signature(lm, task, sk, checkpoint=ckpt, **kw)
    assert resumed.resumed_batches == 8
    _assert_same(resumed.signature, full.signature, exact=True)   # bit for bit
    assert resumed.n_tokens == full.n_tokens and resumed.mean_nll == pytest.approx(full.mean_nll, rel=1e-12)
    assert not ckpt.exists()                                   # removed after success


def test_checkpoint_of_another_job_is_refused(lm, task, tmp_path):
    sk = Sketcher(lm.d, lm.K, m=M, seed=5)
    ckpt = tmp_path / "x.ckpt.npz"
    with pytest.raises(ComputeCancelled):
        compute_signature(lm, task, sk, checkpoint=ckpt, cancel=lambda: True)
    other = TokenTask("other", random_sequences(5, 10, 20, seed=99))
    with pytest.raises(ValueError, match="different job"):
        compute_signature(lm, other, sk, checkpoint=ckpt)


def test_progress_reports_rate_and_eta(lm, task):
    seen = []
    res = compute_signature(lm, task, m=M, batch_tokens=64, progress=seen.append)
    assert seen[0].tokens_done == 0 and seen[-1].fraction == 1.0 and seen[-1].eta_s == 0.0
    assert [p.tokens_done for p in seen] == sorted(p.tokens_done for p in seen)
    assert all(p.tokens_per_s > 0 for p in seen[1:]) and seen[-1].positions_done == res.n_positions
    assert seen[-1].batches_done == seen[-1].batches_total


def test_budget_and_validation(lm, task):
    res = compute_signature(lm, TokenTask("b", task.sequences, max_positions=50, seed=1), m=M)
    assert res.n_positions == 50
    with pytest.raises(ValueError, match="d=32"):
        compute_signature(lm, task, Sketcher(16, lm.K, m=M))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        compute_signature(lm, TokenTask("big", [[1, 2, 500]]), m=M)
    with pytest.raises(TypeError, match="LoadedModel"):
        compute_signature(object(), task, m=M)
    with pytest.raises(ValueError, match="shard"):
        compute_signature(lm, task, m=M, shard=(2, 2))


def test_cli_compute_to_file_and_resume(tmp_path, capsys):
    from fishersketch_core.cli import main
    from fishersketch_core.models import load_model

    folder = tiny_hf_folder(tmp_path / "tiny")
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(30)))
    out = tmp_path / "sig.npz"

    def args(out_path, *extra):
        return ["compute", "--model", str(folder), "--data", str(data), "--name", "foxes", "--out", str(out_path),
                "--m", "64", "--batch-tokens", "128", "--no-progress", *extra]

    assert main(args(out)) == 0
    sig = Signature.load(out)
    lm = load_model(folder)
    assert sig.meta.task_name == "foxes" and sig.meta.model_hash == lm.model_hash and sig.meta.m == 64
    assert sig.meta.extra["task_type"] == "corpus" and sig.n_positions > 30 * 40
    # an interrupted run resumes from its checkpoint and ends with the same signature
    task = CorpusTask("foxes", data.read_text().splitlines())
    ckpt = tmp_path / "sig.npz.foxes.ckpt.npz"
    with pytest.raises(ComputeCancelled):
        compute_signature(lm, task, m=64, batch_tokens=128, checkpoint=ckpt, cancel=lambda: ckpt.exists(),
                          checkpoint_every=1)
    assert ckpt.exists()
    out2 = tmp_path / "sig2.npz"
    assert main(args(out2, "--checkpoint", str(ckpt))) == 0
    assert "resuming" in capsys.readouterr().err
    _assert_same(Signature.load(out2), sig, exact=True)
    assert not ckpt.exists()


def test_cli_errors_are_clear(tmp_path, capsys):
    from fishersketch_core.cli import main

    assert main(["compute", "--data", "x.txt", "--name", "n"]) == 2
    assert "--out FILE.npz" in capsys.readouterr().err
    assert main(["compute", "--data", str(tmp_path / "missing.txt"), "--name", "n", "--out", "a.npz"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_compute_into_store(tmp_path):
    store_mod = pytest.importorskip("fishersketch_core.store")
    from fishersketch_core.cli import main

    folder = tiny_hf_folder(tmp_path / "tiny", "gpt2")
    data = tmp_path / "pairs.csv"
    data.write_text("question,answer\n" + "\n".join(f"What is {i} plus {i}?,{2 * i}" for i in range(12)))
    store = tmp_path / "sigs.duckdb"
    args = ["compute", "--model", str(folder), "--data", str(data), "--name", "arith", "--task-type", "prompt-target",
            "--prompt-column", "question", "--target-column", "answer", "--m", "32", "--store", str(store),
            "--group", "toy", "--no-progress"]
    assert main(args) == 0
    with store_mod.SignatureStore(store, read_only=True) as st:
        sig = st.get("arith")
    answers = sum(len(str(2 * i)) for i in range(12))
    assert sig.n_positions == answers and sig.meta.m == 32      # only the answer tokens were scored


def test_bfloat16_model_from_folder(tmp_path):
    from fishersketch_core.models import load_model

    folder = tiny_hf_folder(tmp_path / "tiny", "llama")
    lm32 = load_model(folder, dtype="float32")
    lm16 = load_model(folder, dtype="bfloat16")
    assert lm16.dtype == torch.bfloat16 and lm16.model_hash != lm32.model_hash
    task = CorpusTask("t", ["some text to score", "and some more"])
    a = compute_signature(lm32, task, m=M).signature
    b = compute_signature(lm16, task, m=M).signature
    assert a.n_positions == b.n_positions
    assert np.corrcoef(a.error, b.error)[0, 1] > 0.9              # bf16 close to fp32, not identical
