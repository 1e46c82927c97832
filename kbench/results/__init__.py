"""Run records: write (atomically), load into pandas, compare, report and plot.

``build_record(...)`` assembles one run from its rows (``OpRow``, ``CheckRow``, ``PrefillRow``,
``DecodeRow``); ``write_record(record, out_dir)`` writes it; ``load(paths_or_ids=None)`` reads
runs into a DataFrame (one row per measurement); ``compare_runs`` / ``compare_backends`` join them.
"""

from kbench.results.compare import Comparison, compare_backends, compare_runs, geomean
from kbench.results.load import load, record_paths
from kbench.results.record import (
    SCHEMA_VERSION,
    build_record,
    implementation_provenance,
    make_row,
    new_run_id,
    write_record,
)
from kbench.results.rows import CheckRow, DecodeRow, OpRow, PrefillRow, Row, row_dict

__all__ = [
    "SCHEMA_VERSION", "CheckRow", "Comparison", "DecodeRow", "OpRow", "PrefillRow", "Row", "build_record",
    "compare_backends", "compare_runs", "geomean", "implementation_provenance", "load", "make_row", "new_run_id",
    "record_paths", "row_dict", "write_record",
]
