"""``kbench env``: the environment a run record stores, and the device's ceilings."""

from __future__ import annotations

import json

import click
import torch
from rich.table import Table

from kbench.console import make_console
from kbench.errors import KbenchError


@click.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--device", default=None, help="Device whose ceilings to measure (default: cuda if present).")
@click.option("--no-ceilings", is_flag=True, help="Skip measuring copy bandwidth and matmul throughput.")
def env_command(as_json: bool, device: str | None, no_ceilings: bool):
    """The environment a run record stores, and the device's measured ceilings on CUDA."""

    from kbench.env import environment, measure_ceilings

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KbenchError(f"--device {device}, but no CUDA device is available here.", "Use --device cpu.")
    info = {"env": environment(device)}
    if not no_ceilings:
        info["ceilings"] = measure_ceilings(device)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title="kbench environment", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in info["env"].items():
        table.add_row(key, "-" if value is None else str(value))
    for key, value in info.get("ceilings", {}).items():
        shown = f"{value:.1f}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        table.add_row(key, shown)
    make_console().print(table)
