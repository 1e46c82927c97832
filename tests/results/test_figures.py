"""README figures of a tune record and of a run with --check hf: the record's numbers, nothing else."""

from kbench.results.figures import figure_table


def _decode(mix, batch, tokens_per_s, frac):
    return {"kind": "decode", "backend": mix, "shape": {"batch": batch, "prompt_len": 512},
            "tokens_per_s": tokens_per_s, "frac_peak_bw": frac}


def test_a_tune_record_shows_every_mix_fastest_first_with_the_written_one_marked():
    record = {"run_id": "r", "command": ["kbench", "tune", "x.yaml"], "env": {}, "spec": {},
              "tune": {"winner": "per-op", "mixes": {"spec": {"request_us": 2000.0}, "per-op": {"request_us": 1000.0},
                                                     "all-triton": {"request_us": 1500.0}}},
              "rows": [_decode("spec", 1, 100.0, 0.5), _decode("per-op", 1, 200.0, 0.91),
                       _decode("all-triton", 1, 150.0, 0.7)]}
    lines = [line for line in figure_table(record).splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0].startswith("| mix | workload ms | vs spec | decode tok/s b=1 p=512 (roofline)")
    assert lines[1] == "| **per-op** (written) | 1 | 2.000x | 200.0 (91%) |"
    assert lines[2].startswith("| all-triton | 1.5 | 1.333x | 150.0 (70%)")
    assert lines[3].startswith("| spec | 2 | 1.000x | 100.0 (50%)")
    assert "tune took" not in figure_table(record)  # a record from before phases were kept


def test_a_tune_record_with_phases_says_where_its_wall_time_went():
    phases = {"ceilings": 2.0, "op timings:linear": 30.0, "op timings:ffn": 50.0, "end to end:spec": 40.0,
              "end to end:per-op": 20.0}
    record = {"run_id": "r", "command": ["kbench", "tune", "x.yaml"], "env": {}, "spec": {},
              "tune": {"winner": "per-op", "mixes": {"per-op": {"request_us": 1000.0}}, "phases_s": phases},
              "rows": [_decode("per-op", 1, 200.0, 0.91)]}
    text = figure_table(record)
    assert ("tune took 142 s: ceilings 2 s; op timings 80 s (ffn 50 s, linear 30 s); "
            "end to end 60 s (spec 40 s, per-op 20 s)") in text


def test_a_run_with_check_hf_shows_its_rows_against_transformers():
    check = {"kind": "check", "oracle": "hf", "backend": "pipeline", "shape": {"batch": 8, "prompt_len": 128},
             "dtype": "bfloat16", "max_rel_err": 1.5e-3, "allowed_rel_err": 8e-3, "token_agreement": 1.0,
             "status": "PASS"}
    record = {"run_id": "r", "command": [], "env": {}, "spec": {},
              "rows": [check, {**_decode("pipeline", 8, 900.0, 0.8), "shape": {"batch": 8, "prompt_len": 128}}]}
    text = figure_table(record)
    assert "| against transformers | batch | prompt | dtype | max logit error | allowed |" in text
    assert "| pipeline | 8 | 128 | bfloat16 | 1.50e-03 | 8.00e-03 | 100% | PASS |" in text
