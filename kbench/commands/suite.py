"""``kbench suite FILE``: a YAML list of ``kbench run``, ``bench`` and ``tune`` commands, all checked
before any runs, each run in a fresh process so GPU memory and compile caches do not carry over."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kbench.console import make_console
from kbench.errors import EXIT_FAILED, KbenchError, did_you_mean
from kbench.preflight import check_out_dir, check_out_file, write_text_file
from kbench.results.figures import _markdown_table, marker_spans, update_readme
from kbench.yaml_reader import key_lines

SUITE_KEYS = ("name", "description", "out", "runs")
ENTRY_KEYS = ("name", "command", "html")
SUBCOMMANDS = ("run", "bench", "tune")
DEFAULT_OUT = "results"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SUMMARY_HEADER = ("entry", "exit status", "record", "status", "wall s")


@dataclass(frozen=True)
class Entry:
    """One command of a suite: ``args`` follow ``kbench`` (``('run', 'SPEC', ...)``)."""

    name: str
    args: tuple[str, ...]
    html: Path | None = None  # the page ``kbench report`` makes of the entry's record

    @property
    def command(self) -> str:
        return shlex.join(("kbench", *self.args))


@dataclass(frozen=True)
class Suite:
    path: Path
    name: str
    description: str
    out: Path
    entries: tuple[Entry, ...]

    @property
    def summary_path(self) -> Path:
        return self.out / f"{self.name}-summary.md"


@dataclass(frozen=True)
class Outcome:

    entry: Entry
    exit_status: int
    record: Path | None
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.exit_status == 0


# -- reading the suite -------------------------------------------------------------------------

class _SuiteReader:
    """The suite file's text and key lines; ``error(key, ...)`` names file:line and key."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            suites = sorted(str(p) for p in Path("benchmarks").glob("*.yaml"))
            hint = f" Suites here: {', '.join(suites)}." if suites else ""
            raise KbenchError(f"Suite file {str(path)!r} does not exist.", f"Pass the path of a suite YAML.{hint}")
        text = path.read_text()
        try:
            self.data = yaml.safe_load(text)
            self.lines = key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error)
            raise KbenchError(f"{path}{line}: invalid YAML: {problem}.",
                              "Fix the syntax at that line (indentation, a missing ':' or an unclosed quote).") from None

    def where(self, key: str) -> str:
        for end in range(len(key), 0, -1):  # the nearest enclosing key that has a line
            if key[:end] in self.lines and (end == len(key) or key[end] in ".["):
                return f"{self.path}:{self.lines[key[:end]]}: {key}"
        return f"{self.path}: {key}" if key else str(self.path)

    def error(self, key: str, message: str, fix: str) -> KbenchError:
        return KbenchError(f"{self.where(key)}: {message}", fix)

    def mapping(self, value: Any, key: str, allowed: Sequence[str], example: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {type(value).__name__}.", f"Write it as {example}.")
        for name in value:
            if str(name) not in allowed:
                hint = did_you_mean(str(name), allowed)
                raise self.error(f"{key}.{name}" if key else str(name), "unknown key.",
                                 f"{hint}Keys allowed here: {', '.join(allowed)}.")
        return value

    def text(self, section: dict, name: str, key: str, required: bool = True) -> str | None:
        value = section.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            got = "nothing" if value is None else f"{type(value).__name__} {value!r}"
            raise self.error(key, f"must be a non-empty string, got {got}.", f"Write e.g. {name}: {_EXAMPLES[name]}.")
        return value.strip()

    def name(self, section: dict, key: str) -> str:
        value = self.text(section, "name", key)
        if not NAME.fullmatch(value):
            raise self.error(key, f"{value!r} is not a usable name.",
                             "Use letters, digits, '.', '_' and '-' (it names files and README markers).")
        return value


_EXAMPLES = {"name": "llama2-7b-mix", "description": "the figures README.md quotes", "out": "results/examples",
             "command": "kbench run model_specs/tiny-llama.yaml --batch 1,2", "html": "results/examples/tune.html"}


def load_suite(path: str | Path, out: str | Path | None = None) -> Suite:
    """Read and check a suite file, every entry's command line included; KbenchError on a mistake."""
    reader = _SuiteReader(Path(path))
    data = reader.mapping(reader.data, "", SUITE_KEYS, "name:, description:, out: and runs: at the top level")
    name = reader.name(data, "name")
    description = reader.text(data, "description", "description", required=False) or ""
    folder = out if out is not None else reader.text(data, "out", "out", required=False) or DEFAULT_OUT
    if out is not None:
        reader.text(data, "out", "out", required=False)  # checked even where --out overrides it
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise reader.error("runs", "must be a non-empty list of entries.",
                           "Write runs: followed by items '- name: NAME' with 'command: kbench run ...'.")
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(runs):
        key = f"runs[{index}]"
        item = reader.mapping(raw, key, ENTRY_KEYS, "'- name: NAME' with 'command: kbench run ...' under it")
        entry_name = reader.name(item, f"{key}.name")
        if entry_name in seen:
            raise reader.error(f"{key}.name", f"entry name {entry_name!r} is used twice (first at {seen[entry_name]}).",
                               "Give every entry its own name: it names the entry's README marker.")
        seen[entry_name] = reader.where(f"{key}.name").rsplit(": ", 1)[0]
        args = _command_args(reader, item, f"{key}.command")
        html = reader.text(item, "html", f"{key}.html", required=False)
        if html is not None:
            try:
                check_out_file(html, "html:")
            except KbenchError as error:
                raise reader.error(f"{key}.html", error.message, error.fix) from None
        entries.append(Entry(entry_name, args, Path(html) if html else None))
    return Suite(reader.path, name, description, Path(folder), tuple(entries))


def _command_args(reader: _SuiteReader, item: dict, key: str) -> tuple[str, ...]:
    """The words after ``kbench``; checked by the command's own option parser, nothing run."""
    text = reader.text(item, "command", key)
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise reader.error(key, f"cannot be split into words: {error}.", "Close the quote or escape it.") from None
    if len(words) < 2 or words[0] != "kbench" or words[1] not in SUBCOMMANDS:
        raise reader.error(key, f"{text!r} is not a kbench run, bench or tune command.",
                           "A suite entry runs 'kbench run SPEC ...', 'kbench bench OP ...' or 'kbench tune SPEC ...'; "
                           "run anything else outside the suite.")
    _check_options(reader, key, words[1], words[2:])
    return tuple(words[1:])


def _check_options(reader: _SuiteReader, key: str, subcommand: str, args: list[str]) -> None:
    from click.core import ParameterSource

    from kbench.commands.bench import bench_command
    from kbench.commands.run import run_command
    from kbench.commands.tune import tune_command

    command = {"run": run_command, "bench": bench_command, "tune": tune_command}[subcommand]
    try:
        ctx = command.make_context(f"kbench {subcommand}", list(args))
    except click.ClickException as error:
        raise reader.error(key, f"kbench {subcommand}: {error.format_message()}",
                           f"See 'kbench {subcommand} --help'.") from None
    except click.exceptions.Exit:
        raise reader.error(key, "asks for help or the version, not a run.", "Drop --help / --version.") from None
    if ctx.get_parameter_source("out_dir") is ParameterSource.COMMANDLINE:
        raise reader.error(key, "sets --out.", "Drop it: the suite writes every record to its own out: (or --out).")
    if ctx.params.get("no_record"):
        raise reader.error(key, "has --no-record.", "Drop it: the suite needs every entry's record.")


def select_entries(suite: Suite, only: Sequence[str]) -> list[Entry]:
    """The entries named by ``--only`` (all of them when none is named), in the suite's order."""
    names = [name.strip() for text in only for name in text.split(",") if name.strip()]
    known = [entry.name for entry in suite.entries]
    for name in names:
        if name not in known:
            hint = did_you_mean(name, known)
            raise KbenchError(f"--only {name!r}: {suite.path} has no entry of that name.",
                              f"{hint}Entries: {', '.join(known)}.")
    return [entry for entry in suite.entries if not names or entry.name in names]


# -- running the entries -------------------------------------------------------------------------

@contextmanager
def suite_progress(console: Console, total: int) -> Iterator[Callable[[int, str], None]]:
    """Yields ``advance(done, text)``: a rich progress bar on a terminal, else timestamped lines."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not console.is_terminal:
        start = time.perf_counter()
        yield lambda done, text: console.print(f"[{time.perf_counter() - start:6.1f}s] {done}/{total} {text}",
                                               highlight=False, markup=False, soft_wrap=True)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=total)
        yield lambda done, text: progress.update(task, completed=done - 1, description=escape(text))
        progress.update(task, completed=total, description="done")


def run_entry(entry: Entry, out: Path, console: Console) -> Outcome:
    """Run one entry in a fresh Python process, its output streamed to ``console``."""
    before = set(out.glob("*.json")) if out.is_dir() else set()
    argv = [sys.executable, "-m", "kbench.cli", entry.args[0], "--out", str(out), *entry.args[1:]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", str(console.width))}
    start = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        for line in child.stdout:
            console.out(line.rstrip("\n"), highlight=False)
    wall_s = time.perf_counter() - start
    written = sorted(set(out.glob("*.json")) - before, key=lambda p: p.stat().st_mtime) if out.is_dir() else []
    return Outcome(entry, child.returncode, written[-1] if written else None, wall_s)


def run_suite(entries: Sequence[Entry], out: Path, console: Console) -> list[Outcome]:
    outcomes = []
    with suite_progress(console, len(entries)) as advance:
        for number, entry in enumerate(entries, 1):
            advance(number, entry.name)
            console.rule(f"{number}/{len(entries)} {entry.name}: {entry.command}", style="dim")
            outcomes.append(run_entry(entry, out, console))
    return outcomes


# -- the summary -----------------------------------------------------------------------------------

def summary_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, ...]]:
    return [(o.entry.name, str(o.exit_status), str(o.record) if o.record else "-", "PASS" if o.passed else "FAIL",
             f"{o.wall_s:.1f}") for o in outcomes]


def print_summary(suite: Suite, outcomes: Sequence[Outcome], console: Console) -> None:
    table = Table(*SUMMARY_HEADER, title=f"suite {suite.name} ({suite.path})")
    table.columns[2].overflow = "fold"
    for row in summary_rows(outcomes):
        style = "green" if row[3] == "PASS" else "bold red"
        table.add_row(*row[:3], f"[{style}]{row[3]}[/]", row[4])
    console.print(table)


def summary_markdown(suite: Suite, outcomes: Sequence[Outcome]) -> str:
    """The summary of this run; an entry it did not run (``--only``) keeps its row and command
    from the summary already there, so runs of parts of a suite add up to the whole."""
    order = {entry.name: index for index, entry in enumerate(suite.entries)}
    ran = {o.entry.name for o in outcomes}
    earlier = [row for row in _summary_table(suite) if row[0] not in ran and row[0] in order]
    rows = sorted(summary_rows(outcomes) + earlier, key=lambda row: order[row[0]])
    failed = [row[0] for row in rows if row[3] != "PASS"]  # a row kept from an earlier run counts too
    verdict = f"FAIL: {', '.join(failed)}" if failed else f"PASS: all {len(rows)} entries"
    if earlier:
        verdict += f" (rows of {', '.join(row[0] for row in earlier)}: from an earlier run)"
    lines = [f"# suite {suite.name}", "", *([suite.description, ""] if suite.description else []),
             f"`kbench suite {suite.path}`: {verdict}.", "", _markdown_table(SUMMARY_HEADER, rows),
             "", "Commands (each run with `--out` set to the suite's folder):", ""]
    commands = {entry.name: entry.command for entry in suite.entries}
    lines += [f"- {row[0]}: `{commands[row[0]]}`" for row in rows]
    return "\n".join(lines) + "\n"


def _summary_table(suite: Suite) -> list[tuple[str, ...]]:
    """The rows of the summary file already there (none when there is none)."""
    path = suite.summary_path
    if not path.is_file():
        return []
    return [tuple(cells) for cells in map(_table_cells, path.read_text().splitlines())
            if len(cells) == len(SUMMARY_HEADER) and cells[0] not in ("entry", "---")]


def read_summary(suite: Suite) -> dict[str, tuple[str, Path | None]]:
    """entry name -> (PASS or FAIL, record path) from the previous run's summary file."""
    path = suite.summary_path
    if not path.is_file():
        raise KbenchError(f"No summary {path} from an earlier run of {suite.path}.",
                          "Run the suite without --dry-run first (or pass the --out it was run with).")
    return {name: (status, _summary_record(record, path.parent))
            for name, _, record, status, _ in _summary_table(suite)}


def _summary_record(text: str, folder: Path) -> Path | None:
    if text == "-":
        return None
    path = Path(text)
    return path if path.is_file() else folder / path.name


def _table_cells(line: str) -> list[str]:
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        return []
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line[1:-1])]


# -- the command -----------------------------------------------------------------------------------

@click.command("suite")
@click.argument("suite_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the records and the summary (default: the suite's out:).")
@click.option("--dry-run", is_flag=True, help="Check the suite and print its commands; run nothing.")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this entry (repeatable, or NAME,NAME).")
@click.option("--readme", type=click.Path(dir_okay=False), default=None,
              help="Remake the figures between <!-- suite:ENTRY --> markers in this file from the records "
                   "(with --dry-run, also the entries' html: pages).")
def suite_command(suite_path, out_dir, dry_run, only, readme):
    """Run every entry of the suite FILE (a YAML list of kbench run, bench or tune commands).

    Each entry runs in a fresh process; the summary is written to OUT/NAME-summary.md, and an
    entry with html: FILE gets its record's kbench report page there. Exit
    status: 0 if every entry passed, 1 if any failed, 2 for a mistake in FILE (nothing runs).
    """
    console = make_console()
    suite = load_suite(suite_path, out_dir)
    entries = select_entries(suite, only)
    readme_path = Path(readme) if readme else None
    if readme_path is not None:
        if not readme_path.is_file():
            raise KbenchError(f"README {str(readme_path)!r} does not exist.", "Pass the file that holds the markers.")
        marker_spans(readme_path.read_text(), readme_path, [entry.name for entry in entries])
    if dry_run:
        _dry_run(suite, entries, readme_path, console)
        return
    check_out_dir(suite.out, "the suite's out:")
    outcomes = run_suite(entries, suite.out, console)
    suite.out.mkdir(parents=True, exist_ok=True)
    suite.summary_path.write_text(summary_markdown(suite, outcomes))
    print_summary(suite, outcomes, console)
    console.print(f"summary: {suite.summary_path}", highlight=False)
    passed = {o.entry: o.record for o in outcomes if o.passed and o.record}
    write_pages(passed, console)
    if readme_path is not None:
        records = {entry.name: record for entry, record in passed.items()}
        for outcome in outcomes:
            if outcome.entry.name not in records:
                console.print(f"{readme_path}: {outcome.entry.name}'s figure kept as it was (the entry failed)",
                              highlight=False)
        update_readme(readme_path, records, console)
    if not all(outcome.passed for outcome in outcomes):
        sys.exit(EXIT_FAILED)


def write_pages(records: dict[Entry, Path], console: Console) -> None:
    """The ``html:`` page of each entry that has one, from its record (``kbench report``)."""
    from kbench.results.html import report_html
    from kbench.results.load import read_json

    for entry, record in records.items():
        if entry.html is not None:
            write_text_file(entry.html, report_html([read_json(record)]))
            console.print(f"{entry.html}: {entry.name}'s page remade", highlight=False)


def _dry_run(suite: Suite, entries: Sequence[Entry], readme: Path | None, console: Console) -> None:
    """Print what would run; with ``--readme``, remake its figures from the last run's records."""
    for entry in entries:
        console.print(f"{entry.name}: {shlex.join(('kbench', entry.args[0], '--out', str(suite.out), *entry.args[1:]))}",
                      highlight=False, markup=False, soft_wrap=True)
    if readme is None:
        return
    previous = read_summary(suite)
    records = {}
    for entry in entries:
        status, record = previous.get(entry.name, ("absent", None))
        if status != "PASS" or record is None or not record.is_file():
            # as in a run where the entry failed: its figure stays as it was, and we say so
            why = "is not in" if status == "absent" else f"is {status} in" if status != "PASS" else "has no record in"
            console.print(f"{readme}: {entry.name}'s figure kept as it was ({entry.name} {why} "
                          f"{suite.summary_path}; run it: kbench suite {suite.path} --only {entry.name})",
                          highlight=False)
            continue
        records[entry.name] = record
    update_readme(readme, records, console)
    write_pages({entry: records[entry.name] for entry in entries if entry.name in records}, console)
