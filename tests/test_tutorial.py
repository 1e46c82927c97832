"""docs/writing-a-backend-plugin.md, followed literally: every block on the page is executed.

The page is read top to bottom:

- a fenced block after ``<!-- file: PATH -->`` is written to PATH;
- a ``console`` block is run: each ``$ `` line is a command (in bash, from the folder the
  page has ``cd``-ed into), every other line is text the block's output must contain;
  the commands must succeed unless ``<!-- exit status: any -->`` precedes the block;
- the block after ``<!-- setup -->`` (make a venv, pip install kbench) is done offline:
  a venv over this interpreter's packages, with ``kbench`` and ``pytest`` commands;
- ``pip install`` runs offline (``--no-index --no-build-isolation``: nothing to download,
  kbench and its dependencies are already there) into that venv;
- any other block fails the test: the page may not show code that nothing runs.

Without a GPU the commands run with ``TRITON_INTERPRET=1``, as the page tells its reader.
The venv lives in a temporary folder, so nothing the page installs outlives the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kbench.testing.environment import PIP_INSTALL_OFFLINE, PluginEnvironment

PAGE = Path(__file__).resolve().parent.parent / "docs" / "writing-a-backend-plugin.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


@dataclass
class Block:
    language: str
    body: str
    marker: str | None  # the HTML comment right above the block, if any
    line: int


def page_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        marker = before[before.rfind("<!--") + 4 : -3].strip() if before.endswith("-->") else None
        blocks.append(Block(match.group(1), match.group(2), marker, text.count("\n", 0, match.start()) + 1))
    return blocks


def console_commands(body: str) -> tuple[list[str], list[str]]:
    """(commands, expected output lines) of a console block."""
    commands, expected = [], []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append(line[2:])
        elif line.strip():
            expected.append(line.strip())
    return commands, expected


def offline(command: str, env: PluginEnvironment) -> str:
    return re.sub(r"^pip install\b", f"{env.python} {PIP_INSTALL_OFFLINE}", command)


def test_every_block_of_the_page_is_one_this_test_runs():
    kinds = {(b.language, (b.marker or "").split(":")[0]) for b in page_blocks(PAGE.read_text())}
    assert kinds <= {("console", ""), ("console", "setup"), ("console", "exit status"),
                     ("python", "file"), ("toml", "file"), ("yaml", "file")}, kinds


def test_following_the_tutorial_yields_a_listed_plugin_that_passes_its_checks(tmp_path):
    pytest.importorskip("triton", reason="the tutorial's kernel is a Triton kernel")
    page = tmp_path / "tutorial"
    page.mkdir()
    cwd = page
    env = None
    for block in page_blocks(PAGE.read_text()):
        where = f"{PAGE.name}:{block.line}"
        if block.marker and block.marker.startswith("file:"):
            path = page / block.marker.removeprefix("file:").strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.body)
            continue
        assert block.language == "console", f"{where}: a {block.language or 'plain'} block that nothing runs"
        commands, expected = console_commands(block.body)
        if block.marker == "setup":
            assert any(c.startswith("python -m venv") for c in commands), where
            assert any(c.startswith("pip install kbench") for c in commands), where
            env = PluginEnvironment.create(page / ".venv")
            continue
        assert env is not None, f"{where}: commands before the setup block"
        output = []
        for command in commands:
            if command.startswith("cd "):
                cwd = (cwd / command[3:].strip()).resolve()
                continue
            result = env.run(offline(command, env), cwd=cwd)
            output.append(result.stdout)
            if block.marker != "exit status: any":
                assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n{result.stdout}"
        text = " ".join("".join(output).split())
        for line in expected:
            assert line in text, f"{where}: output lacks {line!r}:\n{''.join(output)}"
    assert env is not None, "the page has no setup block"
    listed = env.run("kbench list --json --op rmsnorm", cwd=cwd)
    assert '"backend": "mykernels"' in listed.stdout and '"available": true' in listed.stdout
    ruff = shutil.which("ruff")
    if ruff:  # the page's code is code to copy: lint-clean under ruff's defaults, kbench as third party
        linted = subprocess.run([ruff, "check", "--isolated", "--select", "E,F,W,I,B,UP", "--exclude", ".venv", "."],
                                cwd=page, capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout


@pytest.mark.parametrize(("body", "commands", "expected"), [
    ("$ kbench list\nmykernels\n\n", ["kbench list"], ["mykernels"]),
    ("$ cd x\n$ pytest -q\n", ["cd x", "pytest -q"], []),
])
def test_console_blocks_split_into_commands_and_expected_output(body, commands, expected):
    assert console_commands(body) == (commands, expected)


def test_blocks_carry_the_marker_above_them():
    text = ("<!-- setup -->\n```console\n$ ls\n```\n\nintro\n\n<!-- file: a/b.py -->\n```python\nx = 1\n```\n"
            "\n```console\n$ ls\n```\n")
    setup, file, plain = page_blocks(text)
    assert (setup.language, setup.marker) == ("console", "setup")
    assert (file.language, file.marker, file.body) == ("python", "file: a/b.py", "x = 1\n")
    assert (plain.language, plain.marker) == ("console", None)
