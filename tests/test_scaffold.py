"""`kbench new-plugin`: the generated package installs, registers its backend, and its tests pass."""

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from kbench.cli import cli
from kbench.commands.new_plugin import new_plugin, plugin_names
from kbench.testing.environment import PluginEnvironment


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """`kbench new-plugin scaffolded` installed editable into a throw-away venv."""
    root = tmp_path_factory.mktemp("scaffold")
    result = CliRunner().invoke(cli, ["new-plugin", "scaffolded", "--dir", str(root / "kbench-scaffolded")])
    assert result.exit_code == 0, result.output
    env = PluginEnvironment.create(root / "venv")
    env.pip_install_editable(root / "kbench-scaffolded")
    return env, root / "kbench-scaffolded"


def test_generated_package_layout(installed_plugin):
    _, plugin = installed_plugin
    files = sorted(p.relative_to(plugin).as_posix() for p in plugin.rglob("*") if p.is_file() and "egg-info" not in str(p))
    assert files == [
        "README.md", "pyproject.toml", "src/kbench_scaffolded/__init__.py", "src/kbench_scaffolded/plugin.py",
        "src/kbench_scaffolded/rmsnorm.py", "tests/test_scaffolded.py",
    ]
    assert 'scaffolded = "kbench_scaffolded.plugin"' in (plugin / "pyproject.toml").read_text()


def test_generated_plugin_is_listed_once_installed(installed_plugin):
    env, plugin = installed_plugin
    result = env.run("kbench list --json --op rmsnorm", cwd=plugin)
    assert result.returncode == 0, result.stdout
    assert '"backend": "scaffolded"' in result.stdout


def test_generated_tests_pass_as_generated(installed_plugin):
    env, plugin = installed_plugin
    result = env.run("pytest -q -p no:cacheprovider", cwd=plugin)
    assert result.returncode == 0, result.stdout
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_generated_plugin_passes_the_conformance_suite(installed_plugin):
    env, plugin = installed_plugin
    result = env.run("pytest -q -p no:cacheprovider --kbench-backend scaffolded -m kbench_conformance", cwd=plugin)
    assert result.returncode == 0, result.stdout


def test_generated_code_is_lint_clean_with_ruffs_defaults(tmp_path):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    plugin = new_plugin("linted", tmp_path / "kbench-linted")
    # From the package's folder, as its author runs it: kbench is third-party there.
    result = subprocess.run([ruff, "check", "--isolated", "--select", "E,F,W,I,B,UP", "."], cwd=plugin,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_new_plugin_refuses_to_overwrite(tmp_path):
    target = tmp_path / "kbench-mine"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["new-plugin", "mine", "--dir", str(target)])
    assert result.exit_code == 2
    assert "already exists" in result.output and "never overwrites" in result.output
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_new_plugin_writes_into_an_empty_directory(tmp_path):
    assert new_plugin("empty-ok", tmp_path) == tmp_path
    assert (tmp_path / "src" / "kbench_empty_ok" / "plugin.py").is_file()


@pytest.mark.parametrize("name", ["Upper", "under_score", "9lives", "trailing-", "a b"])
def test_bad_backend_names_are_refused(name, tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", name, "--dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a backend name" in result.output
    assert not (tmp_path / "x").exists()


def test_a_registered_backend_name_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["new-plugin", "reference", "--dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and "already registered" in result.output


def test_names_filled_into_the_templates():
    assert plugin_names("my-triton") == {
        "name": "my-triton", "ident": "my_triton", "package": "kbench_my_triton", "dist": "kbench-my-triton",
    }
