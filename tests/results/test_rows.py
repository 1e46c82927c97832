import pytest

import kbench
from kbench.ops.norm import RMSNORM
from kbench.registry import Implementation, Registry
from kbench.results.record import build_record, implementation_provenance, make_row
from kbench.results.rows import ROW_KEYS, CheckRow, DecodeRow, OpRow, PrefillRow, row_dict

OWN_FIELDS = {
    OpRow: ("op", ["first_call_us", "samples_us", "graph_samples_us"]),
    CheckRow: ("check", ["backends", "checked_batch", "reference_rel_err", "allowed_rel_err", "token_agreement",
                         "tokens_compared", "oracle"]),
    PrefillRow: ("prefill", ["ttft_us", "tokens_per_s", "peak_memory_bytes", "backends"]),
    DecodeRow: ("decode", ["tokens_per_s", "peak_memory_bytes", "cuda_graph", "cuda_graph_note", "backends"]),
}


@pytest.mark.parametrize("row_type", list(OWN_FIELDS))
def test_a_row_serialises_to_the_row_keys_then_its_own_fields(row_type):
    kind, own = OWN_FIELDS[row_type]
    stored = row_dict(row_type(op="rmsnorm", backend="triton", case="tokens=1", status="PASS", latency_us=2.5))
    assert list(stored) == list(ROW_KEYS) + own
    assert stored["kind"] == kind and stored["op"] == "rmsnorm" and stored["backend"] == "triton"
    assert stored["case"] == "tokens=1" and stored["status"] == "PASS" and stored["latency_us"] == 2.5
    given = {"kind", "op", "backend", "case", "status", "latency_us"}
    assert all(value is None for key, value in stored.items() if key not in given)


def test_the_row_dict_adapter_builds_the_kind_s_row():
    assert make_row("decode", "decode", "pipeline", status="PASS", tokens_per_s=10.0, backends="norm=torch") == \
        row_dict(DecodeRow(op="decode", backend="pipeline", status="PASS", tokens_per_s=10.0, backends="norm=torch"))
    with pytest.raises(ValueError, match="row kind 'warmup'"):
        make_row("warmup", "rmsnorm", "triton")


def test_a_row_takes_only_its_kind_s_fields():
    with pytest.raises(TypeError, match="tokens_per_s"):
        OpRow(op="rmsnorm", backend="triton", tokens_per_s=1.0)


@pytest.mark.parametrize("row_type", list(OWN_FIELDS))
def test_an_unknown_status_is_rejected(row_type):
    with pytest.raises(ValueError, match="row status 'OK' is not one of"):
        row_type(op="rmsnorm", backend="triton", status="OK")
    with pytest.raises(ValueError, match="row status 'pass'"):
        make_row(OWN_FIELDS[row_type][0], "rmsnorm", "triton", status="pass")


@pytest.fixture
def registry():
    registry = Registry()
    registry.add_op(RMSNORM, "kbench-core")
    registry.plugins["acme"] = "1.2"
    registry.add_implementation(Implementation("rmsnorm", "acme", RMSNORM.reference, "acme"))
    registry.add_implementation(Implementation("rmsnorm", "pinned", RMSNORM.reference, "acme", version="0.3"))
    registry.plugin_errors["broken"] = "ImportError: no module"
    registry.detail_hooks["acme"] = lambda: {"arch": "sm_90"}
    return registry


def test_provenance_is_the_implementation_s_version_else_its_plugin_s(registry):
    assert implementation_provenance(registry, "rmsnorm", "reference") == {
        "plugin": "kbench-core", "version": kbench.__version__}
    assert implementation_provenance(registry, "rmsnorm", "acme") == {"plugin": "acme", "version": "1.2"}
    assert implementation_provenance(registry, "rmsnorm", "pinned") == {"plugin": "acme", "version": "0.3"}


def test_build_record_holds_the_run_and_its_serialised_rows(registry, monkeypatch):
    monkeypatch.setattr("kbench.env.environment", lambda device: {"device": device})
    backends = {"norm": {"backend": "acme", "ops": {"rmsnorm": implementation_provenance(registry, "rmsnorm", "acme")}}}
    typed = OpRow(op="rmsnorm", backend="acme", status="FAIL", max_abs_err=1.0)
    plain = make_row("op", "rmsnorm", "reference", status="PASS")
    record = build_record(name="tiny", command=("kbench", "run", "tiny.yaml"), spec={"name": "tiny"},
                          backends=backends, registry=registry, device="cpu", ceilings=None, rows=[typed, plain])
    assert list(record) == ["schema_version", "run_id", "created", "command", "spec", "backends", "plugins",
                            "plugin_errors", "env", "ceilings", "machine", "status", "rows", "plugin_details"]
    assert record["schema_version"] == 1 and "-tiny-" in record["run_id"]
    assert record["command"] == ["kbench", "run", "tiny.yaml"] and record["spec"] == {"name": "tiny"}
    assert record["backends"]["norm"]["ops"]["rmsnorm"] == {"plugin": "acme", "version": "1.2"}
    assert record["plugins"] == {"acme": "1.2"} and record["plugin_errors"] == {"broken": "ImportError: no module"}
    assert record["env"] == {"device": "cpu"} and record["ceilings"] == {}
    assert record["status"] == "FAIL"
    assert record["rows"] == [row_dict(typed), plain]
    assert record["plugin_details"] == {"acme": {"arch": "sm_90"}}
