"""The machine a run happened on, and the measured ceilings (not a datasheet's) of its timings."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path

import torch

import kbench
from kbench.bench.timing import measure

COPY_BYTES = 2 * 2**30
MATMUL_SIZE = 8192


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(root: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True,
                          env=env).stdout.strip()


def _worktree_tree(root: Path) -> str:
    """The git tree id of the checkout's files as they are (ignored ones left out), so a record
    made from uncommitted files still names what ran; the checkout's own index is untouched.
    ``results/`` is taken as committed: records written while a suite runs change no tree."""
    with tempfile.TemporaryDirectory() as scratch:
        git_dir = Path(_git(root, "rev-parse", "--absolute-git-dir"))
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index"),
               "GIT_OBJECT_DIRECTORY": str(Path(scratch) / "objects"),
               "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(git_dir / "objects")}
        (Path(scratch) / "objects").mkdir()
        _git(root, "add", "--all", ":/", env=env)
        _git(root, "reset", "-q", "HEAD", "--", ":/results", env=env)
        return _git(root, "write-tree", env=env)


def _git_commit(root: Path | None = None) -> tuple[str | None, bool | None, str | None]:
    """(commit, dirty, tree) of the checkout kbench is imported from (or ``root``); Nones outside git."""
    root = root or Path(kbench.__file__).resolve().parent.parent
    try:
        commit = _git(root, "rev-parse", "HEAD")
        tree = _worktree_tree(root)
        dirty = tree != _git(root, "rev-parse", "HEAD^{tree}")
    except (OSError, subprocess.SubprocessError):
        return None, None, None
    return commit or None, dirty, tree or None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def environment(device: str | torch.device | None = None) -> dict:
    """Versions and hardware of this process, as flat JSON-able key -> value pairs."""
    commit, dirty, tree = _git_commit()
    env = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "transformers": _package_version("transformers"),
        "flash_attn": _package_version("flash_attn") or _package_version("flash-attn"),
        "kbench": kbench.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "git_tree": tree,
        "cuda": torch.version.cuda,
        "gpu": None,
        "gpu_count": 0,
        "gpu_capability": None,
        "gpu_memory_bytes": None,
        "gpu_sm_count": None,
        "gpu_l2_bytes": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
        props = torch.cuda.get_device_properties(index or 0)
        env.update({
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_bytes": props.total_memory,
            "gpu_sm_count": props.multi_processor_count,
            "gpu_l2_bytes": getattr(props, "L2_cache_size", None),
            "driver": _nvidia_driver(),
        })
    return env


def measure_ceilings(device: str | torch.device) -> dict:
    """Measured ``copy_gbps`` (read + write bytes of a device copy) and ``matmul_bf16_tflops``
    (an 8192^3 product) of ``device``; None on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"copy_gbps": None, "matmul_bf16_tflops": None, "note": "ceilings are measured on CUDA devices only"}
    copy = _time_copy(device)
    matmul = _time_matmul(device)
    torch.cuda.empty_cache()
    return {
        "copy_gbps": 2 * COPY_BYTES / (copy.median_us * 1e-6) / 1e9,
        "matmul_bf16_tflops": 2 * MATMUL_SIZE**3 / (matmul.median_us * 1e-6) / 1e12,
        "note": f"copy: {COPY_BYTES // 2**30} GiB device-to-device, read+write; matmul: bf16 {MATMUL_SIZE}^3",
    }


def _time_copy(device: torch.device):
    src = torch.empty(COPY_BYTES, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device=device, warmup_ms=50, rep_ms=200, flush_l2=False)


def _time_matmul(device: torch.device):
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=torch.bfloat16, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=torch.bfloat16, device=device)
    return measure(lambda: a @ b, device=device, warmup_ms=100, rep_ms=300, flush_l2=False)
