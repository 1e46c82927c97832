"""JIT build of the CUDA kernels in ``csrc/`` with ``torch.utils.cpp_extension``, cached on disk.

The kernels register themselves as the torch op library ``kbench_cuda`` (``torch.ops.kbench_cuda.*``)
when the built library is loaded. The build directory is
``~/.cache/kbench/cuda/<key>`` (``$KBENCH_CUDA_CACHE/<key>`` if set), where ``key`` hashes the
sources, torch's and CUDA's versions, Python's version and the GPU's compute capability: a
second run, in this or another process, loads the library built by the first (a fresh build
takes tens of seconds). ``KBENCH_CUDA_VERBOSE=1`` prints the compiler's output.
``KBENCH_CUDA_DEFINES="NAME=VALUE ..."`` builds a variant with those macros defined (the tuning
knobs the sources mark ``#ifndef KBENCH_...``); they are part of the key, so each variant has its
own build and variants can be timed against each other.

``load()`` never raises: it returns why the kernels cannot run here (no GPU, no nvcc, no ninja,
or the compiler's own error message), or None once the ops are registered.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCE_SUFFIXES = (".cu", ".cuh", ".cpp", ".h")
CACHE_ENV = "KBENCH_CUDA_CACHE"
VERBOSE_ENV = "KBENCH_CUDA_VERBOSE"
DEFINES_ENV = "KBENCH_CUDA_DEFINES"
LIBRARY = "kbench_cuda"
# How much of a failed build's output a reason carries: enough for the first errors.
MAX_REASON_CHARS = 2000


def source_files() -> list[Path]:
    """Every file of csrc/ that takes part in the build, sorted by name."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in SOURCE_SUFFIXES)


def compiled_sources() -> list[Path]:
    """The translation units: the .cu kernels and the torch binding."""
    return [p for p in source_files() if p.suffix in (".cu", ".cpp")]


def defines() -> list[str]:
    """The ``NAME=VALUE`` macros of ``$KBENCH_CUDA_DEFINES``, checked: each knob is a C identifier
    set to an integer, so nothing else reaches the compiler's command line."""
    text = os.environ.get(DEFINES_ENV, "").strip()
    items = text.split() if text else []
    for item in items:
        if not re.fullmatch(r"KBENCH_[A-Z0-9_]+=-?[0-9]+", item):
            raise ValueError(f"{DEFINES_ENV}: {item!r} is not KBENCH_NAME=INTEGER (e.g. KBENCH_SWIGLU_UNROLL=2)")
    return items


def build_key(capability: tuple[int, int], macros: list[str] | None = None) -> str:
    """16 hex digits identifying one build: sources, macros, torch, CUDA, Python and the GPU's arch."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (torch.__version__, torch.version.cuda, f"sm_{capability[0]}{capability[1]}", sys.version,
                 *(macros or [])):
        digest.update(str(part).encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kbench" / "cuda")


def nvcc_flags(capability: tuple[int, int], macros: list[str] | None = None) -> list[str]:
    """Flags for the .cu files: the GPU's own arch only (no PTX for others, no fast math:
    rope needs full-precision sincosf for angles in the thousands of radians)."""
    arch = f"{capability[0]}{capability[1]}"
    return ["-O3", "-std=c++17", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-lineinfo",
            *(f"-D{macro}" for macro in macros or [])]


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def compiler_message(error: BaseException) -> str:
    """The informative part of a failed build's output: its error lines, else its tail."""
    text = str(error)
    errors = [line.strip() for line in text.splitlines() if re.search(r"\berror\b", line, re.IGNORECASE)]
    message = "\n".join(errors) if errors else text
    if len(message) > MAX_REASON_CHARS:
        message = message[:MAX_REASON_CHARS] + " ..."
    return message


def environment_reason() -> str | None:
    """Why no build can be attempted here (no GPU, no nvcc, no ninja), or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if _nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja not found (pip install ninja)"
    return None


@contextlib.contextmanager
def build_lock(build_dir: Path):
    """Hold an exclusive lock on ``build_dir`` for one build, and clear a stale torch lock.

    torch's own lock is a plain file that a killed build (a timeout, Ctrl-C) leaves behind, after
    which every later build waits on it forever. Ours is a ``flock``, released by the kernel when
    its process dies; holding it, no other kbench process is building here, so a torch lock
    file that remains is stale and goes.
    """
    with open(build_dir / ".kbench-build.lock", "w") as handle:  # closing it releases the lock
        fcntl.flock(handle, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        yield


@functools.cache
def load() -> str | None:
    """Build (or reuse) and load the kernels once per process; the reason they cannot run, or None."""
    reason = environment_reason()
    if reason:
        return reason
    from torch.utils import cpp_extension

    try:
        macros = defines()
    except ValueError as error:
        return str(error)
    capability = torch.cuda.get_device_capability()
    key = build_key(capability, macros)
    build_dir = cache_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        with build_lock(build_dir):
            cpp_extension.load(
                name=f"{LIBRARY}_{key}",
                sources=[str(p) for p in compiled_sources()],
                extra_cflags=["-O3", "-std=c++17"],
                extra_cuda_cflags=nvcc_flags(capability, macros),
                extra_include_paths=[str(CSRC)],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=os.environ.get(VERBOSE_ENV) == "1",
            )
    except Exception as error:  # a failed build makes the backend unavailable, never crashes a run
        return f"CUDA build failed in {build_dir}: {compiler_message(error)}"
    return None
