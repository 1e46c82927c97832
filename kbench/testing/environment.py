"""A throw-away venv over this interpreter's packages, for testing that a plugin installs and
registers: ``pip install -e`` there changes nothing outside it, offline."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import venv
from dataclasses import dataclass
from pathlib import Path

import torch

LAUNCHERS = {
    "kbench": "from kbench.cli import main\nsys.exit(main())",
    "pytest": "import pytest\nsys.exit(pytest.console_main())",
}
# Offline and fast: the packages a plugin needs are already in the parent environment.
PIP_INSTALL_OFFLINE = "-m pip install --quiet --no-deps --no-build-isolation --no-index"


@dataclass(frozen=True)
class PluginEnvironment:

    path: Path

    @classmethod
    def create(cls, path: str | os.PathLike) -> PluginEnvironment:
        path = Path(path)
        # No pip of its own: the parent's pip (visible through system site-packages) installs here.
        venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=os.name != "nt").create(path)
        env = cls(path)
        if sys.prefix != sys.base_prefix:
            # This interpreter is itself a venv: the new one's "system" packages would be the base
            # interpreter's, not ours, so add our site-packages (and their .pth files) by hand.
            env._link_parent_site_packages()
        for name, body in LAUNCHERS.items():
            launcher = env.bin / name
            launcher.write_text(f"#!{env.python}\nimport sys\n{body}\n")
            launcher.chmod(0o755)
        return env

    def _link_parent_site_packages(self) -> None:
        own = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             text=True, capture_output=True, check=True).stdout.strip()
        lines = [f"import site; site.addsitedir({folder!r})" for folder in site.getsitepackages()]
        Path(own, "_kbench_parent_site.pth").write_text("\n".join(lines) + "\n")

    @property
    def bin(self) -> Path:
        return self.path / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def environ(self) -> dict[str, str]:
        """The parent's environment with this venv activated (and Triton's interpreter if no GPU)."""
        env = dict(os.environ)
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        env.pop("KBENCH_PLUGINS", None)
        if not torch.cuda.is_available():
            env.setdefault("TRITON_INTERPRET", "1")
        return env

    def run(self, command: str, cwd: str | os.PathLike, timeout: float = 300) -> subprocess.CompletedProcess:
        """``command`` in bash with the venv active; stdout and stderr together in ``.stdout``."""
        return subprocess.run(["bash", "-c", command], cwd=cwd, env=self.environ(), text=True, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def pip_install_editable(self, project: str | os.PathLike) -> None:
        result = self.run(f"{self.python} {PIP_INSTALL_OFFLINE} -e {project}", cwd=project)
        if result.returncode:
            raise RuntimeError(f"pip install -e {project} failed:\n{result.stdout}")



def write_plugin_dist(site: str | os.PathLike, name: str, source: str) -> str:
    """Make module ``kbench_fake_<name>`` (``source``) an installed plugin ``name`` in folder
    ``site`` (a ``*.dist-info`` with the entry point); returns the module name."""
    site = Path(site)
    module = f"kbench_fake_{name.replace('-', '_')}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{module}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[kbench]\n{name} = {module}\n")
    return module
