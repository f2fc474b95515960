"""Bundled real-domain corpora: a small reader API over ``data/``.

Each domain is a compressed JSON file with three disjoint splits of documents (text):
``probe`` (positions for the signature), ``adapt`` (ground-truth adaptation) and ``eval``
(held-out loss). The manifest lists every domain with its source package, licence and token
counts. Building the corpora (``python -m fishersketch_core.data build``) is separate and not
needed to read them.

Examples
--------
>>> from fishersketch_core.data import list_domains, load_domain
>>> df = list_domains()                      # doctest: +SKIP
>>> splits = load_domain(df.domain[0])       # doctest: +SKIP
>>> splits["probe"][0][:40]                  # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd

__all__ = ["SPLITS", "data_dir", "domain_path", "list_domains", "load_domain"]

#: The split names, in the order the builder fills them is eval, probe, adapt.
SPLITS = ("probe", "adapt", "eval")
#: Environment variable that points the reader at another data folder.
ENV_VAR = "FISHERSKETCH_DATA"


def data_dir() -> Path:
    """Return the data folder: ``$FISHERSKETCH_DATA`` if set, else the repository's ``data/``.

    Returns
    -------
    pathlib.Path
        Folder holding ``manifest.csv`` and ``domains/``.
    """
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def list_domains() -> pd.DataFrame:
    """Return the manifest: one row per domain.

    Returns
    -------
    pandas.DataFrame
        Columns include ``domain``, ``group``, ``description``, ``source_package``,
        ``source_version``, ``licence``, ``n_docs_<split>``, ``tokens_<split>``, ``sha256``.

    Raises
    ------
    FileNotFoundError
        If ``manifest.csv`` is missing from :func:`data_dir`.
    """
    path = data_dir() / "manifest.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"no manifest at {path}; set ${ENV_VAR} to the data folder or build it with "
            "`python -m fishersketch_core.data build`")
    return pd.read_csv(path, dtype={"source_version": str})


def domain_path(domain_id: str) -> Path:
    """Return the file of one domain (``data/domains/<domain_id>.json.gz``)."""
    return data_dir() / "domains" / f"{domain_id}.json.gz"


def load_domain(domain_id: str) -> dict[str, list[str]]:
    """Return the three splits of one domain.

    Parameters
    ----------
    domain_id : str
        A value of the manifest's ``domain`` column, e.g. ``"smiles-nitro"``.

    Returns
    -------
    dict
        ``{"probe": [...], "adapt": [...], "eval": [...]}``, lists of documents (text).

    Raises
    ------
    KeyError
        If no such domain was built; the message lists a few known ids.
    """
    path = domain_path(domain_id)
    if not path.exists():
        known = sorted(p.name.removesuffix(".json.gz") for p in path.parent.glob("*.json.gz"))
        raise KeyError(f"unknown domain {domain_id!r} (no {path}); known ids include {known[:8]} "
                       f"({len(known)} in all, see list_domains())")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        obj = json.load(fh)
    return {s: list(obj[s]) for s in SPLITS}
