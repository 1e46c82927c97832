"""Model weights in the layout the pipeline's ops want: random (seeded) or a HF checkpoint. Per
decoder layer (nn.Linear layout, ``[out_features, in_features]``)::

    attn_norm:  [hidden]
    wqkv:       [(heads + 2 * kv_heads) * head_dim, hidden]   rows: q, then k, then v
    wo:         [hidden, heads * head_dim]
    ffn_norm:   [hidden]
    w_gate_up:  [2 * intermediate, hidden]                    rows: gate, then up (the ffn op's layout)
    w_down:     [hidden, intermediate]

plus ``embedding: [vocab, hidden]``, ``norm: [hidden]`` and ``lm_head: [vocab, hidden]`` (the
embedding when tied). The loader fuses a HF checkpoint's q/k/v and gate/up. With
``attention_bias`` a layer also has ``bqkv: [(heads + 2 * kv_heads) * head_dim]`` and
``bo: [hidden]``; with ``mlp_bias`` ``b_gate_up: [2 * intermediate]`` and ``b_down: [hidden]``.
Random biases are drawn like the weights (HF starts them at zero) so a check exercises them,
and random norm weights are 1 + normal(0, 0.1), not HF's ones, so a dropped weight is seen.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kbench.checkpoint import BIN_INDEX_FILE, check_checkpoint_folder, hf_weight_files
from kbench.config import ModelConfig
from kbench.errors import KbenchError

INIT_STD = 0.02  # HF LlamaConfig.initializer_range
NORM_STD = 0.1


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    wo: torch.Tensor
    ffn_norm: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor
    bqkv: torch.Tensor | None = None
    bo: torch.Tensor | None = None
    b_gate_up: torch.Tensor | None = None
    b_down: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for f in dataclasses.fields(self) if (t := getattr(self, f.name)) is not None]


# A decoder layer's tensors as checkpoints store them (q, k, v and gate, up apart), by role,
# and each role's name in a HF checkpoint (under ``model.layers.N.``) and in Meta's (``layers.N.``).
HF_LAYER_NAMES = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                  "v": "self_attn.v_proj", "o": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                  "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
META_LAYER_NAMES = {"attn_norm": "attention_norm", "q": "attention.wq", "k": "attention.wk", "v": "attention.wv",
                    "o": "attention.wo", "ffn_norm": "ffn_norm", "gate": "feed_forward.w1", "up": "feed_forward.w3",
                    "down": "feed_forward.w2"}


def layer_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """'q' (a weight) or 'q.bias' -> shape of each tensor one layer of ``m`` has in a checkpoint."""
    q_rows, kv_rows = m.heads * m.head_dim, m.kv_heads * m.head_dim
    shapes = {"attn_norm": (m.hidden,), "q": (q_rows, m.hidden), "k": (kv_rows, m.hidden), "v": (kv_rows, m.hidden),
              "o": (m.hidden, q_rows), "ffn_norm": (m.hidden,), "gate": (m.intermediate, m.hidden),
              "up": (m.intermediate, m.hidden), "down": (m.hidden, m.intermediate)}
    if m.attention_bias:
        shapes |= {"q.bias": (q_rows,), "k.bias": (kv_rows,), "v.bias": (kv_rows,), "o.bias": (m.hidden,)}
    if m.mlp_bias:
        shapes |= {"gate.bias": (m.intermediate,), "up.bias": (m.intermediate,), "down.bias": (m.hidden,)}
    return shapes


def checkpoint_name(role: str, names: dict[str, str], prefix: str) -> str:
    """``prefix`` + the checkpoint's name of ``role`` ('q' -> '...q_proj.weight', 'q.bias' -> '...q_proj.bias')."""
    base, _, kind = role.partition(".")
    return f"{prefix}{names[base]}.{kind or 'weight'}"


def fused_layer(tensors: dict[str, torch.Tensor]) -> LayerWeights:
    """A layer from its checkpoint tensors by role (``layer_shapes``): q|k|v and gate|up fused."""
    def cat(*roles):
        return torch.cat([tensors[r] for r in roles]) if roles[0] in tensors else None

    return LayerWeights(attn_norm=tensors["attn_norm"], wqkv=cat("q", "k", "v"), wo=tensors["o"],
                        ffn_norm=tensors["ffn_norm"], w_gate_up=cat("gate", "up"), w_down=tensors["down"],
                        bqkv=cat("q.bias", "k.bias", "v.bias"), bo=tensors.get("o.bias"),
                        b_gate_up=cat("gate.bias", "up.bias"), b_down=tensors.get("down.bias"))


def split_layer(layer: LayerWeights, m: ModelConfig) -> dict[str, torch.Tensor]:
    """``fused_layer`` undone: the layer's tensors by role, as a checkpoint stores them."""
    qkv = [m.heads * m.head_dim, m.kv_heads * m.head_dim, m.kv_heads * m.head_dim]
    tensors = {"attn_norm": layer.attn_norm, "o": layer.wo, "ffn_norm": layer.ffn_norm, "down": layer.w_down}
    tensors |= dict(zip(("q", "k", "v"), layer.wqkv.split(qkv), strict=True))
    tensors |= dict(zip(("gate", "up"), layer.w_gate_up.split([m.intermediate] * 2), strict=True))
    if layer.bqkv is not None:
        tensors |= dict(zip(("q.bias", "k.bias", "v.bias"), layer.bqkv.split(qkv), strict=True)) | {"o.bias": layer.bo}
    if layer.b_gate_up is not None:
        tensors |= dict(zip(("gate.bias", "up.bias"), layer.b_gate_up.split([m.intermediate] * 2), strict=True))
        tensors["down.bias"] = layer.b_down
    return tensors


@dataclass
class Weights:

    model: ModelConfig
    embedding: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor
    source: str  # "random(seed=0)" or the checkpoint folder

    def tensors(self) -> list[torch.Tensor]:
        """Every distinct tensor (a tied lm_head counts once)."""
        tensors = [self.embedding, self.norm]
        if self.lm_head.data_ptr() != self.embedding.data_ptr():
            tensors.append(self.lm_head)
        for layer in self.layers:
            tensors += layer.tensors()
        return tensors

    def to(self, dtype: torch.dtype) -> Weights:
        """A copy in ``dtype`` (a tied lm_head stays tied)."""
        def cast(t):
            return None if t is None else t.to(dtype)

        embedding = cast(self.embedding)
        tied = self.lm_head.data_ptr() == self.embedding.data_ptr()
        layers = [LayerWeights(*(cast(getattr(layer, f.name)) for f in dataclasses.fields(LayerWeights)))
                  for layer in self.layers]
        return Weights(self.model, embedding, layers, cast(self.norm), embedding if tied else cast(self.lm_head),
                       f"{self.source} as {str(dtype).removeprefix('torch.')}")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The same weights under Hugging Face LlamaForCausalLM's names (q/k/v, gate/up split)."""
        state = {"model.embed_tokens.weight": self.embedding, "model.norm.weight": self.norm,
                 "lm_head.weight": self.lm_head}
        for i, layer in enumerate(self.layers):
            state |= {checkpoint_name(role, HF_LAYER_NAMES, f"model.layers.{i}."): tensor
                      for role, tensor in split_layer(layer, self.model).items()}
        return state


def load_weights(spec) -> Weights:
    if spec.weights.kind == "random":
        return random_weights(spec.model, spec.dtype, spec.device, spec.weights.seed)
    if spec.weights.kind == "meta":
        from kbench.model.meta_weights import load_meta_weights

        return load_meta_weights(Path(spec.weights.path), spec.model, spec.dtype, spec.device)
    return load_hf_weights(Path(spec.weights.path), spec.model, spec.dtype, spec.device)


def random_norm_weight(n: int, g: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 + normal(0, NORM_STD): around one, not one, so a norm kernel that drops its weight
    changes the logits."""
    return (1.0 + NORM_STD * torch.randn(n, generator=g, device=device, dtype=torch.float32)).to(dtype)


def random_weights(model: ModelConfig, dtype: torch.dtype, device: str | torch.device, seed: int) -> Weights:
    """HF-like init, deterministic per (seed, device): normal(0, 0.02) linears, 1 + normal(0, 0.1)
    for norms (not ones: a dropped weight must show). Drawn on ``device`` (the host is far
    slower), in float32 then cast, so every dtype agrees."""
    device = torch.device(device)
    g = torch.Generator(device=device)
    g.manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=device)
        # chunked by rows so the float32 draw of a large matrix never doubles its memory
        for start in range(0, shape[0], 4096):
            rows = out[start:start + 4096]
            rows.copy_(torch.randn(rows.shape, generator=g, device=device, dtype=torch.float32).mul_(INIT_STD))
        return out

    def norm_weight(n: int) -> torch.Tensor:
        return random_norm_weight(n, g, dtype, device)

    m = model
    qkv_rows = (m.heads + 2 * m.kv_heads) * m.head_dim
    embedding = normal(m.vocab, m.hidden)
    def bias(n: int, present: bool) -> torch.Tensor | None:
        return normal(n, 1).view(n) if present else None

    layers = [
        LayerWeights(
            attn_norm=norm_weight(m.hidden),
            wqkv=normal(qkv_rows, m.hidden),
            wo=normal(m.hidden, m.heads * m.head_dim),
            ffn_norm=norm_weight(m.hidden),
            w_gate_up=normal(2 * m.intermediate, m.hidden),
            w_down=normal(m.hidden, m.intermediate),
            bqkv=bias(qkv_rows, m.attention_bias),
            bo=bias(m.hidden, m.attention_bias),
            b_gate_up=bias(2 * m.intermediate, m.mlp_bias),
            b_down=bias(m.hidden, m.mlp_bias),
        )
        for _ in range(m.layers)
    ]
    lm_head = embedding if m.tie_embeddings else normal(m.vocab, m.hidden)
    return Weights(m, embedding, layers, norm_weight(m.hidden), lm_head, f"random(seed={seed})")


# --------------------------------------------------------------------------------------
# Hugging Face checkpoints
# --------------------------------------------------------------------------------------


class _TorchFile:
    """A ``pytorch_model*.bin`` shard: loaded with ``weights_only=True`` (no pickled code runs),
    memory-mapped so only the tensors asked for are read."""

    def __init__(self, path: Path):
        try:
            self.tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:
            raise KbenchError(f"{path}: cannot load it as plain tensors ({type(error).__name__}: {error}).",
                              "Re-save the checkpoint as safetensors (or a state dict of tensors only).") from None

    def keys(self):
        return self.tensors.keys()

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def get_slice(self, name: str) -> _TensorSlice:
        return _TensorSlice(self.tensors[name])


class _TensorSlice:
    """safetensors' slice interface (``get_shape``, indexing) over a loaded tensor."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index) -> torch.Tensor:
        return self.tensor[index]


def _readable(read, path: Path):
    """``read()``, with a file that cannot be parsed (safetensors' SafetensorError, an OSError,
    a truncated file) turned into a KbenchError naming it."""
    try:
        return read()
    except KbenchError:
        raise
    except Exception as error:
        raise KbenchError(f"{str(path)!r} cannot be read as a checkpoint file ({type(error).__name__}: {error}).",
                          "The file is corrupt or truncated: download or export the checkpoint again.") from None


class _Checkpoint:
    """Tensor lookup across one or many safetensors (or .bin) files, opened lazily; a folder that
    is not a checkpoint is a KbenchError here, before anything opens."""

    def __init__(self, folder: Path):
        problem = check_checkpoint_folder(folder)
        if problem:
            raise KbenchError(problem, "Point weights.path at a folder with config.json and safetensors files.")
        from safetensors import safe_open

        self.folder = folder
        index_file, single_file = hf_weight_files(folder)
        opener = _TorchFile if index_file == BIN_INDEX_FILE else (lambda path: safe_open(path, framework="pt"))
        self._open = lambda path: _readable(lambda: opener(path), path)
        index = folder / index_file
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        else:
            self.weight_map = dict.fromkeys(self._open(folder / single_file).keys(), single_file)
        self._files: dict[str, Any] = {}

    def file_of(self, name: str) -> str:
        """The file holding tensor ``name``; KbenchError where the checkpoint has none."""
        file = self.weight_map.get(name)
        if file is None:
            raise KbenchError(f"checkpoint {str(self.folder)!r} has no tensor {name!r}.",
                              "The checkpoint is incomplete or not a LlamaForCausalLM; re-export it.")
        return file

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        file = self.file_of(name)
        tensor = _readable(lambda: self.opened(file).get_tensor(name), self.folder / file)
        self._check_shape(file, name, tuple(tensor.shape), shape)
        return tensor.to(device=device, dtype=dtype)

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Every tensor of ``shapes`` is in a file that opens, at that shape (headers only)."""
        for name, shape in shapes.items():
            file = self.file_of(name)
            found = _readable(lambda f=file, n=name: tuple(self.opened(f).get_slice(n).get_shape()), self.folder / file)
            self._check_shape(file, name, found, shape)

    def _check_shape(self, file: str, name: str, found: tuple, shape: tuple) -> None:
        if found != shape:
            raise KbenchError(f"{self.folder / file}: {name} has shape {list(found)}, but the model "
                              f"(config.json and the spec's model section) gives {list(shape)}.",
                              "The tensors do not match the config: fix config.json (or the model section), "
                              "or re-export the checkpoint.")

    def opened(self, file: str):
        """The open handle of one file of the checkpoint (``get_tensor``, ``get_slice``)."""
        if file not in self._files:
            self._files[file] = self._open(self.folder / file)
        return self._files[file]

    def has(self, name: str) -> bool:
        return name in self.weight_map


def hf_tensor_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor the first ``model.layers`` layers need (not lm_head)."""
    m = model
    shapes = {"model.embed_tokens.weight": (m.vocab, m.hidden), "model.norm.weight": (m.hidden,)}
    for i in range(m.layers):
        shapes |= {checkpoint_name(role, HF_LAYER_NAMES, f"model.layers.{i}."): shape
                   for role, shape in layer_shapes(m).items()}
    return shapes


def check_weights(spec) -> None:
    """A HF checkpoint's files open and hold every tensor the model needs at its shapes, read
    from the headers, so a run refuses a corrupt or mismatched checkpoint before its op phase.
    Random weights need no check; Meta checkpoints are checked as they load."""
    if spec.weights.kind != "hf":
        return
    ckpt = _Checkpoint(Path(spec.weights.path))
    shapes = hf_tensor_shapes(spec.model)
    if not spec.model.tie_embeddings and ckpt.has("lm_head.weight"):
        shapes["lm_head.weight"] = (spec.model.vocab, spec.model.hidden)
    ckpt.check(shapes)


def load_hf_weights(folder: Path, model: ModelConfig, dtype: torch.dtype, device: str | torch.device) -> Weights:
    """The first ``model.layers`` layers of a HF LLaMA checkpoint, fused for the pipeline."""
    device = torch.device(device)
    ckpt = _Checkpoint(folder)
    m = model

    def get(name: str, *shape: int) -> torch.Tensor:
        return ckpt.get(name, shape, dtype, device)

    layers = [fused_layer({role: get(checkpoint_name(role, HF_LAYER_NAMES, f"model.layers.{i}."), *shape)
                           for role, shape in layer_shapes(m).items()}) for i in range(m.layers)]
    embedding = get("model.embed_tokens.weight", m.vocab, m.hidden)
    if m.tie_embeddings or not ckpt.has("lm_head.weight"):
        lm_head = embedding
    else:
        lm_head = get("lm_head.weight", m.vocab, m.hidden)
    return Weights(m, embedding, layers, get("model.norm.weight", m.hidden), lm_head, str(folder))
