"""The ``compile`` backend: one compiled graph per shape, never an eager fallback."""

from __future__ import annotations

import pytest
import torch
from kbench_torch import compiled as compiled_module


@pytest.fixture(autouse=True)
def dynamo_config_restored():
    """``compiled`` raises dynamo's limits for the whole process; give them back after each test."""
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256,
                                    fail_on_recompile_limit_hit=False):
        yield


def test_every_shape_of_a_long_sweep_runs_compiled(monkeypatch):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(tuple(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)))
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend=counting_backend, **kwargs))
    torch._dynamo.reset()

    def scaled_sum(x):
        return (x * 2.0).sum(-1)

    call = compiled_module.compiled(scaled_sum)
    shapes = [(2, width) for width in range(3, 3 + 12)]  # past dynamo's default limit of 8
    for shape in shapes:
        x = torch.randn(shape)
        torch.testing.assert_close(call(x=x), scaled_sum(x))
    # dynamo's default would have run shapes 9-12 eagerly, with no graph for them
    assert sorted(graphs) == sorted((shape,) for shape in shapes)
    torch._dynamo.reset()


def test_the_limit_fails_loudly_rather_than_running_eagerly(monkeypatch):
    torch._dynamo.config.recompile_limit = 1  # the fixture puts it back
    monkeypatch.setattr(compiled_module, "RECOMPILE_LIMIT", 2)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend="eager", **kwargs))
    torch._dynamo.reset()

    def double(x):
        return x * 2.0

    call = compiled_module.compiled(double)
    call(x=torch.ones(1))
    call(x=torch.ones(2))
    with pytest.raises(Exception, match="(?i)recompil"):
        call(x=torch.ones(3))
    torch._dynamo.reset()


def _config(**kwargs):
    from types import SimpleNamespace

    warps = kwargs.pop("num_warps")
    return SimpleNamespace(kwargs=kwargs, num_warps=warps)


def test_the_record_names_each_inductor_kernel_and_the_config_it_launches():
    from types import SimpleNamespace

    pytest.importorskip("triton")
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    # a tuner as Inductor leaves it after its first call: the winner alone among its launchers
    tuner = CachingAutotuner.__new__(CachingAutotuner)
    tuner.fn = SimpleNamespace(__name__="triton_poi_fused_cos_0")
    tuner.size_hints = {"x": 65536}
    tuner.configs = [_config(XBLOCK=1024, num_warps=4), _config(XBLOCK=512, num_warps=8)]
    tuner.launchers = [SimpleNamespace(config=tuner.configs[1])]
    untimed = CachingAutotuner.__new__(CachingAutotuner)  # compiled, never launched: left out
    untimed.fn, untimed.size_hints, untimed.configs = SimpleNamespace(__name__="triton_red_0"), {}, tuner.configs
    untimed.launchers = []
    configs = compiled_module.inductor_configs()
    assert configs["triton_poi_fused_cos_0 [x=65536]"] == "XBLOCK=512 num_warps=8"
    assert not any(key.startswith("triton_red_0") for key in configs)


@pytest.mark.gpu
def test_the_record_keeps_the_config_a_compiled_kernel_runs():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from kbench_torch import plugin

    torch._dynamo.reset()
    x = torch.randn(64, 4096, device="cuda")
    torch.compile(lambda t: torch.sin(t) * 3.0, dynamic=False)(x)
    details = plugin.record_details()
    entries = [text for key, text in details["inductor_configs"].items() if "sin" in key]
    assert entries and all("XBLOCK=" in text and "num_warps=" in text for text in entries)
