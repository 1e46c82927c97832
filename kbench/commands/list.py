"""``kbench list``: every op, its backends, and why a backend cannot run here."""

from __future__ import annotations

import json

import click
import torch
from rich.markup import escape
from rich.table import Table

from kbench.console import make_console


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--op", "op_filter", default=None, help="Only this op.")
def list_command(as_json: bool, op_filter: str | None):
    """Every op, its backends, and why a backend cannot run here (CUDA if visible, else the CPU)."""
    from kbench.plugins import get_registry

    registry = get_registry()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ops = [registry.op(op_filter)] if op_filter else list(registry.ops.values())
    rows = []
    for op in ops:
        for backend in registry.backends(op.name):
            impl = registry.implementations[(op.name, backend)]
            reason = _why_not_here(impl, op, device)
            rows.append({
                "family": op.family, "op": op.name, "backend": backend, "plugin": impl.plugin,
                "available": reason is None, "reason": reason or "", "device": device,
                "cuda_graphs": impl.cuda_graphs, "version": impl.version,
            })
    if as_json:
        click.echo(json.dumps({"implementations": rows, "plugin_errors": registry.plugin_errors,
                               "plugins": registry.plugins}, indent=2))
        return
    table = Table(title="kbench ops and backends")
    for column in ("family", "op", "backend", "plugin", "status"):
        table.add_column(column)
    for row in rows:
        status = "[green]available[/]" if row["available"] else f"[yellow]unavailable:[/] {escape(row['reason'])}"
        table.add_row(row["family"], row["op"], row["backend"], row["plugin"], status)
    console = make_console()
    console.print(table)
    for name, error in registry.plugin_errors.items():
        console.print(f"[red]plugin {escape(repr(name))} failed to load:[/] {escape(error)}", highlight=False)


def _why_not_here(impl, op, device: str) -> str | None:
    """None if ``impl`` runs the op's first test case on ``device`` in some dtype, else why not."""
    reason = impl.unavailable_reason()
    if reason or not op.test_cases:
        return reason
    reasons = [impl.reason(op.test_cases[0], dtype, device) for dtype in op.dtypes]
    return None if None in reasons else reasons[0]
