"""The signature store: a DuckDB file of task signatures, ranked sources in SQL, import/export.

Main entry points::

    SignatureStore(path, read_only=False)      # open/create; add, replace, delete, get, list
    rank_sources(store, target, k=10, by="joint")  # top-k sources with ρ_F, ρ_h, ρ_e, κ and SEs
    import_file(store, path) / export_file(store, path)   # Parquet, .npz, other stores
    register_cli(subparsers)                   # `rank`, `list`, `import`, `export` subcommands
"""
from .cli import register_cli
from .core import SignatureStore, WriteReport, check_single_compat_group
from .errors import (AmbiguousTaskError, ConflictError, IncompatibleSignatures, InvalidSignatureError,
                     SchemaVersionError, StoreError, StoreLockedError, TaskNotFoundError)
from .io import (export_file, export_npz, export_npz_dir, export_parquet, import_file, import_npz,
                 import_parquet, read_npz_record, read_parquet_records, records_from_store)
from .ranking import BY, rank_sources, reference_ranking
from .records import TaskRecord
from .schema import CURRENT_VERSION

__all__ = [
    "AmbiguousTaskError", "BY", "CURRENT_VERSION", "ConflictError", "IncompatibleSignatures",
    "InvalidSignatureError", "SchemaVersionError", "SignatureStore", "StoreError", "StoreLockedError",
    "TaskNotFoundError", "TaskRecord", "WriteReport", "check_single_compat_group", "export_file",
    "export_npz", "export_npz_dir", "export_parquet", "import_file", "import_npz", "import_parquet",
    "rank_sources", "read_npz_record", "read_parquet_records", "records_from_store", "reference_ranking",
    "register_cli",
]
