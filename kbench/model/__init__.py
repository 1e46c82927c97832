"""The LLaMA pipeline built from a spec (weights, KV cache, prefill/decode/generate), and
``HFBaseline``, the same weights through transformers."""

from kbench.model.kv_cache import KVCache
from kbench.model.pipeline import Pipeline, build_pipeline, random_prompts
from kbench.model.weights import LayerWeights, Weights, load_weights, random_weights


def __getattr__(name):
    if name == "HFBaseline":  # imported on use: transformers is an optional dependency
        from kbench.model.hf_baseline import HFBaseline

        return HFBaseline
    raise AttributeError(name)


__all__ = ["HFBaseline", "KVCache", "LayerWeights", "Pipeline", "Weights", "build_pipeline", "load_weights",
           "random_prompts", "random_weights"]
