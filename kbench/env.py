"""The machine a run happened on, its state (clocks, power, throttling, load) at a moment, and
the measured ceilings (not a datasheet's) its timings are held against (``kbench.bench.limits``)."""

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
CPU_COPY_MOVED_BYTES = (64 * 2**10, 2**20, 16 * 2**20, 64 * 2**20)
GPU_COPY_MOVED_BYTES = (2 * 2**20, 32 * 2**20)
CPU_MATMUL_SIZES = (128, 512)


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
    """Measured ceilings of ``device``: ``copy_gbps_by_bytes`` (read + write bytes of a copy at
    several sizes; on CUDA the smaller ones replayed from a graph, so L2 shows), ``copy_gbps``
    (the largest) and ``matmul_tflops`` (bf16 8192^3 on CUDA, also ``matmul_bf16_tflops``;
    float32 128^3 and 512^3 on a CPU, the best of one thread and all)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _cpu_ceilings(device)
    copy = _time_copy(device)
    copy_gbps = 2 * COPY_BYTES / (copy.median_us * 1e-6) / 1e9
    ladder = {str(moved): _copy_gbps(device, moved, rep_ms=20, cuda_graph=True) for moved in GPU_COPY_MOVED_BYTES}
    ladder[str(2 * COPY_BYTES)] = copy_gbps
    matmul = _time_matmul(device)
    torch.cuda.empty_cache()
    matmul_tflops = 2 * MATMUL_SIZE**3 / (matmul.median_us * 1e-6) / 1e12
    return {
        "copy_gbps": copy_gbps,
        "copy_gbps_by_bytes": ladder,
        "matmul_bf16_tflops": matmul_tflops,
        "matmul_tflops": matmul_tflops,
        "note": f"copy: {COPY_BYTES // 2**30} GiB device-to-device, read+write; matmul: bf16 {MATMUL_SIZE}^3",
    }


def _cpu_ceilings(device: torch.device) -> dict:
    """Copies and float32 matmuls on one thread and on all, the best of each: on a shared
    machine a thread pool waiting for a busy core can make the many-thread figure the lower."""
    threads = torch.get_num_threads()
    ladder: dict[str, float] = {}
    matmul_tflops = 0.0
    try:
        for count in dict.fromkeys((1, threads)):
            torch.set_num_threads(count)
            for moved in CPU_COPY_MOVED_BYTES:
                ladder[str(moved)] = max(ladder.get(str(moved), 0.0), _copy_gbps(device, moved, rep_ms=10))
            for size in CPU_MATMUL_SIZES:
                a, b = torch.randn(size, size), torch.randn(size, size)
                timing = measure(lambda a=a, b=b: a @ b, device=device, warmup_ms=5, rep_ms=20)
                matmul_tflops = max(matmul_tflops, 2 * size**3 / (timing.min_us * 1e-6) / 1e12)
    finally:
        torch.set_num_threads(threads)
    return {"copy_gbps": ladder[str(CPU_COPY_MOVED_BYTES[-1])], "copy_gbps_by_bytes": ladder,
            "matmul_bf16_tflops": None, "matmul_tflops": matmul_tflops,
            "note": f"CPU: copy of {CPU_COPY_MOVED_BYTES[0] // 2**10} KiB to {CPU_COPY_MOVED_BYTES[-1] // 2**20} MiB "
                    f"moved; matmul: float32 {'/'.join(map(str, CPU_MATMUL_SIZES))}; best of 1 and {threads} threads"}


def _copy_gbps(device: torch.device, moved_bytes: int, rep_ms: float, cuda_graph: bool = False) -> float:
    src = torch.ones(moved_bytes // 2, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device=device, warmup_ms=5, rep_ms=rep_ms, flush_l2=False,
                     cuda_graph=cuda_graph)
    return moved_bytes / (timing.min_us * 1e-6) / 1e9  # the fastest: a busy moment is not the machine


def _time_copy(device: torch.device):
    src = torch.empty(COPY_BYTES, dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device=device, warmup_ms=50, rep_ms=200, flush_l2=False)


def _time_matmul(device: torch.device):
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=torch.bfloat16, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, dtype=torch.bfloat16, device=device)
    return measure(lambda: a @ b, device=device, warmup_ms=100, rep_ms=300, flush_l2=False)


def machine_state(device: str | torch.device) -> dict:
    """What the machine says about its state now: on a GPU (through NVML, ``nvidia-ml-py``) the
    SM and memory clocks, power, temperature and active throttle reasons; on a CPU the
    current frequencies the OS reports and the load average."""
    device = torch.device(device)
    state: dict = {"load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                   "cpu_mhz": _cpu_mhz()}
    if device.type == "cuda":
        # a rank that set its device names none: the current one is its own GPU
        state |= _nvml_state(device.index if device.index is not None else torch.cuda.current_device())
    return state


def _cpu_mhz() -> list[float] | None:
    paths = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
    try:
        if paths:
            return [int(p.read_text()) / 1000.0 for p in paths]
        return [float(line.split(":", 1)[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")] or None
    except (OSError, ValueError):
        return None


# NVML's clocks-event reasons that mean the GPU ran slower than it was asked to.
THROTTLE_REASONS = {
    0x2: "applications clocks setting", 0x4: "software power cap", 0x8: "hardware slowdown",
    0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown", 0x80: "hardware power brake",
}


def _nvml_state(index: int) -> dict:
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        return {
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "throttle_reasons": [name for bit, name in THROTTLE_REASONS.items() if reasons & bit],
        }
    except Exception as error:  # NVML missing from the driver, no permission: say so, run on
        return {"nvml": f"NVML failed: {type(error).__name__}: {error}"}


def machine_record(start: dict, end: dict) -> dict:
    """The record's ``machine``: the state at start and end, and ``throttled`` when either saw
    a throttle reason (None where the state has no such field)."""
    seen = [s.get("throttle_reasons") for s in (start, end) if s.get("throttle_reasons") is not None]
    return {"start": start, "end": end, "throttled": any(seen) if seen else None}
