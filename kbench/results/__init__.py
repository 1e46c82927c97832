"""Run records: write (atomically), load into pandas, compare, report and plot."""

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
