"""The ``kbench`` command line: one module per command (``kbench.commands``), each ending with one
of the exit statuses every command shares (``kbench.errors.EXIT_STATUSES``)."""

from __future__ import annotations

import os
import sys
import traceback

import click
from rich.markup import escape

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
from kbench.console import WIDTH_ENV, make_console
from kbench.errors import EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED, EXIT_STATUSES, KbenchError
from kbench.preflight import is_out_of_memory, out_of_memory_error

BUG_REPORT = ("This is a bug in kbench, not a mistake of yours. Please report it with the command and the "
              "traceback above (`kbench env` gives the versions).")


class KbenchGroup(click.Group):
    """Maps what escapes a command onto the exit statuses of ``EXIT_STATUSES``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KbenchError as error:
            report_mistake(error)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("\ninterrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            if is_out_of_memory(error):  # shapes too large for this machine
                report_mistake(out_of_memory_error(error))
                sys.exit(EXIT_BAD_INPUT)
            traceback.print_exc()
            click.echo(f"\ninternal error: {BUG_REPORT}", err=True)
            sys.exit(EXIT_BUG)


def report_mistake(error: KbenchError) -> None:
    """The one paragraph a user mistake gets: what was wrong, then the fix."""
    text = f"[bold red]error:[/] {escape(error.message)}" + (f"\n  {escape(error.fix)}" if error.fix else "")
    make_console(stderr=True).print(text, highlight=False, soft_wrap=True)


def _help_epilog() -> str:
    lines = ["Exit status:"] + [f"{status:>5}  {text}" for status, text in EXIT_STATUSES.items()]
    return "\n\b\n" + "\n".join(lines)


def _set_width(ctx, param, width):
    if width is not None:
        os.environ[WIDTH_ENV] = str(width)  # also reaches the fresh processes kbench suite starts
    return width


@click.group(cls=KbenchGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_help_epilog())
@click.version_option(kbench.__version__, prog_name="kbench")
@click.option("--width", type=click.IntRange(min=40), default=None, expose_value=False, is_eager=True,
              callback=_set_width, metavar="COLUMNS",
              help=f"Draw tables this many columns wide (default: the terminal's; off a terminal the "
                   f"tables' own width; also {WIDTH_ENV}).")
def cli():
    """kbench: is my LLaMA kernel correct, how fast is it, and what does it change end to end?"""


for command in (run_command, bench_command, tune_command, compare_command, report_command, list_command,
                env_command, new_plugin_command, suite_command):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kbench")


if __name__ == "__main__":
    main()
