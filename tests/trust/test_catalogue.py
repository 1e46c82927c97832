"""Every wrong or cheating backend of the catalogue is FAIL or SUSPECT, with a message naming
what was caught, in the op sweep behind ``kbench bench`` and ``kbench run``, in ``kbench
bench`` and ``kbench run`` themselves, and in ``pytest --kbench-backend``; honest backends are
not flagged."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from catalogue import CATALOGUE, CAUGHT

from kbench.bench.sweep import op_rows
from kbench.ops.norm import ADD_RMSNORM, RMSNORM
from kbench.registry import Implementation, Registry
from kbench.spec import BenchConfig
from kbench.testing.environment import write_plugin_dist

BENCH = BenchConfig(warmup_ms=1.0, rep_ms=5.0)
TINY_SPEC = Path(__file__).resolve().parents[2] / "model_specs" / "tiny-llama.yaml"


def catalogue_module():
    module = types.ModuleType("kbench_catalogue")
    exec(compile(CATALOGUE, "catalogue", "exec"), module.__dict__)
    return module


def catalogue_registry() -> Registry:
    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_op(ADD_RMSNORM, "test")

    def register(op, backend, fn, **options):
        registry.add_implementation(Implementation(op, backend, fn, plugin="catalogue", **options))
    catalogue_module().register_backends(register=register)
    return registry


@pytest.mark.parametrize("backend", sorted(CAUGHT))
def test_the_op_sweep_catches_every_catalogue_backend(backend):
    dtype, words = CAUGHT[backend]
    case = RMSNORM.test_cases[1].replace(tokens=64, hidden=256)
    (row,) = op_rows(catalogue_registry(), "rmsnorm", [backend], [case], getattr(torch, dtype), "cpu", BENCH)
    assert row["status"] in ("FAIL", "SUSPECT"), row
    assert words in row["note"], row["note"]


def test_an_honest_backend_passes_every_guard():
    registry = catalogue_registry()
    registry.add_implementation(Implementation("rmsnorm", "honest", catalogue_module().honest, plugin="catalogue"))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        (row,) = op_rows(registry, "rmsnorm", ["honest"], list(RMSNORM.test_cases[:1]), dtype, "cpu", BENCH)
        assert row["status"] == "PASS", row


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the catalogue as an installed plugin (``kbench_fake_catalogue``)."""
    folder = tmp_path_factory.mktemp("catalogue-site")
    write_plugin_dist(folder, "catalogue", CATALOGUE)
    return folder


def _kbench(site, args, cwd):
    env = {"PYTHONPATH": f"{site}:{':'.join(sys.path)}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "kbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def _rows(folder):
    (path,) = Path(folder).glob("*.json")
    return [row for row in json.loads(path.read_text())["rows"] if row["kind"] == "op"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_kbench_bench_reports_every_catalogue_backend(site, tmp_path, dtype):
    backends = sorted(b for b, (d, _) in CAUGHT.items() if d == dtype)
    others = [arg for b in backends[1:] for arg in ("--vs", b)]
    result = _kbench(site, ["bench", "rmsnorm", "--backend", backends[0], *others, "--tokens", "64",
                            "--hidden", "256", "--dtype", dtype, "--warmup-ms", "1", "--rep-ms", "5",
                            "--out", str(tmp_path)], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {row["backend"]: row for row in _rows(tmp_path)}
    for backend in backends:
        assert rows[backend]["status"] in ("FAIL", "SUSPECT"), rows[backend]
        assert CAUGHT[backend][1] in rows[backend]["note"]


def test_pytest_kbench_backend_fails_every_catalogue_backend(site, tmp_path):
    args = [arg for backend in CAUGHT for arg in ("--kbench-backend", backend)]
    env = {"PYTHONPATH": f"{site}:{':'.join(sys.path)}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                             "--rootdir", str(tmp_path), *args], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    failed = {line.split("[", 1)[1].split("]", 1)[0] for line in result.stdout.splitlines()
              if line.startswith("FAILED kbench[")}
    assert failed == set(CAUGHT), result.stdout[-3000:]


def test_kbench_run_fails_a_catalogue_backend_in_its_op_rows(site, tmp_path):
    result = _kbench(site, ["run", str(TINY_SPEC), "--backend", "rmsnorm=cached-by-identity", "--skip-e2e",
                            "--batch", "1", "--prompt-len", "8", "--decode-steps", "2", "--out", str(tmp_path)],
                     tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = [row for row in _rows(tmp_path) if row["backend"] == "cached-by-identity"]
    assert rows and all(row["status"] in ("FAIL", "SUSPECT") for row in rows)
    # a freed buffer's address can come back for the next input, so the check itself may be the
    # one that sees the cached output first; the timing's refill names it on at least one row
    assert any("stale output" in row["note"] for row in rows), [row["note"] for row in rows]


def test_kbench_run_end_to_end_check_sees_a_norm_that_ignores_its_weight(site, tmp_path):
    result = _kbench(site, ["run", str(TINY_SPEC), "--backend", "rmsnorm=weight-ignored", "--skip-ops",
                            "--batch", "1", "--prompt-len", "8", "--decode-steps", "2", "--out", str(tmp_path)],
                     tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (path,) = Path(tmp_path).glob("*.json")
    checks = [row for row in json.loads(path.read_text())["rows"] if row["kind"] == "check"]
    assert checks and all(row["status"] == "FAIL" for row in checks)
