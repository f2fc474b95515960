"""Task specs and readers: which positions are scored, reproducible budgets, file formats."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from fishersketch_core.tasks import (CorpusTask, EncodedSequence, PromptTargetTask, TokenTask, apply_budget,
                                     detect_format, fingerprint, load_task, read_csv, read_fasta, read_jsonl,
                                     read_smiles, read_text)
from lm_helpers import CharTokenizer

TOK = CharTokenizer()


def test_corpus_scores_every_next_token_position():
    seqs = CorpusTask("c", ["abc", "hello"]).encode(TOK)
    assert [s.sequence_id for s in seqs] == [0, 1]
    for s, text in zip(seqs, ["abc", "hello"]):
        assert s.token_ids[0] == TOK.bos_token_id and len(s) == len(text) + 1
        assert s.scored.tolist() == [True] * len(text) + [False]    # BOS predicts the first char, ...


def test_prompt_target_scores_only_target_tokens():
    t = PromptTargetTask("pt", ["Q: 2+2?", "Q: hi"], [" 4", " hello"])
    seqs = t.encode(TOK)
    for s, p, y in zip(seqs, t.prompts, t.targets):
        plen = 1 + len(p)                                        # BOS + prompt chars
        assert len(s) == plen + len(y)
        where = np.flatnonzero(s.scored)
        assert where.tolist() == list(range(plen - 1, plen + len(y) - 1))
        assert s.token_ids[where + 1].tolist() == TOK([y], add_special_tokens=False)["input_ids"][0]


def test_verbalizer_task():
    t = PromptTargetTask.from_labels("sst", ["good", "bad", "fine"], [1, 0, 1], template="Review: {text}. Label:",
                                     verbalizer={1: " yes", 0: " no"})
    assert t.prompts[1] == "Review: bad. Label:" and t.targets == [" yes", " no", " yes"]
    assert sum(s.n_scored for s in t.encode(TOK)) == 4 + 3 + 4
    with pytest.raises(ValueError, match=r"no verbalizer word"):
        PromptTargetTask.from_labels("x", ["a"], [2], verbalizer={1: " yes"})
    with pytest.raises(ValueError, match="must contain"):
        PromptTargetTask.from_labels("x", ["a"], [1], template="no slot", verbalizer={1: " y"})


def test_task_validation():
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        PromptTargetTask("x", ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no documents"):
        CorpusTask("x", [])
    with pytest.raises(ValueError, match="non-empty name"):
        CorpusTask("", ["a"])
    with pytest.raises(ValueError, match="max_positions"):
        CorpusTask("x", ["a"], max_positions=0)
    with pytest.raises(ValueError, match="tokenizer"):
        CorpusTask("x", ["a"]).encode(None)
    with pytest.raises(ValueError, match="cannot be scored"):
        EncodedSequence(np.arange(3), [0, 0, 1], 0)
    with pytest.raises(ValueError, match="prompt length"):
        TokenTask("x", [[1, 2]], prompt_lengths=[2]).encode()


def test_budget_is_exact_reproducible_and_seeded():
    seqs = TokenTask("t", [list(range(3, 3 + n)) for n in (5, 9, 14, 3, 20, 7)]).encode()
    total = sum(s.n_scored for s in seqs)
    a = apply_budget(seqs, 25, seed=4)
    assert sum(s.n_scored for s in a) == 25
    assert fingerprint(a) == fingerprint(apply_budget(seqs, 25, seed=4))           # reproducible
    assert fingerprint(a) != fingerprint(apply_budget(seqs, 25, seed=5))           # seeded
    assert sum(s.n_scored for s in apply_budget(seqs, 10_000, seed=0)) == total    # budget above total
    ids = [s.sequence_id for s in a]
    assert ids == sorted(ids) and set(ids) <= {s.sequence_id for s in seqs}        # ids kept, order kept
    cut = [s for s in a if s.n_scored < seqs[s.sequence_id].n_scored]
    assert len(cut) <= 1
    for s in cut:                                                # a cut sequence is a prefix ending after its last scored position
        orig = seqs[s.sequence_id]
        assert s.token_ids.tolist() == orig.token_ids[: len(s)].tolist() and s.scored[-2] and not s.scored[-1]


def test_readers(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\nthird\n")
    assert read_text(tmp_path / "a.txt") == ["first line", "second line", "third"]
    assert read_text(tmp_path / "a.txt", unit="paragraph") == ["first line", "second line\nthird"]
    assert len(read_text(tmp_path / "a.txt", unit="file")) == 1
    with gzip.open(tmp_path / "b.txt.gz", "wt") as fh:
        fh.write("x\ny\n")
    assert read_text(tmp_path / "b.txt.gz") == ["x", "y"]
    (tmp_path / "p.fasta").write_text(">sp|P1 one\nMKV\nLLA\n>sp|P2\nGG\n>empty\n")
    assert read_fasta(tmp_path / "p.fasta") == ["MKVLLA", "GG"]
    assert read_fasta(tmp_path / "p.fasta", with_ids=True)[0] == ("sp|P1 one", "MKVLLA")
    (tmp_path / "bad.fa").write_text("ACGT\n>x\nAC\n")
    with pytest.raises(ValueError, match="before the first '>'"):
        read_fasta(tmp_path / "bad.fa")
    (tmp_path / "m.smi").write_text("SMILES\nCCO ethanol\nc1ccccc1\n")
    assert read_smiles(tmp_path / "m.smi") == ["CCO", "c1ccccc1"]
    (tmp_path / "m.csv").write_text("id,SMILES,label\n1,CCO,a\n2,,b\n3,CCN,c\n")
    assert read_smiles(tmp_path / "m.csv") == ["CCO", "CCN"]                        # empty rows dropped
    assert read_csv(tmp_path / "m.csv", ["SMILES", "label"]) == [("CCO", "a"), ("CCN", "c")]
    with pytest.raises(ValueError, match="no column 'text'.*columns are"):
        read_csv(tmp_path / "m.csv", "text")
    (tmp_path / "q.jsonl").write_text('{"prompt": "2+2=", "answer": "4"}\n\n{"prompt": "3+3=", "answer": "6"}\n')
    assert read_jsonl(tmp_path / "q.jsonl", ["prompt", "answer"]) == [("2+2=", "4"), ("3+3=", "6")]
    with pytest.raises(ValueError, match="no key 'text'"):
        read_jsonl(tmp_path / "q.jsonl", "text")
    assert [detect_format(n) for n in ("x.fa.gz", "y.smi", "z.tsv", "w.md", "v.jsonl")] == \
        ["fasta", "smiles", "tsv", "text", "jsonl"]


def test_load_task(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.fasta").write_text(">1\nACGT\n>2\nTTGA\n")
    (tmp_path / "d" / "b.txt").write_text("hello\n")
    t = load_task("mix", tmp_path / "d")
    assert t.documents == ["ACGT", "TTGA", "hello"] and t.task_type == "corpus"
    (tmp_path / "pairs.tsv").write_text("q\ta\nWhat?\tThat.\n")
    pt = load_task("qa", tmp_path / "pairs.tsv", task_type="prompt-target", prompt_column="q", target_column="a")
    assert (pt.prompts, pt.targets, pt.task_type) == (["What?"], ["That."], "prompt-target")
    with pytest.raises(ValueError, match="--prompt-column and --target-column"):
        load_task("qa", tmp_path / "pairs.tsv", task_type="prompt-target")
    with pytest.raises(ValueError, match="--text-column"):
        load_task("qa", tmp_path / "pairs.tsv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("x", tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="task_type"):
        load_task("x", tmp_path / "d", task_type="mlm")
