import json

from click.testing import CliRunner

import kbench
from kbench.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and kbench.__version__ in result.output


def test_list_json_shows_every_op_with_reference_and_reasons():
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = data["implementations"]
    ops = {row["op"] for row in rows}
    assert {"rmsnorm", "add_rmsnorm"} <= ops
    for op in ops:
        assert any(r["op"] == op and r["backend"] == "reference" and r["available"] for r in rows)
    for row in rows:
        assert row["available"] or row["reason"], row


def test_list_unknown_op_exits_2_with_suggestion():
    result = CliRunner().invoke(cli, ["list", "--op", "rmsnrom"])
    assert result.exit_code == 2
    assert "Did you mean 'rmsnorm'" in result.output
