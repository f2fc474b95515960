"""Scientific-string domains: SMILES families (MOSES), protein GO families (Swiss-Prot), DNA.

These are the "activation-dark" domains the method is for: the model's activations look alike
across them, so each family must differ chemically or biologically, not just by sample.
"""
from __future__ import annotations

import gzip
import mmap
import re
import sqlite3
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from .build import DomainSpec, domain_rng, package_files, pypi_folder

# ---------------------------------------------------------------- SMILES (MOSES)

#: Family -> SMARTS. A molecule joins a family only if it matches exactly one of these patterns,
#: so the families are chemically disjoint.
SMILES_FAMILIES = {
    "sulfonamide": "[SX4](=O)(=O)[NX3]",
    "urea": "[NX3][CX3](=O)[NX3]",
    "aryl-halide": "c[Cl,Br,I]",
    "ester": "[#6][CX3](=O)[OX2H0][#6]",
    "nitrile": "[CX2]#[NX1]",
    "pyrazole": "c1ccnn1",
    "trifluoromethyl": "C(F)(F)F",
    "thiophene": "c1ccsc1",
    "furan": "c1ccoc1",
    "indole": "c1ccc2c(c1)cc[nX3]2",
    "piperazine": "N1CCNCC1",
    "morpholine": "C1COCCN1",
}
SMILES_PER_DOC = 8
SMILES_PER_FAMILY = 1600  # about 3x what the splits need
SMILES_SCAN_MAX = 400_000  # molecules visited at most (MOSES has 1.58 M; rare families stop the scan)
MOSES_FILE = "dataset/data/train.csv.gz"


@lru_cache(maxsize=1)
def smiles_families() -> dict[str, list[str]]:
    """MOSES training molecules assigned to the families of :data:`SMILES_FAMILIES`.

    Molecules are visited in a seeded random order until every family holds
    :data:`SMILES_PER_FAMILY` molecules (RDKit parses and matches them).
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    path = pypi_folder("moses") / MOSES_FILE
    with gzip.open(path, "rt") as fh:
        smiles = [s.strip() for s in fh.read().split("\n")[1:] if s.strip()]  # header "SMILES"
    patterns = {k: Chem.MolFromSmarts(v) for k, v in SMILES_FAMILIES.items()}
    fams: dict[str, list[str]] = {k: [] for k in patterns}
    # MOSES keeps no charged atoms and no acids (ZINC clean-leads filters): families need real hits.
    for i in domain_rng("smiles").permutation(len(smiles))[:SMILES_SCAN_MAX]:
        mol = Chem.MolFromSmiles(smiles[i])
        if mol is None:
            continue
        hits = [k for k, p in patterns.items() if mol.HasSubstructMatch(p)]
        if len(hits) == 1 and len(fams[hits[0]]) < SMILES_PER_FAMILY:
            fams[hits[0]].append(smiles[i])
            if all(len(v) >= SMILES_PER_FAMILY for v in fams.values()):
                break
    return fams


def smiles_specs() -> list[DomainSpec]:
    """One domain per SMILES family; a document is a block of :data:`SMILES_PER_DOC` lines."""
    def docs(fam: str) -> list[str]:
        mols = smiles_families()[fam]
        return ["\n".join(mols[i:i + SMILES_PER_DOC]) for i in range(0, len(mols), SMILES_PER_DOC)]

    return [DomainSpec(
        domain=f"smiles-{fam}", group="smiles",
        description=f"MOSES drug-like molecules whose only family match is {fam} ({smarts})",
        source_package="molsets", source_kind="pypi", licence="MIT (MOSES)",
        path_in_package=f"moses/{MOSES_FILE}", docs=(lambda f=fam: docs(f)),
    ) for fam, smarts in SMILES_FAMILIES.items()]


# ---------------------------------------------------------------- proteins (metastudent-data)

#: Family id -> GO molecular-function term. A protein joins a family only if its annotations
#: (closed under is_a/part_of ancestors) reach exactly one of these terms.
PROTEIN_FAMILIES = {
    "ribosome": "GO:0003735",      # structural constituent of ribosome
    "kinase": "GO:0004672",        # protein kinase activity
    "transcription-factor": "GO:0003700",
    "transporter": "GO:0022857",   # transmembrane transporter activity
    "oxidoreductase": "GO:0016491",
    "peptidase": "GO:0008233",
    "glycosyltransferase": "GO:0016757",
    "gpcr": "GO:0004930",          # G-protein coupled receptor activity
    "ligase": "GO:0016874",
    "lyase": "GO:0016829",
    "isomerase": "GO:0016853",
    "gtpase": "GO:0003924",
    "hormone": "GO:0005179",
}
PROTEIN_DIR = "/usr/share/metastudent-data/dataset_201401"
PROTEINS_PER_FAMILY = 150
PROTEIN_CHUNK = 1000  # residues; about 620 SmolLM2 tokens
#: NCBIstdaa code -> residue letter (BLAST database .psq encoding).
NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"


class BlastProteinDB:
    """Read-only access to a BLAST v4 protein database (.pin index, .psq sequences, .phr headers).

    Written from the documented format because no maintained Python reader exists and BLAST itself
    is not needed: the index holds big-endian offsets into the sequence file, where residues are
    NCBIstdaa bytes separated by a zero byte.
    """

    def __init__(self, stem: str) -> None:
        pin = Path(stem + ".pin").read_bytes()
        version, dbtype = struct.unpack(">ii", pin[:8])
        if version != 4 or dbtype != 1:
            raise ValueError(f"{stem}.pin: expected a BLAST v4 protein db, got version {version} type {dbtype}")
        off = 8
        for _ in range(2):  # title, timestamp
            (n,) = struct.unpack(">i", pin[off:off + 4])
            off += 4 + n
        (self.n,) = struct.unpack(">i", pin[off:off + 4])
        off += 4 + 8 + 4  # count, total residues (little-endian int64), max length
        self.hdr = np.frombuffer(pin, dtype=">i4", count=self.n + 1, offset=off)
        self.seq = np.frombuffer(pin, dtype=">i4", count=self.n + 1, offset=off + 4 * (self.n + 1))
        with open(stem + ".psq", "rb") as psq, open(stem + ".phr", "rb") as phr:  # mmap keeps its own fd
            self._psq = mmap.mmap(psq.fileno(), 0, access=mmap.ACCESS_READ)
            self._phr = mmap.mmap(phr.fileno(), 0, access=mmap.ACCESS_READ)
        self._table = bytes(NCBISTDAA, "ascii").ljust(256, b"X")

    def sequence(self, i: int) -> str:
        """Residues of sequence ``i`` (0-based)."""
        raw = self._psq[int(self.seq[i]):int(self.seq[i + 1]) - 1]  # drop the zero separator
        return raw.translate(self._table).decode("ascii")

    def header(self, i: int) -> bytes:
        """Raw ASN.1 header bytes of sequence ``i`` (the title is readable inside)."""
        return self._phr[int(self.hdr[i]):int(self.hdr[i + 1])]


@lru_cache(maxsize=1)
def protein_families() -> dict[str, list[str]]:
    """Swiss-Prot sequences (MFO set) per family of :data:`PROTEIN_FAMILIES`, seeded sample."""
    package_files("metastudent-data")  # clear error if missing
    targets = {v: k for k, v in PROTEIN_FAMILIES.items()}
    reach: dict[str, set[str]] = {}  # GO term -> target families it implies
    for t, fam in targets.items():
        reach.setdefault(t, set()).add(fam)
    with open(f"{PROTEIN_DIR}/fullTransitiveClosureGO.txt") as fh:
        for line in fh:  # child, relation, ancestor, distance
            child, _, anc, _ = line.split("\t")
            if anc in targets:
                reach.setdefault(child, set()).add(targets[anc])
    members: dict[str, list[tuple[int, str]]] = {k: [] for k in PROTEIN_FAMILIES}
    with open(f"{PROTEIN_DIR}/MFO/goasp_annot.dat") as fh:
        for i, line in enumerate(fh):  # line i describes sequence i of the BLAST db
            acc, *terms = line.split()
            fams = set().union(*(reach.get(t, set()) for t in terms))
            if len(fams) == 1:
                members[fams.pop()].append((i, acc))
    db = BlastProteinDB(f"{PROTEIN_DIR}/MFO/goasp.fasta")
    out = {}
    for fam, items in members.items():
        pick = domain_rng(f"protein-{fam}").permutation(len(items))[:PROTEINS_PER_FAMILY]
        seqs = []
        for j in sorted(pick):
            i, acc = items[j]
            if acc.encode() not in db.header(i):
                raise ValueError(f"BLAST db order differs from goasp_annot.dat at {i} ({acc})")
            seqs.append(db.sequence(i))
        out[fam] = seqs
    return out


def protein_specs() -> list[DomainSpec]:
    """One domain per GO molecular-function family; a document is one sequence (chunked)."""
    def docs(fam: str) -> list[str]:
        return [s[i:i + PROTEIN_CHUNK] for s in protein_families()[fam]
                for i in range(0, len(s), PROTEIN_CHUNK)]

    return [DomainSpec(
        domain=f"protein-{fam}", group="protein",
        description=f"Swiss-Prot sequences annotated (MFO) under {go} and no other listed family",
        source_package="metastudent-data", source_kind="debian", licence="GPL-2+ (Swiss-Prot data CC BY 4.0)",
        path_in_package=f"{PROTEIN_DIR}/MFO/goasp.fasta.psq + goasp_annot.dat",
        docs=(lambda f=fam: docs(f)),
    ) for fam, go in PROTEIN_FAMILIES.items()]


# ---------------------------------------------------------------- DNA (EMBOSS test EMBL, JASPAR)

EMBL_DIR = "/usr/share/EMBOSS/test/embl"
DNA_CHUNK = 600  # bases; about 310 SmolLM2 tokens
EMBOSS_LICENCE = "EMBOSS licence (GPL-2+/LGPL-2+); EMBL records freely available"


@lru_cache(maxsize=1)
def embl_records() -> dict[str, list]:
    """Biopython SeqRecords of the EMBOSS test EMBL files, by file stem."""
    from Bio import SeqIO

    files = [f for f in package_files("emboss-test") if re.search(r"/embl/[a-z0-9]+\.dat$", f)]
    return {Path(f).stem: list(SeqIO.parse(f, "embl")) for f in files}


def bases(seq) -> str:
    """Upper-case text of a Biopython sequence; empty for a CON record (which lists no bases)."""
    from Bio.Seq import UndefinedSequenceError

    try:
        return str(seq).upper()
    except UndefinedSequenceError:
        return ""


def chunks(seq, size: int = DNA_CHUNK) -> list[str]:
    """Non-overlapping chunks of ``seq`` (upper-case), the last one kept if at least half full."""
    seq = bases(seq)
    out = [seq[i:i + size] for i in range(0, len(seq), size)]
    # drop short tails and chunks that are mostly gap (N) or ambiguity codes
    return [c for c in out if len(c) >= size // 2 and sum(map(c.count, "ACGT")) >= 0.95 * len(c)]


def local_features(rec, types: set[str]) -> list:
    """Features of ``rec`` of the given types that lie wholly in ``rec`` (no remote ``join``)."""
    return [f for f in rec.features if f.type in types
            and not any(getattr(p, "ref", None) for p in f.location.parts)]


def embl_docs(kind: str) -> list[str]:
    """DNA chunks of one EMBL-derived domain (see :data:`EMBL_DOMAINS`)."""
    recs = embl_records()
    human = recs["hum1"]
    if kind == "human-coding":
        return [c for r in human for f in local_features(r, {"CDS"}) for c in chunks(f.extract(r.seq))]
    if kind == "human-repeat":
        return [c for r in human for f in local_features(r, {"repeat_region"}) if len(f) >= 100
                for c in chunks(f.extract(r.seq))]
    if kind == "human-noncoding":
        # 600-base windows of the HLA class I region that touch no annotated gene part or repeat
        rec = next(r for r in human if r.id.startswith("BA000025"))
        mask = np.zeros(len(rec.seq), dtype=bool)
        for f in rec.features:  # remote parts of a join are harmless here: the mask only widens
            if f.type in {"CDS", "exon", "mRNA", "misc_RNA", "gene", "repeat_region"}:
                mask[int(f.location.start):int(f.location.end)] = True
        seq = str(rec.seq).upper()
        wins = [seq[i:i + DNA_CHUNK] for i in range(0, len(seq) - DNA_CHUNK, DNA_CHUNK)
                if not mask[i:i + DNA_CHUNK].any()]
        pick = domain_rng("dna-human-noncoding").permutation(len(wins))[:150]
        return [wins[i] for i in sorted(pick)]
    if kind == "celegans":
        return [c for r in recs["inv"] if "elegans" in r.annotations.get("organism", "")
                for c in chunks(r.seq)]
    if kind == "ecoli":
        return [c for r in recs["pro"] for c in chunks(r.seq)]
    if kind == "other-eukaryote":
        return [c for stem in ("vrt", "rod", "pln", "fun") for r in recs[stem] for c in chunks(r.seq)] + \
               [c for r in recs["inv"] if "elegans" not in r.annotations.get("organism", "")
                for c in chunks(r.seq)]
    raise ValueError(f"unknown EMBL domain kind {kind!r}; choose from {list(EMBL_DOMAINS)}")


#: kind -> (description, files)
EMBL_DOMAINS = {
    "human-coding": ("Human coding sequences (CDS features, spliced)", "embl/hum1.dat"),
    "human-repeat": ("Human repeat regions (Alu, L1, ... features)", "embl/hum1.dat"),
    "human-noncoding": ("Human HLA class I region, windows free of genes and repeats", "embl/hum1.dat BA000025"),
    "celegans": ("Caenorhabditis elegans genomic DNA (cosmid)", "embl/inv.dat Z11115"),
    "ecoli": ("Escherichia coli genomic DNA", "embl/pro.dat"),
    "other-eukaryote": ("Non-human eukaryote DNA and mRNA (frog, chicken, rat, mouse, soybean, yeast, octopus, mosquito)",
                        "embl/{vrt,rod,pln,fun,inv}.dat"),
}

#: JASPAR 2024 CORE vertebrate TF structural classes planted as motif-family domains.
JASPAR_CLASSES = {
    "c2h2-zinc-finger": "C2H2 zinc finger factors",
    "homeodomain": "Homeo domain factors",
    "bzip": "Basic leucine zipper factors (bZIP)",
    "bhlh": "Basic helix-loop-helix factors (bHLH)",
    "forkhead": "Fork head/winged helix factors",
    "nuclear-receptor": "Nuclear receptors with C4 zinc fingers",
    "tryptophan-cluster": "Tryptophan cluster factors",
    "hmg": "High-mobility group (HMG) domain factors",
}
JASPAR_DB = "data/JASPAR2024.sqlite"
JASPAR_DOCS = 70
MOTIF_GAP_MEAN = 30  # mean background bases between planted sites


@lru_cache(maxsize=1)
def jaspar_matrices() -> dict[str, list[np.ndarray]]:
    """Position frequency matrices (L x 4, ACGT) of the latest CORE vertebrate version per class."""
    con = sqlite3.connect(f"file:{pypi_folder('pyjaspar') / JASPAR_DB}?mode=ro", uri=True)
    rows = con.execute("""
        SELECT m.ID, a.VAL FROM MATRIX m
        JOIN MATRIX_ANNOTATION a ON a.ID = m.ID AND a.TAG = 'class'
        JOIN MATRIX_ANNOTATION t ON t.ID = m.ID AND t.TAG = 'tax_group' AND t.VAL = 'vertebrates'
        WHERE m.COLLECTION = 'CORE'
          AND m.VERSION = (SELECT MAX(VERSION) FROM MATRIX m2 WHERE m2.BASE_ID = m.BASE_ID
                           AND m2.COLLECTION = 'CORE')
        ORDER BY m.BASE_ID""").fetchall()
    out: dict[str, list[np.ndarray]] = {k: [] for k in JASPAR_CLASSES}
    by_name = {v.lower(): k for k, v in JASPAR_CLASSES.items()}
    for mid, cls in rows:
        key = by_name.get(cls.lower())
        if key is None:
            continue
        data = con.execute("SELECT row, col, val FROM MATRIX_DATA WHERE ID = ?", (mid,)).fetchall()
        length = max(c for _, c, _ in data)
        pfm = np.zeros((length, 4))
        for r, c, v in data:
            pfm[c - 1, "ACGT".index(r.upper())] = v
        out[key].append(pfm)
    return out


@lru_cache(maxsize=1)
def background_model() -> np.ndarray:
    """Order-3 Markov transition table (64 x 4) fitted on every EMBOSS test EMBL sequence."""
    counts = np.ones((64, 4))  # add-one smoothing
    idx = {b: i for i, b in enumerate("ACGT")}
    for recs in embl_records().values():
        for r in recs:
            codes = np.array([idx.get(b, -1) for b in bases(r.seq)], dtype=int)
            if len(codes) < 4:
                continue
            ok = (codes[:-3] >= 0) & (codes[1:-2] >= 0) & (codes[2:-1] >= 0) & (codes[3:] >= 0)
            ctx = codes[:-3] * 16 + codes[1:-2] * 4 + codes[2:-1]
            np.add.at(counts, (ctx[ok], codes[3:][ok]), 1)
    return counts / counts.sum(1, keepdims=True)


def planted_docs(cls: str) -> list[str]:
    """DNA chunks of Markov background with sites sampled from the class's JASPAR matrices."""
    rng = domain_rng(f"dna-jaspar-{cls}")
    trans = background_model()
    mats = [(m + 0.25) / (m + 0.25).sum(1, keepdims=True) for m in jaspar_matrices()[cls]]
    if not mats:
        raise ValueError(f"no JASPAR matrices for class {cls!r}")
    docs = []
    for _ in range(JASPAR_DOCS):
        seq = list(rng.choice(4, 3))
        while len(seq) < DNA_CHUNK:
            for _ in range(int(rng.geometric(1 / MOTIF_GAP_MEAN))):
                ctx = seq[-3] * 16 + seq[-2] * 4 + seq[-1]
                seq.append(int(rng.choice(4, p=trans[ctx])))
            pfm = mats[rng.integers(len(mats))]
            site = [int(rng.choice(4, p=col)) for col in pfm]
            if rng.random() < 0.5:  # either strand
                site = [3 - b for b in reversed(site)]
            seq += site
        docs.append("".join("ACGT"[b] for b in seq[:DNA_CHUNK]))
    return docs


def dna_specs() -> list[DomainSpec]:
    """EMBL-derived DNA domains plus JASPAR motif-family domains."""
    specs = [DomainSpec(
        domain=f"dna-{kind}", group="dna", description=desc, source_package="emboss-test",
        source_kind="debian", licence=EMBOSS_LICENCE, path_in_package=f"{EMBL_DIR}/{files.split('/', 1)[1]}",
        docs=(lambda k=kind: embl_docs(k)),
    ) for kind, (desc, files) in EMBL_DOMAINS.items()]
    specs += [DomainSpec(
        domain=f"dna-jaspar-{cls}", group="dna",
        description=f"JASPAR 2024 CORE vertebrate '{name}' sites planted every ~{MOTIF_GAP_MEAN} bases "
                    "in order-3 Markov background fitted on the EMBOSS test EMBL records",
        source_package="pyjaspar", source_kind="pypi",
        licence="MIT (pyjaspar); JASPAR matrices CC BY 4.0",
        path_in_package=f"pyjaspar/{JASPAR_DB}", docs=(lambda c=cls: planted_docs(c)),
    ) for cls, name in JASPAR_CLASSES.items()]
    return specs


def specs() -> list[DomainSpec]:
    """All scientific-string domains."""
    return smiles_specs() + protein_specs() + dna_specs()
