"""`kbench run --check hf`: the pipeline against transformers on the same weights, as check rows."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model"))
from tiny_models import save_hf_checkpoint, write_spec  # noqa: E402

from kbench.cli import cli  # noqa: E402

pytest.importorskip("transformers")
TINY = str(Path(__file__).resolve().parent.parent.parent / "model_specs" / "tiny-llama.yaml")
SMALL = ["--batch", "2", "--prompt-len", "8", "--decode-steps", "3", "--skip-ops"]


def _record(folder: Path) -> dict:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


def _hf_rows(record: dict) -> list[dict]:
    return [row for row in record["rows"] if row["kind"] == "check" and row.get("oracle") == "hf"]


def test_check_hf_on_the_tiny_spec_in_bfloat16_passes_with_rows_per_point(tmp_path):
    result = CliRunner().invoke(cli, ["run", TINY, *SMALL, "--dtype", "bfloat16", "--check", "hf",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = _hf_rows(_record(tmp_path))
    assert [(r["backend"], r["dtype"]) for r in rows] == [("reference", "float32"), ("pipeline", "bfloat16")]
    assert all(r["status"] == "PASS" and r["token_agreement"] > 0 for r in rows)
    assert rows[0]["allowed_rel_err"] == pytest.approx(2e-4) and rows[0]["max_rel_err"] < 1e-5


def test_check_hf_on_a_checkpoint_past_its_trained_range(tmp_path):
    save_hf_checkpoint(tmp_path / "ckpt", shard=True, attention_bias=True, mlp_bias=True, max_position_embeddings=8,
                       rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    spec = write_spec(tmp_path, model=None, weights={"kind": "hf", "path": "ckpt"},
                      workload={"batch": [2], "prompt_len": [12], "decode_steps": 4})
    result = CliRunner().invoke(cli, ["run", str(spec), "--skip-ops", "--check", "hf", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "positions up to 15 pass the trained range of 8" in result.output
    rows = _hf_rows(_record(tmp_path / "out"))
    assert len(rows) == 2 and all(r["status"] == "PASS" and r["token_agreement"] == 1.0 for r in rows)


def test_a_reference_that_drifts_from_transformers_fails_naming_where(tmp_path, monkeypatch):
    import kbench.model.hf_baseline as hf_baseline

    make_config = hf_baseline.hf_config

    def drifted(model, dtype):  # transformers told another rope base than kbench uses
        config = make_config(model, dtype)
        config.rope_parameters["rope_theta"] = 20000.0
        return config

    monkeypatch.setattr(hf_baseline, "hf_config", drifted)
    result = CliRunner().invoke(cli, ["run", TINY, *SMALL, "--check", "hf", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    record = _record(tmp_path)
    rows = _hf_rows(record)
    assert rows and all(r["status"] == "FAIL" for r in rows)
    assert "first part at step 0 (logits at position 7) of sequence 0" in rows[0]["note"]
    assert record["status"] == "FAIL"
