"""The bundled corpora in data/: counts, provenance, integrity and disjoint splits.

Reads only data/ (no apt, no model, no network): fast enough for every CI run.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from fishersketch_core.data import SPLITS, data_dir, domain_path, list_domains, load_domain

SCIENTIFIC = ("smiles", "protein", "dna")


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return list_domains()


def test_enough_domains_and_groups(manifest: pd.DataFrame) -> None:
    assert len(manifest) >= 100
    assert manifest["domain"].is_unique
    counts = manifest["group"].value_counts()
    assert len(counts) >= 5, counts.to_dict()
    for g in SCIENTIFIC:
        assert counts.get(g, 0) >= 5, f"group {g!r} has {counts.get(g, 0)} domains, need >= 5"


def test_every_row_names_source_and_licence(manifest: pd.DataFrame) -> None:
    licences = (data_dir() / "LICENSES.md").read_text(encoding="utf-8")
    for col in ("source_package", "source_version", "licence", "path_in_package", "description"):
        bad = manifest.loc[manifest[col].isna() | (manifest[col].astype(str).str.strip() == ""), "domain"]
        assert bad.empty, f"empty {col} for {list(bad)}"
    assert set(manifest["source_kind"]) <= {"debian", "pypi"}
    for pkg in manifest["source_package"].unique():
        assert f"## {pkg} " in licences, f"LICENSES.md has no note for package {pkg!r}"


def test_files_exist_and_hashes_match(manifest: pd.DataFrame) -> None:
    for row in manifest.itertuples():
        path = domain_path(row.domain)
        assert path.exists(), f"missing {path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256, f"hash mismatch for {row.domain}"
    on_disk = {p.name.removesuffix(".json.gz") for p in (data_dir() / "domains").glob("*.json.gz")}
    assert on_disk == set(manifest["domain"]), "domain files and manifest rows differ"


def test_file_format_and_splits_disjoint(manifest: pd.DataFrame) -> None:
    for row in manifest.itertuples():
        with gzip.open(domain_path(row.domain), "rt", encoding="utf-8") as fh:
            obj = json.load(fh)
        assert obj["domain"] == row.domain and obj["group"] == row.group
        splits = load_domain(row.domain)
        assert set(splits) == set(SPLITS)
        sets = {}
        for s in SPLITS:
            docs = splits[s]
            assert docs and all(isinstance(d, str) and d.strip() for d in docs), f"{row.domain}/{s}"
            assert len(docs) == getattr(row, f"n_docs_{s}")
            assert len(set(docs)) == len(docs), f"{row.domain}/{s} has duplicate documents"
            sets[s] = set(docs)
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1:]:
                shared = sets[a] & sets[b]
                assert not shared, f"{row.domain}: {len(shared)} documents in both {a} and {b}"


def test_token_counts(manifest: pd.DataFrame) -> None:
    total = manifest[[f"tokens_{s}" for s in SPLITS]].sum(axis=1)
    assert (total >= 8000).all(), manifest.loc[total < 8000, "domain"].tolist()
    assert (manifest[[f"tokens_{s}" for s in SPLITS]] > 0).all().all()


def test_data_size_small() -> None:
    size = sum(p.stat().st_size for p in Path(data_dir()).rglob("*") if p.is_file())
    assert size < 100 * 2**20, f"data/ is {size / 2**20:.1f} MiB"


def test_unknown_domain_error_names_it() -> None:
    with pytest.raises(KeyError, match="no-such-domain"):
        load_domain("no-such-domain")
