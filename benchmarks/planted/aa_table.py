"""The table of benchmarks/trust-h100.yaml: A/A verdicts across the two runs of each sweep,
and the planted slowdown's verdicts within each run (kernel time: graph replay).

    python benchmarks/planted/aa_table.py results/trust-h100
"""

import sys
from collections import Counter
from pathlib import Path

from kbench.results import compare_backends, compare_runs, load

METRIC = "kernel_us"


def main(folder: str) -> None:
    frame = load(sorted(Path(folder).glob("*.json")))
    runs = frame.drop_duplicates("run_id").sort_values("run_id")
    by_op = {}
    for row in runs.itertuples():
        by_op.setdefault(frame[frame["run_id"] == row.run_id]["op"].iloc[0], []).append(row.run_id)
    aa, planted = Counter(), Counter()
    print("| pair | op | backend | case | base µs | new µs | verdict | 95% interval |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for op, (first, second, *_) in by_op.items():
        for row in compare_runs(frame, first, second, metric=METRIC).rows.itertuples():
            aa[row.verdict] += 1
            print(f"| A/A | {op} | {row.backend} | {row.case} | {row.base:.2f} | {row.new:.2f} | {row.verdict} | "
                  f"{100 * (row.ratio_low - 1):+.1f}..{100 * (row.ratio_high - 1):+.1f}% |")
        for run in (first, second):
            part = frame[(frame["run_id"] == run) & frame["backend"].isin(["aa", "slow5"])]
            for row in compare_backends(part, run, "aa", metric=METRIC).rows.itertuples():
                planted[row.verdict] += 1
                print(f"| planted 5% | {op} | slow5 vs aa | {row.case} | {row.base:.2f} | {row.new:.2f} | "
                      f"{row.verdict} | {100 * (row.ratio_low - 1):+.1f}..{100 * (row.ratio_high - 1):+.1f}% |")
    print(f"\nA/A verdicts: {dict(aa)} (no 'slower' allowed)")
    print(f"planted 5% verdicts: {dict(planted)} (at least 19 of 20 'slower')")


if __name__ == "__main__":
    main(sys.argv[1])
