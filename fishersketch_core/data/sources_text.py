"""Natural-language and code domains: WordNet glosses, man pages, source code, fortunes.

Each ``*_specs`` function returns :class:`~fishersketch_core.data.build.DomainSpec` objects whose
``docs`` callables read an installed Debian package. Candidate documents come out in a
deterministic order; the builder deduplicates, shuffles and splits them.
"""
from __future__ import annotations

import gzip
import re
import subprocess
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from .build import DomainSpec, _which, domain_rng, package_files

#: Characters of candidate text gathered per domain before splitting: about 3x what the splits
#: need in Latin script, so deduplication and the shuffle still have room.
CHAR_BUDGET = 90_000


def chunk_blocks(blocks: list[str], max_chars: int, sep: str = "\n\n") -> list[str]:
    """Join consecutive blocks (paragraphs, code blocks) into chunks of at most ``max_chars``.

    A single block longer than ``max_chars`` is cut at line boundaries, then hard-cut.
    """
    pieces: list[str] = []
    for b in blocks:
        if len(b) <= max_chars:
            pieces.append(b)
            continue
        cur = ""
        for line in b.split("\n"):
            while len(line) > max_chars:
                if cur:
                    pieces.append(cur)
                    cur = ""
                pieces.append(line[:max_chars])
                line = line[max_chars:]
            if cur and len(cur) + 1 + len(line) > max_chars:
                pieces.append(cur)
                cur = line
            else:
                cur = f"{cur}\n{line}" if cur else line
        if cur:
            pieces.append(cur)
    chunks: list[str] = []
    cur = ""
    for p in pieces:
        if cur and len(cur) + len(sep) + len(p) > max_chars:
            chunks.append(cur)
            cur = p
        else:
            cur = f"{cur}{sep}{p}" if cur else p
    if cur:
        chunks.append(cur)
    return chunks


def sample_files(domain: str, files: list[str], read: Callable[[str], list[str]],
                 budget: int = CHAR_BUDGET, per_file: int = 3) -> list[str]:
    """Take chunks from files in a seeded random order until ``budget`` characters are gathered.

    At most ``per_file`` chunks (chosen at random) come from one file, so a domain is spread
    over many files instead of a few long ones.
    """
    rng = domain_rng(domain)
    out: list[str] = []
    total = 0
    for i in rng.permutation(len(files)):
        try:
            chunks = read(files[i])
        except (OSError, UnicodeDecodeError, subprocess.SubprocessError):
            continue  # unreadable or non-UTF-8 file: skip, the order stays deterministic
        if len(chunks) > per_file:
            chunks = [chunks[j] for j in sorted(rng.choice(len(chunks), per_file, replace=False))]
        out += chunks
        total += sum(map(len, chunks))
        if total >= budget:
            break
    return out


# ---------------------------------------------------------------- WordNet

WORDNET_LICENCE = "WordNet 3.0 licence (Princeton University; permissive, BSD-like)"
#: The 45 lexicographer files of WordNet 3.0, by lex_filenum.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl").split()
#: Categories shipped: the 24 with the most gloss text (all have well over 8k tokens).
WORDNET_CATEGORIES = (
    "adj.all", "adj.pert", "adv.all", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.food", "noun.group", "noun.location",
    "noun.person", "noun.plant", "noun.state", "noun.substance", "noun.quantity", "verb.change",
    "verb.communication", "verb.contact", "verb.motion", "verb.social", "noun.event",
)


@lru_cache(maxsize=1)
def wordnet_glosses() -> dict[str, list[str]]:
    """All synset glosses by lexicographer category, as ``"word, word: gloss"`` documents."""
    files = [f for f in package_files("wordnet-base") if re.search(r"/data\.(noun|verb|adj|adv)$", f)]
    by_cat: dict[str, list[str]] = {}
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header lines
                    continue
                head, _, gloss = line.partition(" | ")
                parts = head.split()
                lexnum, n_words = int(parts[1]), int(parts[3], 16)
                words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in parts[4:4 + 2 * n_words:2]]
                by_cat.setdefault(LEXNAMES[lexnum], []).append(f"{', '.join(words)}: {gloss.strip()}")
    return by_cat


def wordnet_specs() -> list[DomainSpec]:
    """One domain per WordNet lexicographer category in :data:`WORDNET_CATEGORIES`."""
    return [DomainSpec(
        domain=f"wordnet-{cat.lower()}", group="wordnet",
        description=f"WordNet 3.0 glosses, lexicographer category {cat}",
        source_package="wordnet-base", source_kind="debian", licence=WORDNET_LICENCE,
        path_in_package=f"/usr/share/wordnet/data.{cat.split('.')[0]} (lex_filenum {LEXNAMES.index(cat)})",
        docs=(lambda c=cat: wordnet_glosses()[c]),
    ) for cat in WORDNET_CATEGORIES]


# ---------------------------------------------------------------- man pages

#: language -> (package, folder under /usr/share/man, chunk size in characters, licence).
#: Chunks of about 200-250 tokens: scripts with more tokens per character get fewer characters.
MAN_LANGS = {
    "en": ("manpages", "", 700, "GPL-2+ / BSD / verbatim (Linux man-pages project, per page)"),
    "de": ("manpages-de", "de", 700, "GPL-3+ translations of pages under their own licences"),
    "fr": ("manpages-fr", "fr", 700, "GPL-3+ translations of pages under their own licences"),
    "es": ("manpages-es", "es", 700, "GPL-3+ translations of pages under their own licences"),
    "pl": ("manpages-pl", "pl", 600, "GPL-3+ translations of pages under their own licences"),
    "ru": ("manpages-ru", "ru", 450, "GPL-3+ translations of pages under their own licences"),
    "it": ("manpages-it", "it", 700, "GPL-3+ translations of pages under their own licences"),
    "ja": ("manpages-ja", "ja", 250, "GPL-2+ / BSD / verbatim (JM project translations, per page)"),
    "zh_CN": ("manpages-zh", "zh_CN", 250, "GFDL-1.2+ (Chinese man-pages project)"),
    "nl": ("manpages-nl", "nl", 700, "GPL-3+ translations of pages under their own licences"),
    "sv": ("manpages-sv", "sv", 700, "GPL-3+ translations of pages under their own licences"),
    "cs": ("manpages-cs", "cs", 600, "GPL-3+ translations of pages under their own licences"),
    "uk": ("manpages-uk", "uk", 450, "GPL-3+ translations of pages under their own licences"),
    "tr": ("manpages-tr", "tr", 600, "GPL-2+ (Turkish translations)"),
    "pt_BR": ("manpages-pt-br", "pt_BR", 700, "GPL-3+ translations of pages under their own licences"),
    "ro": ("manpages-ro", "ro", 700, "GPL-3+ translations of pages under their own licences"),
    "da": ("manpages-da", "da", 700, "GPL-3+ translations of pages under their own licences"),
    "fi": ("manpages-fi", "fi", 700, "GPL-3+ translations of pages under their own licences"),
    "hu": ("manpages-hu", "hu", 600, "GPL-3+ translations of pages under their own licences"),
    "id": ("manpages-id", "id", 700, "GPL-3+ translations of pages under their own licences"),
}


def render_man(path: str) -> list[str]:
    """Render one gzip'd roff page with groff to plain text; return its paragraphs.

    groff does the roff work (macros, escapes, tables); we only drop the running header and
    footer and reflow each paragraph onto one line.
    """
    src = gzip.open(path).read()
    if src.lstrip().startswith(b".so "):  # a link to another page: no text of its own
        return []
    out = subprocess.run(
        [_which("groff"), "-k", "-Kutf8", "-t", "-man", "-Tutf8", "-rcR=1", "-rLL=200n",
         "-P-c", "-P-b", "-P-o", "-P-u"],
        input=src, capture_output=True, timeout=60).stdout.decode("utf-8", errors="replace")
    lines = out.strip("\n").split("\n")[1:-1]  # running header and footer
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", "\n".join(lines))]
    return [p for p in paras if len(p) > 1]


#: Character-set tables (iso_8859-*, koi8-*, ...): long code-point listings, not prose.
MAN_SKIP = re.compile(r"/man7/(iso[-_]?8859|koi8|cp125|armscii|ascii|charsets|latin\d|utf-?8)", re.I)


def man_docs(lang: str) -> list[str]:
    """Chunks of rendered man pages of one language, from a seeded sample of its pages.

    Paragraphs already taken from an earlier page (translation credits, licence notes repeated
    on every page of a translation project) are dropped before chunking.
    """
    package, folder, max_chars, _ = MAN_LANGS[lang]
    prefix = f"/usr/share/man/{folder + '/' if folder else ''}man"
    files = [f for f in package_files(package)
             if f.startswith(prefix) and f.endswith(".gz") and not MAN_SKIP.search(f)]
    seen: set[str] = set()

    def read(f: str) -> list[str]:
        paras = [p for p in render_man(f) if p not in seen]
        seen.update(paras)
        return chunk_blocks(paras, max_chars, sep="\n")

    # CJK and Cyrillic text has more tokens per character: gather fewer characters.
    budget = CHAR_BUDGET * max_chars // 700
    return sample_files(f"man-{lang}", files, read, budget=budget)


def man_specs() -> list[DomainSpec]:
    """One domain per man-page language in :data:`MAN_LANGS`."""
    return [DomainSpec(
        domain=f"man-{lang.lower()}", group="manpages",
        description=f"Manual pages in {lang}, rendered with groff, paragraph chunks",
        source_package=pkg, source_kind="debian", licence=lic,
        path_in_package=f"/usr/share/man/{folder + '/' if folder else ''}man*/*.gz",
        docs=(lambda l=lang: man_docs(l)),
    ) for lang, (pkg, folder, _, lic) in MAN_LANGS.items()]


# ---------------------------------------------------------------- source code

#: language -> (package, file-name regex, licence)
CODE_LANGS = {
    "python": ("libpython3.11-stdlib", r"^/usr/lib/python3\.11/.*\.py$", "PSF-2.0"),
    "c": ("libc6-dev", r"^/usr/include/.*\.h$", "LGPL-2.1+ (GNU C Library)"),
    "cpp": ("libstdc++-12-dev", r"^/usr/include/c\+\+/12/", "GPL-3+ with GCC runtime library exception"),
    "perl": ("perl-modules-5.36", r"\.pm$", "GPL-1+ or Artistic (Perl)"),
    "ruby": ("libruby3.1", r"\.rb$", "Ruby licence or BSD-2-clause"),
    "go": ("golang-1.19-src", r"^(?!.*/testdata/).*\.go$", "BSD-3-clause (Go)"),
    "rust": ("rust-src", r"^/usr/src/rustc-[^/]+/library/.*\.rs$", "MIT or Apache-2.0 (Rust)"),
    "erlang": ("erlang-src", r"\.erl$", "Apache-2.0 (Erlang/OTP)"),
    "elisp": ("emacs-el", r"\.el\.gz$", "GPL-3+ (GNU Emacs)"),
    "prolog": ("swi-prolog-core", r"\.pl$", "BSD-2-clause (SWI-Prolog)"),
    "octave": ("octave-common", r"\.m$", "GPL-3+ (GNU Octave)"),
    "typescript": ("node-typescript", r"\.d\.ts$", "Apache-2.0 (TypeScript)"),
    "tcl": ("libtcl8.6", r"\.(tcl|tm)$", "Tcl/Tk licence (BSD-style)"),
    "scheme": ("guile-3.0-libs", r"\.scm$", "LGPL-3+ (GNU Guile)"),
    "racket": ("racket-common", r"\.rkt$", "MIT or Apache-2.0 (Racket)"),
    "commonlisp": ("sbcl-source", r"\.lisp$", "public domain and BSD-style (SBCL)"),
    "nim": ("nim", r"\.nim$", "MIT (Nim)"),
    "ocaml": ("ocaml-source", r"\.tar$", "LGPL-2.1 with OCaml linking exception"),
    "pascal": ("fpc-source-3.2.2", r"\.(pp|pas)$", "LGPL-2+ with static linking exception (FPC RTL)"),
}
CODE_CHUNK_CHARS = 900  # about 250 tokens of code


def code_chunks(text: str) -> list[str]:
    """Cut a source file into chunks of whole blank-line-separated blocks."""
    text = text.replace("\r\n", "\n").expandtabs(4)
    blocks = [b.rstrip() for b in re.split(r"\n[ \t]*\n", text) if b.strip()]
    return chunk_blocks(blocks, CODE_CHUNK_CHARS)


def read_code(path: str) -> list[str]:
    """Read one source file (plain or gzip'd) as UTF-8 and chunk it."""
    raw = gzip.open(path).read() if path.endswith(".gz") else Path(path).read_bytes()
    return code_chunks(raw.decode("utf-8"))


@lru_cache(maxsize=1)
def ocaml_sources() -> dict[str, str]:
    """The ``.ml`` files of the upstream tarball nested in the package's tarball, by member name."""
    tar_path = next(f for f in package_files("ocaml-source") if f.endswith(".tar"))
    out = {}
    with tarfile.open(tar_path) as outer:
        orig = next(m for m in outer if m.name.endswith(".orig.tar.gz"))
        with tarfile.open(fileobj=outer.extractfile(orig), mode="r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".ml") and "/testsuite/" not in m.name:
                    out[m.name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    return dict(sorted(out.items()))


def code_docs(lang: str) -> list[str]:
    """Chunks of source files in one programming language, from a seeded sample of files."""
    package, pattern, _ = CODE_LANGS[lang]
    if lang == "ocaml":
        src = ocaml_sources()
        return sample_files(f"code-{lang}", list(src), lambda f: code_chunks(src[f]))
    files = [f for f in package_files(package) if re.search(pattern, f)]
    return sample_files(f"code-{lang}", files, read_code)


def code_specs() -> list[DomainSpec]:
    """One domain per programming language in :data:`CODE_LANGS`."""
    return [DomainSpec(
        domain=f"code-{lang}", group="code",
        description=f"{lang} source code, blank-line-block chunks of about {CODE_CHUNK_CHARS} characters",
        source_package=pkg, source_kind="debian", licence=lic,
        path_in_package=("/usr/src/ocaml-source-*.tar: ocaml_*.orig.tar.gz: *.ml" if lang == "ocaml" else f"files matching {pat}"),
        docs=(lambda l=lang: code_docs(l)),
    ) for lang, (pkg, pat, lic) in CODE_LANGS.items()]


# ---------------------------------------------------------------- fortunes

FORTUNE_DIR = "/usr/share/games/fortunes"
#: English categories with enough text (about 48 KB or more each).
FORTUNE_CATEGORIES = ("art", "computers", "cookie", "definitions", "law", "linux", "literature",
                      "men-women", "people", "politics", "science", "songs-poems", "wisdom", "work")
#: Other languages: every category of the language's package, pooled.
FORTUNE_LANGS = {"de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"}
FORTUNE_LICENCE = {"fortunes": "BSD-4-clause and public domain (fortune-mod collection)",
                   "fortunes-de": "GPL-2+ (German fortunes collection)",
                   "fortunes-es": "GPL-2+ (Spanish fortunes collection)",
                   "fortunes-it": "GPL-2+ (Italian fortunes collection)"}


def read_fortunes(path: str) -> Iterator[str]:
    """The fortunes of one strfile source file (entries separated by ``%`` lines)."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    for entry in re.split(r"\n%\n", "\n" + text):
        entry = entry.strip("\n%")
        if entry.strip():
            yield entry


def fortune_specs() -> list[DomainSpec]:
    """English fortunes by category, plus German, Spanish and Italian fortunes pooled."""
    specs = [DomainSpec(
        domain=f"fortune-{cat}", group="fortunes", description=f"Fortunes, English category {cat}",
        source_package="fortunes", source_kind="debian", licence=FORTUNE_LICENCE["fortunes"],
        path_in_package=f"{FORTUNE_DIR}/{cat}",
        docs=(lambda c=cat: list(read_fortunes(f"{FORTUNE_DIR}/{c}"))),
    ) for cat in FORTUNE_CATEGORIES]

    def lang_docs(pkg: str) -> list[str]:
        files = [f for f in package_files(pkg) if f.startswith(FORTUNE_DIR)
                 and not f.endswith((".dat", ".u8")) and "/off/" not in f]
        return [e for f in files for e in read_fortunes(f)]

    specs += [DomainSpec(
        domain=f"fortune-{lang}", group="fortunes", description=f"Fortunes in {lang}, all categories",
        source_package=pkg, source_kind="debian", licence=FORTUNE_LICENCE[pkg],
        path_in_package=f"{FORTUNE_DIR}/{lang}/*", docs=(lambda p=pkg: lang_docs(p)),
    ) for lang, pkg in FORTUNE_LANGS.items()]
    return specs


def specs() -> list[DomainSpec]:
    """All natural-language and code domains."""
    return wordnet_specs() + man_specs() + code_specs() + fortune_specs()
