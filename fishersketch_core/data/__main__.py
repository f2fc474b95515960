"""``python -m fishersketch_core.data build|deps|list`` — build or inspect the bundled corpora."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import data_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m fishersketch_core.data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or resume) data/domains, manifest.csv, LICENSES.md, README.md")
    b.add_argument("--out", type=Path, default=None, help="target folder (default: the repository's data/)")
    b.add_argument("--only", action="append", default=[], metavar="GROUP",
                   help="build only this group (repeatable)")
    b.add_argument("--domain", action="append", default=[], metavar="ID", help="build only this domain (repeatable)")
    b.add_argument("--force", action="store_true", help="rebuild domains that already exist")
    b.add_argument("--install", action="store_true", help="run the apt/pip install commands first")
    sub.add_parser("deps", help="print the apt/pip commands that install what the builder reads")
    sub.add_parser("list", help="print the manifest")
    a = p.parse_args(argv)
    if a.cmd == "deps":
        from .build import install_commands
        print("\n".join(install_commands()))
    elif a.cmd == "list":
        from . import list_domains
        print(list_domains().to_string(max_colwidth=40))
    else:
        from .build import build
        df = build(a.out or data_dir(), only=a.only, force=a.force, domains=a.domain, install=a.install)
        return 1 if df.attrs.get("failed") else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
