"""Run records: write (atomically), load into pandas, compare, report and plot.

``write_record(record, out_dir)`` writes one run; ``load(paths_or_ids=None)`` reads runs into
a DataFrame (one row per measurement); ``compare_runs`` / ``compare_backends`` join them.
"""

from kbench.results.compare import Comparison, compare_backends, compare_runs, geomean
from kbench.results.load import load, record_paths
from kbench.results.record import SCHEMA_VERSION, make_row, new_run_id, write_record

__all__ = [
    "SCHEMA_VERSION", "Comparison", "compare_backends", "compare_runs", "geomean", "load", "make_row",
    "new_run_id", "record_paths", "write_record",
]
