"""Command-line subcommands of the store: ``rank``, ``list``, ``import``, ``export``.

``register_cli(subparsers)`` adds them to the ``python -m fishersketch_core`` parser; each sets
``func`` (``args -> exit code``). Store errors are printed as one line on stderr with exit code 2.

Examples
--------
    python -m fishersketch_core rank --target smiles/aromatic --store data/demo.duckdb --by joint --k 10
    python -m fishersketch_core list --store data/demo.duckdb --group SMILES --format csv
    python -m fishersketch_core import colleague.parquet --store data/demo.duckdb --on-conflict skip
    python -m fishersketch_core export --store data/demo.duckdb --out smiles.parquet --group SMILES
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

import pandas as pd

FORMATS = ("table", "json", "csv")


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (repeat an option to allow several values)")
    g.add_argument("--group", action="append", help="domain group")
    g.add_argument("--domain", action="append", help="domain")
    g.add_argument("--model", action="append", help="model id or weights hash")
    g.add_argument("--method", action="append", help="feature map (e.g. fast, dense)")
    g.add_argument("--m", type=int, action="append", help="sketch size")
    g.add_argument("--seed", type=int, action="append", help="sketch seed")


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("group", "domain", "model", "method", "m", "seed")
            if getattr(args, k, None) is not None}


def _single(filters: dict[str, Any], key: str) -> Any:
    vals = filters.get(key)
    return vals[0] if vals and len(vals) == 1 else vals


def _emit(df: pd.DataFrame, fmt: str, header: dict[str, Any] | None = None) -> None:
    out = sys.stdout
    if fmt == "json":
        payload = json.loads(df.to_json(orient="records", date_format="iso"))
        out.write(json.dumps({**(header or {}), "rows": payload}, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        df.to_csv(out, index=False)
    else:
        if header:
            out.write(" ".join(f"{k}={v}" for k, v in header.items()) + "\n")
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_rows", 500):
            out.write((df.to_string(index=False, float_format=lambda x: f"{x:.4f}") if len(df) else "(no rows)")
                      + "\n")


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from ..signature import IncompatibleSignatures
        from .errors import StoreError
        try:
            return fn(args)
        except (StoreError, IncompatibleSignatures, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    run.__name__ = fn.__name__
    return run


@_guard
def cmd_rank(args: argparse.Namespace) -> int:
    from .core import SignatureStore
    from .ranking import rank_sources
    f = _filters(args)
    with SignatureStore(args.store, read_only=True) as store:
        df = rank_sources(store, args.target, k=args.k, by=args.by, form=args.form,
                          group=f.get("group"), domain=f.get("domain"), model=_single(f, "model"),
                          method=_single(f, "method"), m=_single(f, "m"), seed=_single(f, "seed"),
                          with_se=not args.no_se)
    header = {k: df.attrs[k] for k in ("target", "by", "form", "n_candidates", "n_incompatible_excluded")}
    _emit(df, args.format, header)
    if df.attrs["n_incompatible_excluded"]:
        print(f"note: {df.attrs['n_incompatible_excluded']} task(s) matching the filters were computed with "
              "another model, method, m or seed and were not ranked", file=sys.stderr)
    return 0


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    from .core import SignatureStore
    with SignatureStore(args.store, read_only=True) as store:
        df = store.list(**_filters(args))
    cols = ["id", "name", "domain", "group", "task_type", "model_id", "method", "m", "seed", "d", "K",
            "n_positions", "delta_u", "delta_u_se", "created_at"]
    if args.format != "table":
        cols += ["model_hash", "corpus_source", "corpus_licence", "count_0", "count_1", "tags"]
        df = df.assign(tags=[json.dumps(t) for t in df["tags"]])
    _emit(df[cols], args.format)
    return 0


@_guard
def cmd_import(args: argparse.Namespace) -> int:
    from .core import SignatureStore
    from .io import import_file
    with SignatureStore(args.store) as store:
        for path in args.files:
            report = import_file(store, path, on_conflict=args.on_conflict)
            print(f"{path}: {report}")
    return 0


@_guard
def cmd_export(args: argparse.Namespace) -> int:
    from .core import SignatureStore
    from .io import export_file
    with SignatureStore(args.store, read_only=True) as store:
        print(export_file(store, args.out, **_filters(args)))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``rank``, ``list``, ``import`` and ``export`` subcommands to ``subparsers``."""
    from .ranking import BY
    p = subparsers.add_parser("rank", help="rank stored sources for a target task",
                              description="Top-k stored sources for a target, ranked in SQL by alignment.")
    p.add_argument("--target", required=True, help="target task name (stored)")
    p.add_argument("--store", required=True, help="signature store (.duckdb), opened read-only")
    p.add_argument("--by", choices=BY, default="joint",
                   help="joint = FisherSketch rho_F, activation = rho_h, error = rho_e, kronecker = rho_h*rho_e")
    p.add_argument("--k", type=int, default=10, help="number of sources (default 10)")
    p.add_argument("--form", choices=("U", "V"), default="U", help="self-norm form (default U)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--no-se", action="store_true", help="skip standard errors")
    _add_filters(p)
    p.set_defaults(func=cmd_rank)

    p = subparsers.add_parser("list", help="list the tasks in a signature store")
    p.add_argument("--store", required=True)
    p.add_argument("--format", choices=FORMATS, default="table")
    _add_filters(p)
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("import", help="merge Parquet / .npz / .duckdb signatures into a store",
                              description="Merge files into a store (created if absent). Identical tasks are "
                              "reported as duplicates; same key with different vectors is a conflict.")
    p.add_argument("files", nargs="+", help=".parquet, .npz, a directory of .npz files, or a .duckdb store")
    p.add_argument("--store", required=True, help="store to write (locked while importing)")
    p.add_argument("--on-conflict", choices=("error", "skip", "replace"), default="error")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("export", help="export signatures to Parquet or .npz")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="x.parquet (one file), x.npz (one task) or a directory")
    _add_filters(p)
    p.set_defaults(func=cmd_export)
