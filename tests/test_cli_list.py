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


def test_list_shows_reasons_verbatim_and_checks_the_device(monkeypatch):
    import kbench.plugins
    from kbench.ops.norm import RMSNORM
    from kbench.registry import Implementation, Registry

    registry = Registry()
    registry.add_op(RMSNORM, "kbench-core")
    registry.add_implementation(Implementation("rmsnorm", "wheel", RMSNORM.reference, "p",
                                               available=lambda: "install `pkg[cu13]` first"))
    registry.add_implementation(Implementation("rmsnorm", "gpu", RMSNORM.reference, "p",
                                               supports=lambda case, dtype, device: "needs a GPU"))
    monkeypatch.setattr(kbench.plugins, "get_registry", lambda: registry)
    result = CliRunner().invoke(cli, ["list"], env={"COLUMNS": "200"})
    assert "install `pkg[cu13]` first" in result.output
    rows = {r["backend"]: r for r in json.loads(CliRunner().invoke(cli, ["list", "--json"]).output)["implementations"]}
    assert rows["gpu"]["available"] is False and rows["gpu"]["reason"] == "needs a GPU"
    assert rows["reference"]["available"] is True
