"""Task specifications: which token positions of which sequences a signature is computed over.

A task turns into a list of :class:`EncodedSequence` — token ids, a boolean mask of the *scored*
positions (position ``t`` scored means the model's prediction of ``token_ids[t + 1]`` counts) and a
sequence id (one per document, used by the sketch state to route positions to its two halves).

* :class:`CorpusTask` scores every next-token position of every document (text, FASTA, SMILES, CSV).
* :class:`PromptTargetTask` scores only the target tokens of (prompt, target) pairs: instruction data,
  classification with verbalizers (:meth:`PromptTargetTask.from_labels`).
* :class:`TokenTask` takes already-tokenised sequences (no tokenizer needed).

``max_positions`` caps the number of scored positions: documents are visited in an order drawn from
``seed`` and kept whole until the budget is met; the last one keeps its first scored positions only.
The draw depends only on the task (not on batching or sharding), so it is reproducible.

Example
-------
>>> from fishersketch_core.tasks import TokenTask
>>> task = TokenTask("toy", [[1, 2, 3, 4], [5, 6, 7]], max_positions=4, seed=0)
>>> seqs = task.encode()
>>> sum(int(s.scored.sum()) for s in seqs)
4
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

TASK_TYPES = ("corpus", "prompt-target")
FORMATS = ("auto", "text", "fasta", "smiles", "csv", "tsv", "jsonl")


@dataclasses.dataclass(frozen=True)
class EncodedSequence:
    """One tokenised document.

    Attributes
    ----------
    token_ids : ndarray of int64, shape (L,)
    scored : ndarray of bool, shape (L,)
        ``scored[t]`` means position ``t`` predicts ``token_ids[t + 1]`` and is part of the task.
        ``scored[L - 1]`` is always False (nothing follows it).
    sequence_id : int
        Stable id of the document (its index in the task), passed to ``state.update``.
    """

    token_ids: np.ndarray
    scored: np.ndarray
    sequence_id: int

    def __post_init__(self) -> None:
        ids = np.asarray(self.token_ids, dtype=np.int64).reshape(-1)
        scored = np.asarray(self.scored, dtype=bool).reshape(-1)
        if ids.shape != scored.shape:
            raise ValueError(f"token_ids has {ids.size} entries but scored has {scored.size}; they must match")
        if ids.size and scored[-1]:
            raise ValueError("the last position of a sequence cannot be scored: no token follows it")
        if ids.size and ids.min() < 0:
            raise ValueError(f"token ids must be non-negative, got {int(ids.min())}")
        object.__setattr__(self, "token_ids", ids)
        object.__setattr__(self, "scored", scored)

    @property
    def n_scored(self) -> int:
        return int(self.scored.sum())

    def __len__(self) -> int:
        return int(self.token_ids.size)


# ----------------------------------------------------------------------------------------------
# budget
def apply_budget(seqs: Sequence[EncodedSequence], max_positions: int | None, seed: int = 0
                 ) -> list[EncodedSequence]:
    """Keep at most ``max_positions`` scored positions, drawn reproducibly by ``seed``.

    Documents are visited in a seeded random order and kept whole until the budget is met; the last
    one keeps only its first scored positions (and is cut after the last of them, which changes no
    earlier logit in a causal model). The kept documents are returned in their original order.

    Example
    -------
    >>> s = [EncodedSequence(np.arange(5), [1, 1, 1, 1, 0], i) for i in range(3)]
    >>> sum(x.n_scored for x in apply_budget(s, 6, seed=1))
    6
    """
    seqs = [s for s in seqs if s.n_scored > 0]
    if max_positions is None:
        return seqs
    if int(max_positions) != max_positions or max_positions < 1:
        raise ValueError(f"max_positions must be a positive integer or None, got {max_positions!r}")
    order = np.random.default_rng(seed).permutation(len(seqs))
    kept: dict[int, EncodedSequence] = {}
    left = int(max_positions)
    for idx in order:
        if left <= 0:
            break
        s = seqs[int(idx)]
        if s.n_scored <= left:
            kept[int(idx)] = s
            left -= s.n_scored
            continue
        where = np.flatnonzero(s.scored)
        last = int(where[left - 1])
        scored = s.scored[: last + 2].copy()
        scored[last + 1:] = False
        kept[int(idx)] = EncodedSequence(s.token_ids[: last + 2], scored, s.sequence_id)
        left = 0
    return [kept[i] for i in sorted(kept)]


def fingerprint(seqs: Iterable[EncodedSequence]) -> str:
    """sha256 of the encoded task (ids, scored masks, sequence ids): identifies a job for resuming."""
    h = hashlib.sha256()
    for s in seqs:
        h.update(np.int64(s.sequence_id).tobytes())
        h.update(np.int64(len(s)).tobytes())
        h.update(s.token_ids.tobytes())
        h.update(np.packbits(s.scored).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# tasks
def _check_common(name: str, max_positions: int | None) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a task needs a non-empty name, got {name!r}")
    if max_positions is not None and (int(max_positions) != max_positions or max_positions < 1):
        raise ValueError(f"max_positions must be a positive integer or None, got {max_positions!r}")


def _need_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise ValueError(f"{what} holds text: pass the model's tokenizer to encode() "
                         "(load_model(..., with_tokenizer=True))")


@dataclasses.dataclass
class CorpusTask:
    """Every next-token position of every document.

    Parameters
    ----------
    name : str
    documents : sequence of str
    max_positions : int, optional
        Budget of scored positions (see :func:`apply_budget`).
    seed : int
        Seed of the budget draw.
    add_special_tokens : bool
        Let the tokenizer add its BOS token (so the first real token is predicted too).

    Example
    -------
    >>> task = CorpusTask("fortunes", ["A stitch in time saves nine.", "Look before you leap."])
    >>> task.task_type
    'corpus'
    """

    name: str
    documents: Sequence[str]
    max_positions: int | None = None
    seed: int = 0
    add_special_tokens: bool = True
    task_type: str = dataclasses.field(default="corpus", init=False)

    def __post_init__(self) -> None:
        _check_common(self.name, self.max_positions)
        self.documents = [str(d) for d in self.documents]
        if not self.documents:
            raise ValueError(f"task {self.name!r} has no documents; check the data path and reader options")

    def encode(self, tokenizer: Any = None) -> list[EncodedSequence]:
        _need_tokenizer(tokenizer, f"corpus task {self.name!r}")
        enc = tokenizer(self.documents, add_special_tokens=self.add_special_tokens)["input_ids"]
        seqs = []
        for i, ids in enumerate(enc):
            ids = np.asarray(ids, dtype=np.int64)
            scored = np.ones(ids.size, dtype=bool)
            if ids.size:
                scored[-1] = False
            seqs.append(EncodedSequence(ids, scored, i))
        return apply_budget(seqs, self.max_positions, self.seed)


@dataclasses.dataclass
class PromptTargetTask:
    """Only the target tokens of (prompt, target) pairs are scored.

    The prompt and the target are tokenised separately and concatenated (the target without special
    tokens), so the boundary is exact: the positions scored are the last prompt token (predicting the
    first target token) up to the second-to-last target token.

    Parameters
    ----------
    name : str
    prompts, targets : sequence of str
    max_positions, seed : see :class:`CorpusTask`
    chat_template : bool
        Wrap each prompt in the tokenizer's chat template as a user turn (instruct models).
    add_special_tokens : bool
        Let the tokenizer add its BOS token before the prompt.

    Example
    -------
    >>> t = PromptTargetTask.from_labels("sst", ["great film", "dull"], ["pos", "neg"],
    ...                                  template="Review: {text}\\nSentiment:",
    ...                                  verbalizer={"pos": " positive", "neg": " negative"})
    >>> t.targets
    [' positive', ' negative']
    """

    name: str
    prompts: Sequence[str]
    targets: Sequence[str]
    max_positions: int | None = None
    seed: int = 0
    chat_template: bool = False
    add_special_tokens: bool = True
    task_type: str = dataclasses.field(default="prompt-target", init=False)

    def __post_init__(self) -> None:
        _check_common(self.name, self.max_positions)
        self.prompts, self.targets = [str(p) for p in self.prompts], [str(t) for t in self.targets]
        if len(self.prompts) != len(self.targets):
            raise ValueError(f"task {self.name!r}: {len(self.prompts)} prompts but {len(self.targets)} targets; "
                             "each prompt needs exactly one target")
        if not self.prompts:
            raise ValueError(f"task {self.name!r} has no (prompt, target) pairs")
        empty = [i for i, t in enumerate(self.targets) if not t]
        if empty:
            raise ValueError(f"task {self.name!r}: target {empty[0]} is empty; every pair needs a target to score")

    @classmethod
    def from_labels(cls, name: str, texts: Sequence[str], labels: Sequence[Any], *, template: str = "{text}",
                    verbalizer: Mapping[Any, str], **kwargs: Any) -> "PromptTargetTask":
        """Classification with verbalizers: prompt ``template.format(text=...)``, target ``verbalizer[label]``."""
        if "{text}" not in template:
            raise ValueError(f"template {template!r} must contain '{{text}}'")
        missing = sorted({str(lab) for lab in labels if lab not in verbalizer})
        if missing:
            raise ValueError(f"labels {missing[:5]} have no verbalizer word; add them to verbalizer={dict(verbalizer)!r}")
        return cls(name, [template.format(text=t) for t in texts], [verbalizer[lab] for lab in labels], **kwargs)

    def _prompt_ids(self, tokenizer: Any) -> list[list[int]]:
        if not self.chat_template:
            return tokenizer(self.prompts, add_special_tokens=self.add_special_tokens)["input_ids"]
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"task {self.name!r} asks for chat_template=True but the tokenizer has none")
        out = []
        for p in self.prompts:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out.append(list(ids))
        return out

    def encode(self, tokenizer: Any = None) -> list[EncodedSequence]:
        _need_tokenizer(tokenizer, f"prompt-target task {self.name!r}")
        p_ids = self._prompt_ids(tokenizer)
        t_ids = tokenizer(self.targets, add_special_tokens=False)["input_ids"]
        seqs = []
        for i, (p, t) in enumerate(zip(p_ids, t_ids)):
            if not p:
                raise ValueError(f"task {self.name!r}: prompt {i} tokenised to nothing; a target needs a prompt "
                                 "token before it (use add_special_tokens=True or a non-empty prompt)")
            if not t:
                raise ValueError(f"task {self.name!r}: target {i} ({self.targets[i]!r}) tokenised to nothing")
            seqs.append(_prompt_target_sequence(p, t, i))
        return apply_budget(seqs, self.max_positions, self.seed)


def _prompt_target_sequence(prompt_ids: Sequence[int], target_ids: Sequence[int], seq_id: int) -> EncodedSequence:
    ids = np.asarray(list(prompt_ids) + list(target_ids), dtype=np.int64)
    scored = np.zeros(ids.size, dtype=bool)
    scored[len(prompt_ids) - 1: ids.size - 1] = True  # positions predicting target tokens
    return EncodedSequence(ids, scored, seq_id)


@dataclasses.dataclass
class TokenTask:
    """Already-tokenised sequences (no tokenizer needed).

    ``prompt_lengths[i]`` (optional) marks the first ``prompt_lengths[i]`` tokens of sequence ``i`` as
    prompt: only the tokens after them are targets. Without it every next-token position is scored.
    """

    name: str
    sequences: Sequence[Sequence[int]]
    prompt_lengths: Sequence[int] | None = None
    max_positions: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_common(self.name, self.max_positions)
        if not len(self.sequences):
            raise ValueError(f"task {self.name!r} has no sequences")
        if self.prompt_lengths is not None and len(self.prompt_lengths) != len(self.sequences):
            raise ValueError(f"prompt_lengths has {len(self.prompt_lengths)} entries for "
                             f"{len(self.sequences)} sequences; give one per sequence")

    @property
    def task_type(self) -> str:
        return "corpus" if self.prompt_lengths is None else "prompt-target"

    def encode(self, tokenizer: Any = None) -> list[EncodedSequence]:
        seqs = []
        for i, ids in enumerate(self.sequences):
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if self.prompt_lengths is None:
                scored = np.ones(ids.size, dtype=bool)
                if ids.size:
                    scored[-1] = False
                seqs.append(EncodedSequence(ids, scored, i))
            else:
                p = int(self.prompt_lengths[i])
                if not 1 <= p < ids.size:
                    raise ValueError(f"sequence {i}: prompt length {p} must be in [1, {ids.size - 1}]")
                seqs.append(_prompt_target_sequence(ids[:p], ids[p:], i))
        return apply_budget(seqs, self.max_positions, self.seed)


Task = CorpusTask | PromptTargetTask | TokenTask


# ----------------------------------------------------------------------------------------------
# readers
def _open_text(path: str | os.PathLike) -> io.TextIOBase:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_text(path: str | os.PathLike, unit: str = "line", min_chars: int = 1) -> list[str]:
    """Documents of a plain-text file: one per ``"line"``, per blank-line-separated ``"paragraph"``,
    or the whole ``"file"``. Documents shorter than ``min_chars`` (after stripping) are dropped."""
    if unit not in ("line", "paragraph", "file"):
        raise ValueError(f"unit={unit!r} is not one of 'line', 'paragraph', 'file'")
    with _open_text(path) as fh:
        text = fh.read()
    if unit == "file":
        docs = [text]
    elif unit == "line":
        docs = text.splitlines()
    else:
        docs, cur = [], []
        for line in text.splitlines():
            if line.strip():
                cur.append(line)
            elif cur:
                docs.append("\n".join(cur)); cur = []
        if cur:
            docs.append("\n".join(cur))
    return [d.strip() for d in docs if len(d.strip()) >= min_chars]


def read_fasta(path: str | os.PathLike, with_ids: bool = False) -> list[str] | list[tuple[str, str]]:
    """Sequences of a FASTA file (residues joined across lines, headers dropped unless ``with_ids``)."""
    out: list[tuple[str, str]] = []
    header, parts = None, []
    with _open_text(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                if header is not None:
                    out.append((header, "".join(parts)))
                header, parts = line[1:].strip(), []
            elif line and not line.startswith(";"):
                if header is None:
                    raise ValueError(f"{path} is not FASTA: sequence data before the first '>' header")
                parts.append(line)
    if header is not None:
        out.append((header, "".join(parts)))
    out = [(h, s) for h, s in out if s]
    return out if with_ids else [s for _, s in out]


def read_smiles(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """SMILES strings, one per line (first whitespace-separated field); a ``SMILES`` header line is
    skipped. CSV files need ``column`` (default ``"SMILES"``/``"smiles"`` when present)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        header = _csv_header(path)
        col = column or next((c for c in header if c.lower() == "smiles"), None)
        if col is None:
            raise ValueError(f"{path} is a CSV without a SMILES column; pass column= one of {header}")
        return read_csv(path, col)
    with _open_text(path) as fh:
        out = [ln.split()[0] for ln in fh if ln.strip()]
    if out and out[0].lower() == "smiles":
        out = out[1:]
    return out


def _csv_header(path: str | os.PathLike) -> list[str]:
    with _open_text(path) as fh:
        return next(csv.reader(fh, delimiter=_delimiter(path)), [])


def _delimiter(path: str | os.PathLike) -> str:
    return "\t" if Path(path).name.lower().removesuffix(".gz").endswith(".tsv") else ","


def read_csv(path: str | os.PathLike, column: str | Sequence[str]) -> list[Any]:
    """Values of one column (a list of str), or of several columns (a list of tuples), of a CSV/TSV
    file with a header row. Rows with an empty value are dropped."""
    cols = [column] if isinstance(column, str) else list(column)
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=_delimiter(path))
        header = reader.fieldnames or []
        bad = [c for c in cols if c not in header]
        if bad:
            raise ValueError(f"{path} has no column {bad[0]!r}; its columns are {header}")
        rows = [tuple(r[c] or "" for c in cols) for r in reader]
    rows = [r for r in rows if all(v.strip() for v in r)]
    return [r[0] for r in rows] if isinstance(column, str) else rows


def read_jsonl(path: str | os.PathLike, keys: str | Sequence[str]) -> list[Any]:
    """Values of one key (list of str) or several keys (list of tuples) from a JSON-lines file."""
    ks = [keys] if isinstance(keys, str) else list(keys)
    out = []
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if any(k not in rec for k in ks):
                raise ValueError(f"{path}:{n} has no key {[k for k in ks if k not in rec][0]!r}; keys: {sorted(rec)}")
            out.append(tuple(str(rec[k]) for k in ks))
    return [r[0] for r in out] if isinstance(keys, str) else out


def detect_format(path: str | os.PathLike) -> str:
    """Reader format from the file name: fasta, smiles, csv, tsv, jsonl or text."""
    name = Path(path).name.lower().removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix in ("fa", "fasta", "faa", "fna", "ffn", "fas"):
        return "fasta"
    if suffix in ("smi", "smiles"):
        return "smiles"
    if suffix in ("csv", "tsv", "jsonl"):
        return suffix
    return "text"


def load_task(name: str, paths: str | os.PathLike | Sequence[str | os.PathLike], *, task_type: str = "corpus",
              format: str = "auto", text_column: str | None = None, prompt_column: str | None = None,
              target_column: str | None = None, unit: str = "line", max_positions: int | None = None,
              seed: int = 0, chat_template: bool = False) -> CorpusTask | PromptTargetTask:
    """Build a task from data files (what the CLI calls).

    Parameters
    ----------
    name : str
    paths : path or list of paths
        Files, or folders (all their files, sorted). ``.gz`` is read transparently.
    task_type : {"corpus", "prompt-target"}
    format : {"auto", "text", "fasta", "smiles", "csv", "tsv", "jsonl"}
    text_column : str
        Column (CSV) or key (JSONL) holding the documents of a corpus task.
    prompt_column, target_column : str
        Columns/keys of a prompt-target task.
    unit : {"line", "paragraph", "file"}
        What a document is in a plain-text file.

    Example
    -------
    >>> task = load_task("dna", "seqs.fasta", max_positions=2000)      # doctest: +SKIP
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r} is not one of {TASK_TYPES}")
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    plist = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for p in map(Path, plist):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"data path {p} does not exist")
    if not files:
        raise ValueError(f"no data files found in {plist}")
    if task_type == "prompt-target":
        if not prompt_column or not target_column:
            raise ValueError("a prompt-target task needs --prompt-column and --target-column (CSV columns or "
                             "JSONL keys)")
        pairs: list[tuple[str, str]] = []
        for f in files:
            fmt = detect_format(f) if format == "auto" else format
            if fmt in ("csv", "tsv"):
                pairs += read_csv(f, [prompt_column, target_column])
            elif fmt == "jsonl":
                pairs += read_jsonl(f, [prompt_column, target_column])
            else:
                raise ValueError(f"{f}: prompt-target data must be CSV/TSV or JSONL, not {fmt}")
        return PromptTargetTask(name, [p for p, _ in pairs], [t for _, t in pairs], max_positions=max_positions,
                                seed=seed, chat_template=chat_template)
    docs: list[str] = []
    for f in files:
        fmt = detect_format(f) if format == "auto" else format
        if fmt == "fasta":
            docs += read_fasta(f)
        elif fmt == "smiles":
            docs += read_smiles(f, text_column)
        elif fmt in ("csv", "tsv"):
            if not text_column:
                raise ValueError(f"{f} is {fmt.upper()}: pass --text-column, one of {_csv_header(f)}")
            docs += read_csv(f, text_column)
        elif fmt == "jsonl":
            if not text_column:
                raise ValueError(f"{f} is JSONL: pass --text-column naming the key that holds the text")
            docs += read_jsonl(f, text_column)
        else:
            docs += read_text(f, unit=unit)
    return CorpusTask(name, docs, max_positions=max_positions, seed=seed)
