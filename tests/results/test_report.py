

def test_case_column_shows_sizes_and_named_settings_so_sweep_rows_differ():
    from kbench.results.report import short_case

    half = {"shape": {"tokens": 4, "head_dim": 32, "style": "half", "theta": 10000.0, "eps": 1e-5}}
    interleaved = {"shape": {**half["shape"], "style": "interleaved"}}
    assert short_case(half) == "tokens=4 head_dim=32 style=half"
    assert short_case(half) != short_case(interleaved)
    assert short_case({"shape": {"batch": 2, "temperature": 0.8, "top_p": 0.9}}) == "batch=2 temperature=0.8 top_p=0.9"
