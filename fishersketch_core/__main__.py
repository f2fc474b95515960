"""``python -m fishersketch_core ...``: see :mod:`fishersketch_core.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
