"""The ``kbench`` command line: ``run``, ``compare``, ``list``, ``bench``, ``env``, ``new-plugin``.

Every user mistake is a ``KbenchError``: printed as one paragraph, exit status 2.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

import kbench
from kbench.errors import KbenchError

console = Console()
err_console = Console(stderr=True)


class KbenchGroup(click.Group):
    """Turns KbenchError into a clean message and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KbenchError as error:
            err_console.print(f"[bold red]error:[/] {error.message}" + (f"\n  {error.fix}" if error.fix else ""),
                              highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=KbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kbench.__version__, prog_name="kbench")
def cli():
    """kbench: is my LLaMA kernel correct, how fast is it, and what does it change end to end?"""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--op", "op_filter", default=None, help="Only this op.")
def list_command(as_json: bool, op_filter: str | None):
    """Every op, its backends, and why a backend cannot run here."""
    from kbench.plugins import get_registry

    registry = get_registry()
    ops = [registry.op(op_filter)] if op_filter else list(registry.ops.values())
    rows = []
    for op in ops:
        for backend in registry.backends(op.name):
            impl = registry.implementations[(op.name, backend)]
            reason = impl.unavailable_reason()
            rows.append({
                "family": op.family, "op": op.name, "backend": backend, "plugin": impl.plugin,
                "available": reason is None, "reason": reason or "", "cuda_graphs": impl.cuda_graphs,
                "version": impl.version,
            })
    if as_json:
        click.echo(json.dumps({"implementations": rows, "plugin_errors": registry.plugin_errors,
                               "plugins": registry.plugins}, indent=2))
        return
    table = Table(title="kbench ops and backends")
    for column in ("family", "op", "backend", "plugin", "status"):
        table.add_column(column)
    for row in rows:
        status = "[green]available[/]" if row["available"] else f"[yellow]unavailable:[/] {row['reason']}"
        table.add_row(row["family"], row["op"], row["backend"], row["plugin"], status)
    console.print(table)
    for name, error in registry.plugin_errors.items():
        console.print(f"[red]plugin {name!r} failed to load:[/] {error}", highlight=False)


from kbench.bench_command import bench_command  # noqa: E402
from kbench.scaffold import new_plugin_command  # noqa: E402

cli.add_command(bench_command)
cli.add_command(new_plugin_command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kbench")


if __name__ == "__main__":
    main()
