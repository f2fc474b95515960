"""Verbalizer shift: one set of prompts, several answer vocabularies.

A real prompt→target family built from the bundled WordNet domains: the prompt is a WordNet gloss
(definition only, the lemma names removed) followed by ``"\\nCategory:"``; the answer is one word naming the
gloss's lexicographer category (animal, plant, food, body, artifact, person). The tasks of the family differ
*only* in the answer words: every vocabulary maps the six categories to six single-token words (category
names, synonyms, examples, permutations of them, letters, number words, colours, mixtures). The prompts, and
so the head inputs h at the scored positions, are identical across tasks: every activation-only similarity
(ρ_h, centred ρ_h, CKA) gives all pairs the same score and can only pick at chance.

Ground truth uses the same head-only recipe as the domain benchmark: adapt on a task's adaptation prompts
(its words as targets), measure the NLL drop on another task's evaluation prompts.

Signatures are computed with :func:`fishersketch_core.compute.compute_signature` on the probe prompts of
every task (one streaming pass each). The head inputs of all three splits come from one forward pass per
split (the prompts are shared); every task's targets are its words for the positions' labels.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["CATEGORIES", "VOCABULARIES", "TEMPLATE", "build_family", "check_single_token", "prepare_family"]

#: lexicographer categories used (bundled domain → label)
CATEGORIES = {"wordnet-noun.animal": "animal", "wordnet-noun.plant": "plant", "wordnet-noun.food": "food",
              "wordnet-noun.body": "body", "wordnet-noun.artifact": "artifact", "wordnet-noun.person": "person"}
_LABELS = list(CATEGORIES.values())


def _vocab(words: str) -> dict[str, str]:
    w = words.split()
    assert len(w) == len(_LABELS)
    return dict(zip(_LABELS, w))


#: answer vocabularies (label → word, written without the leading space). Built from three word bases —
#: category names, synonyms, examples — so that every task shares answer words with several others (transfer
#: between them is real, not just "the least harmful source"), with varying overlap of (category, word)
#: assignments; the permuted ones use the same words as another task with the assignment changed, which
#: a unigram (or error-only) similarity cannot tell apart from the original.
VOCABULARIES: dict[str, dict[str, str]] = {
    "names": _vocab("animal plant food body object person"),
    "synonyms": _vocab("creature herb dish organ tool human"),
    "examples": _vocab("dog tree bread hand machine man"),
    "names-rot1": _vocab("plant food body object person animal"),
    "names-swap12": _vocab("plant animal food body object person"),
    "synonyms-rot2": _vocab("dish organ tool human creature herb"),
    "examples-rot1": _vocab("tree bread hand machine man dog"),
    "names+synonyms": _vocab("animal plant food organ tool human"),
    "synonyms+names": _vocab("creature herb dish body object person"),
    "names+examples": _vocab("animal plant food hand machine man"),
    "examples+synonyms": _vocab("dog tree bread organ tool human"),
    "synonyms+examples": _vocab("creature herb dish hand machine man"),
}
TEMPLATE = "Definition: {text}\nCategory:"
DEFAULT_COUNTS = {"probe": 50, "adapt": 100, "eval": 60}


def _definition(doc: str, max_chars: int = 300) -> str:
    text = doc.split(":", 1)[1].strip() if ":" in doc else doc.strip()
    return text[:max_chars]


def build_family(counts: Mapping[str, int] | None = None, seed: int = 0,
                 categories: Mapping[str, str] | None = None) -> dict[str, dict[str, list[str]]]:
    """Prompts texts and labels per split: ``{split: {"texts": [...], "labels": [...]}}``.

    ``counts[split]`` glosses per category are drawn (seeded) from that split of each category's bundled
    domain, so the splits stay disjoint.
    """
    from ..data import load_domain

    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    categories = dict(CATEGORIES if categories is None else categories)
    out = {s: {"texts": [], "labels": []} for s in counts}
    for dom, label in categories.items():
        docs = load_domain(dom)
        for split, k in counts.items():
            pool = [d for d in docs[split] if _definition(d)]
            rng = np.random.default_rng([seed, sum(map(ord, dom + split))])
            pick = rng.choice(len(pool), size=min(int(k), len(pool)), replace=False)
            for i in sorted(pick):
                out[split]["texts"].append(_definition(pool[i]))
                out[split]["labels"].append(label)
    return out


def check_single_token(tokenizer: Any, vocabularies: Mapping[str, Mapping[str, str]], prefix: str = " "
                       ) -> dict[str, dict[str, int]]:
    """Token id of every answer word (``prefix + word``); raises if a word is not exactly one token."""
    ids: dict[str, dict[str, int]] = {}
    for v, voc in vocabularies.items():
        ids[v] = {}
        for label, word in voc.items():
            toks = tokenizer([prefix + word], add_special_tokens=False)["input_ids"][0]
            if len(toks) != 1:
                raise ValueError(f"verbalizer {v!r}: {prefix + word!r} is {len(toks)} tokens; the verbalizer "
                                 "shift needs single-token answers so that h is identical across tasks")
            ids[v][label] = int(toks[0])
    return ids


def prepare_family(lm: Any, work: str | Path, *, vocabularies: Mapping[str, Mapping[str, str]] | None = None,
                   family: Mapping[str, Mapping[str, list]] | None = None, template: str = TEMPLATE,
                   prefix: str = " ", m: int = 4096, seed: int = 0, method: str = "fast",
                   log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Signatures (compute_signature on each task's probe prompts) and head inputs of every split.

    Everything is written under ``work`` (signatures ``sig-<task>.npz``, ``<split>.npz`` with h, labels,
    sequence ids) and reused when present. Returns ``{"tasks", "signatures", "splits", "token_ids",
    "seconds"}`` where ``splits[split]`` holds ``h`` (n, d) float32, ``label`` (n,) str and
    ``sequence_ids`` (n,), and ``token_ids[task][label]`` the answer token.
    """
    from ..compute import compute_signature
    from ..extract import iter_chunks
    from ..signature import Signature
    from ..tasks import PromptTargetTask

    log = log or (lambda s: None)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    vocabularies = dict(VOCABULARIES if vocabularies is None else vocabularies)
    family = build_family() if family is None else family
    token_ids = check_single_token(lm.tokenizer, vocabularies, prefix)
    names = list(vocabularies)
    t0 = time.time()
    meta_path = work / "family.json"
    spec = {"template": template, "family": {s: {"texts": list(v["texts"]), "labels": list(v["labels"])}
                                             for s, v in family.items()}, "model_hash": lm.model_hash}
    if meta_path.exists() and json.loads(meta_path.read_text()) != spec:
        log("verbalizer prompts changed: recomputing the signatures and head inputs")
        for f in work.glob("*.npz"):
            f.unlink()
    meta_path.write_text(json.dumps(spec))

    def sig_path(v: str) -> Path:  # keyed by the words and sketch settings, so an edited vocabulary is redone
        key = json.dumps([prefix, sorted(vocabularies[v].items()), m, seed, method])
        return work / f"sig-{v}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.npz"

    def task(v: str, split: str) -> PromptTargetTask:
        voc = {lab: prefix + w for lab, w in vocabularies[v].items()}
        return PromptTargetTask.from_labels(f"verbalizer-{v}", family[split]["texts"], family[split]["labels"],
                                            template=template, verbalizer=voc)

    sigs = {}
    for v in names:
        path = sig_path(v)
        if path.exists():
            sigs[v] = Signature.load(path)
            continue
        t1 = time.time()
        res = compute_signature(lm, task(v, "probe"), m=m, seed=seed, method=method)
        res.signature.save(path)
        sigs[v] = res.signature
        log(f"verbalizer {v}: signature of {res.n_positions} probe positions in {time.time() - t1:.0f} s")
    splits = {}
    for split in family:
        path = work / f"{split}.npz"
        if not path.exists():
            t1 = time.time()
            seqs = task(names[0], split).encode(lm.tokenizer)
            hs, ys, ids = [], [], []
            for chunk in iter_chunks(lm, seqs):
                hs.append(chunk.h.float().cpu().numpy())
                ys.append(chunk.targets.cpu().numpy())
                ids.append(chunk.sequence_ids.cpu().numpy())
            h, y, sid = np.concatenate(hs), np.concatenate(ys), np.concatenate(ids)
            labels = np.asarray(family[split]["labels"])[sid]
            expect = np.array([token_ids[names[0]][lab] for lab in labels])
            if not np.array_equal(expect, y):
                raise RuntimeError("verbalizer positions do not line up with their answer tokens")
            np.savez(path, h=h, label=labels, sequence_ids=sid)
            log(f"verbalizer {split}: head inputs of {len(y)} prompts in {time.time() - t1:.0f} s")
        with np.load(path, allow_pickle=False) as z:
            splits[split] = {k: z[k] for k in z.files}
    return {"tasks": names, "signatures": sigs, "splits": splits, "token_ids": token_ids,
            "n_prompts": {s: len(v["texts"]) for s, v in family.items()}, "seconds": time.time() - t0}


def task_targets(prepared: Mapping[str, Any], task: str, split: str) -> np.ndarray:
    """Answer token of every position of ``split`` under ``task``'s vocabulary."""
    ids = prepared["token_ids"][task]
    return np.array([ids[str(lab)] for lab in prepared["splits"][split]["label"]], dtype=np.int64)
