"""kbench/spec.py: every shipped spec loads; every mistake names file, key and fix."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from kbench.errors import KbenchError
from kbench.ops import BUILTIN_OPS
from kbench.plan import resolve_plan
from kbench.registry import Implementation, Registry
from kbench.spec import Overrides, load_spec, shipped_specs

TINY = {
    "name": "t",
    "model": {"vocab": 64, "hidden": 32, "intermediate": 48, "layers": 2, "heads": 4, "kv_heads": 2,
              "head_dim": 8, "max_seq_len": 64},
    "dtype": "float32",
    "device": "cpu",
    "workload": {"batch": [1, 2], "prompt_len": [4, 8], "decode_steps": 3},
}


def write(tmp_path: Path, data=None, text: str | None = None, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def changed(**sections) -> dict:
    """TINY with sections updated (a value of None deletes the key)."""
    data = copy.deepcopy(TINY)
    for dotted, value in sections.items():
        *parents, leaf = dotted.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return data


def error_of(path: Path, overrides=None) -> KbenchError:
    with pytest.raises(KbenchError) as info:
        load_spec(path, overrides)
    return info.value


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: p.stem)
def test_every_shipped_spec_loads(path, registry):
    spec = load_spec(path)
    m = spec.model
    assert m.heads * m.head_dim == m.hidden and m.heads % m.kv_heads == 0
    assert set(resolve_plan(spec, registry, check_here=False).families) == {"embedding", "norm", "linear", "rope",
                                                                              "kv_cache", "attention", "ffn", "sampling", "comm"}
    json.dumps(spec.to_dict())


def test_shipped_shapes_are_the_published_ones():
    specs = {p.stem: load_spec(p) for p in shipped_specs()}
    assert {"llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "tiny-llama"} <= set(specs)
    shapes = {n: (s.model.vocab, s.model.hidden, s.model.intermediate, s.model.layers, s.model.heads, s.model.kv_heads)
              for n, s in specs.items()}
    assert shapes["llama2-7b"] == (32000, 4096, 11008, 32, 32, 32)
    assert shapes["llama2-13b"] == (32000, 5120, 13824, 40, 40, 40)
    assert shapes["llama2-70b"] == (32000, 8192, 28672, 80, 64, 8)
    assert shapes["llama3-8b"] == (128256, 4096, 14336, 32, 32, 8)
    rope = specs["llama3-8b"].model.rope
    assert (rope.theta, rope.scaling, rope.factor, rope.low_freq_factor, rope.high_freq_factor,
            rope.original_max_position) == (500000.0, "llama3", 8.0, 1.0, 4.0, 8192)
    tiny = specs["tiny-llama"]
    assert tiny.device == "cpu" and tiny.dtype == torch.float32 and tiny.model.kv_heads < tiny.model.heads


def test_tiny_spec_passes_backend_checks(registry):
    spec = load_spec(next(p for p in shipped_specs() if p.stem == "tiny-llama"))
    plan = resolve_plan(spec, registry)
    cases = {name: op.cases for name, op in plan.ops.items()}
    assert {"rmsnorm", "add_rmsnorm"} <= set(cases)
    assert cases.pop("all_reduce") == ()  # one rank: no collective to time
    assert all(0 < len(c) <= spec.bench.max_op_cases for c in cases.values())


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    data = changed(model__kv_heads=None, model__head_dim=None, model__max_seq_len=512, workload=None)
    spec = load_spec(write(tmp_path, data))
    assert (spec.model.kv_heads, spec.model.head_dim) == (4, 8)
    plan = resolve_plan(spec, _registry())
    assert plan.families == dict.fromkeys(plan.families, "reference")
    assert spec.weights.kind == "random" and spec.weights.seed == 0


def test_head_dim_need_not_divide_hidden_and_workloads_may_pass_max_seq_len(tmp_path):
    data = changed(model__head_dim=16, model__attention_bias=True, model__mlp_bias=True,
                   model__rope={"scaling": "yarn", "factor": 4.0, "original_max_position": 16},
                   workload__prompt_len=[62], workload__decode_steps=9)
    spec = load_spec(write(tmp_path, data))
    m = spec.model
    assert (m.heads * m.head_dim, m.hidden) == (64, 32)
    assert m.attention_bias and m.mlp_bias and m.rope.scaling == "yarn"
    assert max(spec.workload.prompt_len) + spec.workload.decode_steps > m.max_seq_len


# -- mistakes ----------------------------------------------------------------------------


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, text="model:\n  vocab: 64\n  hidden: [32\nname: x\n")
    error = error_of(path)
    assert str(path) in error.message and "invalid YAML" in error.message
    assert f"{path}:4" in error.message or f"{path}:3" in error.message
    assert error.fix


@pytest.mark.parametrize(("data", "key", "guess"), [
    (changed(modle={"vocab": 1}), "modle", "model"),
    (changed(model__hiden=32), "model.hiden", "hidden"),
    (changed(workload__decode_step=3), "workload.decode_step", "decode_steps"),
    (changed(bench={"warmup": 1}), "bench.warmup", "warmup_ms"),
])
def test_unknown_key_names_the_closest(tmp_path, data, key, guess):
    path = write(tmp_path, data)
    error = error_of(path)
    assert str(path) in error.message and key in error.message and "unknown key" in error.message
    assert f"Did you mean {guess!r}" in error.fix


def test_unknown_key_message_has_its_line(tmp_path):
    path = write(tmp_path, text=yaml.safe_dump(TINY, sort_keys=False) + "bogus: 1\n")
    lines = path.read_text().splitlines()
    assert f"{path}:{len(lines)}: bogus" in error_of(path).message


@pytest.mark.parametrize(("data", "key", "words"), [
    (changed(model__hidden=30, model__head_dim=None), "model.heads", "do not divide hidden"),
    (changed(model__kv_heads=3), "model.kv_heads", "do not divide"),
    (changed(model__layers="two"), "model.layers", "must be an integer"),
    (changed(model__layers=0), "model.layers", "must be >= 1"),
    (changed(model__norm_eps="tiny"), "model.norm_eps", "must be a number"),
    (changed(model__vocab=None), "model.vocab", "is required"),
    (changed(model__rope={"scaling": "longrope"}), "model.rope.scaling", "not one of"),
    (changed(workload__batch=[1, "x"]), "workload.batch", "positive integer"),
    (changed(workload__kv_layout="pagd"), "workload.kv_layout", "not one of"),
    (changed(workload__sampling={"top_p": 1.5}), "workload.sampling.top_p", "must lie in"),
    (changed(bench={"cuda_graphs": "yes"}), "bench.cuda_graphs", "true or false"),
    (changed(dtype="float8"), "dtype", "Unknown dtype"),
    (changed(device="tpu"), "device", "not one of"),
    (changed(weights={"kind": "hf"}), "weights.path", "is required"),
    (changed(weights={"kind": "random", "seed": -1}), "weights.seed", "must be >= 0"),
])
def test_bad_spec_names_file_key_and_fix(tmp_path, data, key, words):
    path = write(tmp_path, data)
    error = error_of(path)
    assert str(path) in error.message, error.message
    assert key in error.message, error.message
    assert words in error.message, error.message
    assert error.fix, error.message


def test_missing_checkpoint_folder_is_named(tmp_path):
    path = write(tmp_path, changed(model=None, weights={"kind": "hf", "path": "no-such-folder"}))
    error = error_of(path)
    assert "weights.path" in error.message and "no-such-folder" in error.message and "config.json" in error.fix


def test_missing_spec_file_suggests_shipped_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    with pytest.raises(KbenchError) as info:
        load_spec("model_specs/tiny-lama.yaml")
    assert "does not exist" in info.value.message and "tiny-llama.yaml" in info.value.fix


# -- overrides ---------------------------------------------------------------------------


def test_overrides_replace_file_values(tmp_path, registry):
    overrides = Overrides.from_cli(attention="sdpa", backend=("norm=triton",), batch="1,8,32", prompt_len="4,16",
                                   decode_steps=5, layers=1, dtype="bf16", device="cpu", rope=None)
    spec = load_spec(write(tmp_path, TINY), overrides)
    assert spec.backends["attention"] == "sdpa" and spec.backends["norm"] == "triton"
    assert resolve_plan(spec, registry, check_here=False).families["ffn"] == "reference"
    assert spec.workload.batch == (1, 8, 32) and spec.workload.prompt_len == (4, 16)
    assert spec.workload.decode_steps == 5 and spec.dtype == torch.bfloat16 and spec.model.layers == 1


def test_layers_override_keeps_the_real_shapes():
    path = next(p for p in shipped_specs() if p.stem == "llama3-8b")
    full, cut = load_spec(path), load_spec(path, Overrides(layers=2))
    assert cut.model.layers == 2
    assert {**vars(cut.model), "layers": full.model.layers} == vars(full.model)


@pytest.mark.parametrize(("overrides", "words"), [
    (Overrides(layers=3), "--layers 3 is outside 1..2"),
    (Overrides(dtype="int7"), "--dtype"),
])
def test_bad_override_names_the_flag(tmp_path, overrides, words):
    error = error_of(write(tmp_path, TINY), overrides)
    assert words in error.message or words in str(error)


@pytest.mark.parametrize("text", ["1,,x", "0,2", "8.5"])
def test_bad_int_lists_are_rejected(text):
    with pytest.raises(KbenchError, match="--batch"):
        Overrides.from_cli(batch=text)


def test_backend_assignment_must_be_family_equals_name():
    with pytest.raises(KbenchError, match="family=name"):
        Overrides.from_cli(backend=("attention",))


# -- backends (a registry built here, so the test does not depend on which plugins exist) --


def _registry() -> Registry:
    registry = Registry()
    for op in BUILTIN_OPS:
        registry.add_op(op, "kbench-core")

    def add(op, backend, **kwargs):
        ref = registry.ops[op].reference
        registry.add_implementation(Implementation(op, backend, ref, "test-plugin", **kwargs))

    for op in ("attention_prefill", "attention_decode"):
        add(op, "missing-lib", available=lambda: "needs the imaginary library")
        add(op, "half-only", supports=lambda case, dtype, device: None if dtype != torch.float32 else "float32 not supported")
    add("attention_prefill", "prefill-only")
    return registry


@pytest.mark.parametrize(("backend", "words", "fix_words"), [
    ("flsh", "unknown attention backend 'flsh'", "attention backends: half-only, missing-lib"),
    ("missing-lib", "needs the imaginary library", "Backends that can: reference"),
    ("half-only", "float32 not supported", "Backends that can: reference"),
    ("prefill-only", "has no attention_decode", "Backends with attention_decode: reference"),
])
def test_unusable_backend_names_reason_and_alternatives(tmp_path, backend, words, fix_words):
    path = write(tmp_path, changed(backends={"attention": backend}))
    spec = load_spec(path)
    with pytest.raises(KbenchError) as info:
        resolve_plan(spec, _registry())
    error = info.value
    assert str(path) in error.message and "backends.attention" in error.message
    assert words in error.message, error.message
    assert fix_words in error.fix, error.fix


def test_backend_error_says_it_came_from_the_command_line(tmp_path):
    spec = load_spec(write(tmp_path, TINY), Overrides.from_cli(attention="flsh"))
    with pytest.raises(KbenchError, match="--attention"):
        resolve_plan(spec, _registry())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_an_error(tmp_path):
    spec = load_spec(write(tmp_path, changed(device="cuda")))
    with pytest.raises(KbenchError, match="no CUDA device") as info:
        resolve_plan(spec, _registry())
    assert "--device cpu" in info.value.fix


def test_weights_shorthand_and_record(tmp_path):
    spec = load_spec(write(tmp_path, changed(weights="random")))
    assert (spec.weights.kind, spec.weights.seed, spec.weights.path) == ("random", 0, None)
    record = spec.to_dict()
    assert record["dtype"] == "float32" and record["model"]["kv_heads"] == 2
    assert resolve_plan(spec, _registry()).record()["ffn"]["backend"] == "reference"
    assert record["workload"]["batch"] == [1, 2] or record["workload"]["batch"] == (1, 2)


def test_unknown_backends_key_names_the_line_and_the_families(tmp_path):
    path = write(tmp_path, changed(backends={"attn": "flash"}))
    with pytest.raises(KbenchError) as info:
        resolve_plan(load_spec(path), _registry())
    assert "backends.attn" in info.value.message and "unknown key" in info.value.message
    assert "'attention'" in info.value.fix


def test_op_level_backend_overrides_its_family_for_that_op_only(tmp_path):
    registry = _registry()
    registry.add_implementation(Implementation("attention_decode", "decode-only",
                                               registry.ops["attention_decode"].reference, "test-plugin"))
    spec = load_spec(write(tmp_path, TINY), Overrides.from_cli(backend=("attention_decode=decode-only",)))
    plan = resolve_plan(spec, registry)
    assert plan.backend("attention_decode") == "decode-only"
    assert plan.backend("attention_prefill") == "reference"


def test_op_level_backend_without_that_op_is_an_error(tmp_path):
    spec = load_spec(write(tmp_path, changed(backends={"attention_decode": "prefill-only"})))
    with pytest.raises(KbenchError) as info:
        resolve_plan(spec, _registry())
    assert "backends.attention_decode" in info.value.message
    assert "--backend attention_decode=NAME" in info.value.fix
