"""A plugin outside the repository that declares a new op family (``layernorm``) through
``register_ops``: installed into a throw-away venv, it is listed, benched, checked by
``pytest --kbench-backend`` and chosen in a spec's ``backends:`` and by ``--layernorm``,
like a built-in family.
"""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from kbench.testing.environment import PluginEnvironment, write_plugin_dist

TINY_SPEC = Path(__file__).resolve().parents[2] / "model_specs" / "tiny-llama.yaml"
RUN = "--skip-e2e --batch 1 --prompt-len 8 --decode-steps 2"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "kbench-layernorm"
version = "0.1.0"
dependencies = ["kbench", "torch"]

[project.entry-points.kbench]
layernorm = "kbench_layernorm"

[tool.setuptools]
py-modules = ["kbench_layernorm"]
"""

# The op (contract and reference) and an independently written backend, in one module.
PLUGIN = '''\
import kbench
import torch
import torch.nn.functional as F
from kbench.ops import Case, Op
from kbench.ops.base import FLOAT_DTYPES, expect_tensor, generator, randn


def reference(x, weight, bias, eps):
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps).to(x.dtype)


def make_inputs(case, dtype, device, seed):
    g = generator(device, seed)
    tokens, hidden = case["tokens"], case["hidden"]
    x = randn((tokens, hidden), torch.float32, "cpu", g) + 0.5
    if tokens >= 3:  # a zero row (variance 0) and a tiny one (variance below eps)
        x[0] = 0.0
        x[1] *= 1e-3
    return {
        "x": x.to(device=device, dtype=dtype),
        "weight": (1.0 + randn((hidden,), torch.float32, "cpu", g, 0.1)).to(device=device, dtype=dtype),
        "bias": randn((hidden,), torch.float32, "cpu", g, 0.1).to(device=device, dtype=dtype),
        "eps": case.get("eps", 1e-5),
    }


def validate(inputs):
    x = inputs.get("x")
    expect_tensor("x", x, dtype=FLOAT_DTYPES, ndim=2, op="layernorm")
    for name in ("weight", "bias"):
        expect_tensor(name, inputs.get(name), dtype=x.dtype, shape=(x.shape[1],), op="layernorm")


def cases_for(model, workload):
    tokens = sorted(set(workload.prefill_tokens) | set(workload.batch))
    return [Case("layernorm", tokens=t, hidden=model.hidden, eps=model.norm_eps) for t in tokens]


LAYERNORM = Op(
    name="layernorm", family="layernorm", doc="x: [tokens, hidden], weight, bias: [hidden] -> [tokens, hidden]",
    make_inputs=make_inputs, reference=reference,
    flops=lambda case: 7.0 * case["tokens"] * case["hidden"],
    bytes=lambda case, dtype: (2 * case["tokens"] + 2) * case["hidden"] * dtype.itemsize,
    cases_for=cases_for, validate=validate,
    test_cases=(Case("layernorm", tokens=4, hidden=64, eps=1e-5), Case("layernorm", tokens=37, hidden=320, eps=1e-6)),
)


def layernorm(x, weight, bias, eps):
    x32 = x.float()
    centred = x32 - x32.sum(-1, keepdim=True) / x.shape[-1]
    variance = (centred * centred).sum(-1, keepdim=True) / x.shape[-1]
    return (centred * torch.rsqrt(variance + eps) * weight.float() + bias.float()).to(x.dtype)


@kbench.hookimpl
def register_ops(register):
    register(LAYERNORM)


@kbench.hookimpl
def register_backends(register):
    register("layernorm", "mylayernorm", layernorm, version="0.1.0")
'''

NO_BIAS = """
    import kbench
    import torch.nn.functional as F


    def layernorm(x, weight, bias, eps):
        # The bug: the bias is never added.
        return F.layer_norm(x.float(), x.shape[-1:], weight.float(), None, eps).to(x.dtype)


    @kbench.hookimpl
    def register_backends(register):
        register("layernorm", "nobias", layernorm)
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """(venv, folder): the package installed editable, the folder holding it and two specs."""
    root = tmp_path_factory.mktemp("layernorm-plugin")
    package = root / "kbench-layernorm"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "kbench_layernorm.py").write_text(PLUGIN)
    env = PluginEnvironment.create(root / "venv")
    env.pip_install_editable(package)
    spec = yaml.safe_load(TINY_SPEC.read_text())
    spec.pop("backends", None)
    (package / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    spec["backends"] = {"layernorm": "mylayernorm"}
    (package / "tiny-layernorm.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return env, package


def _run(plugin, command):
    env, package = plugin
    return env.run(command, cwd=package)


def _record(folder):
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def _layernorm_rows(record):
    return {(row["backend"], row["case"]): row["status"] for row in record["rows"]
            if row["kind"] == "op" and row["op"] == "layernorm"}


def test_kbench_list_shows_the_new_family_and_its_backend(plugin):
    result = _run(plugin, "kbench list --json 2>/dev/null")
    assert result.returncode == 0, result.stdout
    rows = {row["backend"]: row for row in json.loads(result.stdout)["implementations"] if row["op"] == "layernorm"}
    assert set(rows) == {"reference", "mylayernorm"}
    assert all(row["family"] == "layernorm" and row["plugin"] == "layernorm" and row["available"]
               for row in rows.values())


def test_kbench_bench_checks_the_backend_against_the_plugins_reference(plugin, tmp_path):
    result = _run(plugin, f"kbench bench layernorm --backend mylayernorm --vs reference --tokens 1,64 --hidden 256 "
                          f"--warmup-ms 1 --rep-ms 2 --out {tmp_path}")
    assert result.returncode == 0, result.stdout
    rows = _layernorm_rows(_record(tmp_path))
    assert sorted(rows) == sorted((backend, f"tokens={tokens} hidden=256 eps=1e-05")
                                  for backend in ("mylayernorm", "reference") for tokens in (1, 64))
    assert set(rows.values()) == {"PASS"}


def test_a_backend_that_ignores_the_bias_fails_in_kbench_bench(plugin, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    write_plugin_dist(site, "nobias", textwrap.dedent(NO_BIAS))
    result = _run(plugin, f"PYTHONPATH={site} kbench bench layernorm --backend nobias --tokens 1,64 --hidden 256 "
                          f"--warmup-ms 1 --rep-ms 2 --out {tmp_path / 'out'}")
    assert result.returncode == 1, result.stdout
    assert set(_layernorm_rows(_record(tmp_path / "out")).values()) == {"FAIL"}


def test_pytest_kbench_backend_runs_the_new_ops_test_cases(plugin):
    result = _run(plugin, "pytest -q -p no:cacheprovider --kbench-backend mylayernorm")
    assert result.returncode == 0, result.stdout
    assert "6 passed" in result.stdout and "skipped" not in result.stdout  # 2 test cases x 3 dtypes


@pytest.mark.parametrize(("spec", "flag"), [("tiny-layernorm.yaml", ""), ("tiny.yaml", "--layernorm mylayernorm")],
                         ids=["spec-backends", "family-flag"])
def test_kbench_run_runs_the_new_family_on_the_chosen_backend(plugin, tmp_path, spec, flag):
    result = _run(plugin, f"kbench run {spec} {flag} {RUN} --out {tmp_path}")
    assert result.returncode == 0, result.stdout
    record = _record(tmp_path)
    chosen = record["backends"]["layernorm"]["ops"]["layernorm"]
    assert chosen["backend"] == "mylayernorm" and chosen["plugin"] == "layernorm"
    assert chosen["origin"].endswith("backends.layernorm")
    rows = _layernorm_rows(record)
    assert {backend for backend, _ in rows} == {"mylayernorm", "reference"}
    assert set(rows.values()) == {"PASS"}


def test_an_unknown_backend_for_the_new_family_names_its_backends(plugin, tmp_path):
    result = _run(plugin, f"kbench run tiny.yaml --layernorm nosuch {RUN} --out {tmp_path}")
    assert result.returncode == 2, result.stdout
    message = " ".join(result.stdout.split())
    assert "(--layernorm): backends.layernorm: unknown layernorm backend 'nosuch'" in message
    assert "layernorm backends: mylayernorm, reference" in message
