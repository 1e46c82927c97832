"""Speedup bar charts of a comparison (matplotlib, written to a PNG without a display)."""

from __future__ import annotations

import math
from pathlib import Path

from kbench.errors import KbenchError
from kbench.results.compare import Comparison


def plot_speedups(comparison: Comparison, path: str | Path) -> Path:
    """One horizontal bar per compared row (op, backend, case), a line at 1x; red bars regress."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KbenchError("--plot needs matplotlib.", "pip install 'kbench[plots]'") from None
    rows = comparison.rows[comparison.rows["speedup"].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    labels = [f"{r.op} [{r.backend}] {r.case} {r.dtype}" for r in rows.itertuples()]
    height = max(2.5, 0.28 * len(labels) + 1.2)
    figure, axes = plt.subplots(figsize=(10, height))
    colors = ["tab:red" if r.regression else ("tab:green" if r.speedup >= 1 else "tab:orange") for r in rows.itertuples()]
    axes.barh(range(len(labels)), rows["speedup"].tolist(), color=colors)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel(f"speedup (base / new {comparison.metric})")
    axes.set_title(f"{comparison.new_label} vs {comparison.base_label}", fontsize=9)
    if not labels:
        axes.text(0.5, 0.5, "no rows could be joined", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
