"""The ``kbench`` command line: one module per command (``kbench.commands``)."""

from __future__ import annotations

import sys

import click

import kbench
from kbench.commands.bench import bench_command
from kbench.commands.compare import compare_command
from kbench.commands.env import env_command
from kbench.commands.list import list_command
from kbench.commands.new_plugin import new_plugin_command
from kbench.commands.report import report_command
from kbench.commands.run import run_command
from kbench.commands.suite import suite_command
from kbench.commands.tune import tune_command
from kbench.console import make_console
from kbench.errors import KbenchError

err_console = make_console(stderr=True)


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


for command in (run_command, bench_command, tune_command, compare_command, report_command, list_command,
                env_command, new_plugin_command, suite_command):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kbench")


if __name__ == "__main__":
    main()
