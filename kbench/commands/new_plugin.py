"""``kbench new-plugin NAME``: ``kbench/templates/plugin/`` filled in as a backend plugin."""

from __future__ import annotations

import re
from pathlib import Path

import click

from kbench.errors import KbenchError

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "plugin"
BACKEND_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$")


def plugin_names(name: str) -> dict[str, str]:
    """The names filled into the templates for backend ``name``; KbenchError for a bad name."""
    if not BACKEND_NAME.match(name):
        raise KbenchError(
            f"{name!r} is not a backend name.",
            "Use lowercase letters, digits and dashes, starting with a letter (e.g. 'mykernels', 'my-triton').",
        )
    ident = name.replace("-", "_")
    return {"name": name, "ident": ident, "package": f"kbench_{ident}", "dist": f"kbench-{name}"}


def render(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def planned_files(names: dict[str, str]) -> dict[Path, str]:
    files = {}
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        relative = template.relative_to(TEMPLATES).as_posix().removesuffix(".tmpl")
        relative = relative.replace("__package__", names["package"]).replace("__ident__", names["ident"])
        files[Path(relative)] = render(template.read_text(), names)
    return files


def new_plugin(name: str, directory: Path | None = None) -> Path:
    """Write the plugin into ``directory`` (default ``./kbench-NAME``); KbenchError, nothing
    written, if it is not empty or an installed plugin already registers backend ``name``."""
    names = plugin_names(name)
    target = Path(directory) if directory is not None else Path.cwd() / names["dist"]
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise KbenchError(
            f"{target} already exists; new-plugin never overwrites files.",
            "Choose another NAME, pass --dir to an empty or new directory, or remove the existing one.",
        )
    _refuse_taken_backend(name)
    for relative, content in planned_files(names).items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return target


def _refuse_taken_backend(name: str) -> None:
    from kbench.plugins import get_registry

    registry = get_registry()
    if name in registry.backends():
        plugin = next(impl.plugin for (_, backend), impl in registry.implementations.items() if backend == name)
        raise KbenchError(
            f"Backend {name!r} is already registered (by plugin {plugin!r}); two plugins cannot share a backend name.",
            "Choose another NAME.",
        )


@click.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the package (default: ./kbench-NAME).")
def new_plugin_command(name: str, directory: Path | None):
    """Write a pip-installable backend plugin NAME: entry point, one op, tests that pass."""
    target = new_plugin(name, directory)
    names = plugin_names(name)
    click.echo(f"Wrote backend plugin {name!r} to {target}:")
    for relative in planned_files(names):
        click.echo(f"  {relative.as_posix()}")
    click.echo("\nNext:")
    click.echo(f"  cd {target}")
    click.echo("  pip install -e .")
    click.echo(f"  pytest                              # its tests, incl. kbench's conformance suite for {name!r}")
    click.echo(f"  kbench bench rmsnorm --backend {name} --vs reference")
