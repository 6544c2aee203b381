"""Hugging Face checkpoints: safetensors (one file or sharded with an index) <-> parameters.

The name and layout of every tensor come from the tables in `hf_names.py`. Loading checks
that every expected tensor exists with the expected shape (an error names it), and reports
tensors it did not use; nothing is randomly initialised.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from polar_jax.errors import UserError
from polar_jax.io import hf_names, remote_code
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# Tensors HF writes that carry no weights we need (rotary caches).
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not match its config: missing, mis-shaped or unknown tensors."""


def read_safetensors(model_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory, from `model.safetensors` or the sharded index."""
    model_dir = pathlib.Path(model_dir)
    index = model_dir / SAFETENSORS_INDEX
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / s for s in shards]
    elif (model_dir / SAFETENSORS_SINGLE).exists():
        files = [model_dir / SAFETENSORS_SINGLE]
    else:
        raise FileNotFoundError(
            f"{model_dir}: no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} (only safetensors "
            "checkpoints are read; convert .bin files with transformers first)"
        )
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def params_from_hf(cfg: ModelConfig, family: str, tensors: dict[str, np.ndarray], source: str = ""):
    """Convert HF tensors to a parameter tree; returns (params, names of unused tensors)."""
    dtype = _DTYPES[cfg.param_dtype]
    params: dict = {}
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"{source}: tensor {name!r} is missing (expected shape {shape})")
        a = tensors[name]
        if tuple(a.shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(a.shape)}, expected {shape} for this config"
            )
        used.add(name)
        return a.astype(np.float32)

    for rule in hf_names.TABLES[family]:
        if not hf_names.applies(rule, cfg):
            continue
        arrays = [take(n, rule.hf_shape(cfg)) for n in hf_names.hf_names(rule, cfg)]
        if isinstance(rule, hf_names.FusedQKVRule):
            per_layer = [rule.to_ours(cfg, a) for a in arrays]
            for j, path in enumerate(rule.params):
                _set(params, path, np.stack([p[j] for p in per_layer]).astype(dtype))
            continue
        converted = [rule.layout.to_ours(cfg, a) for a in arrays]
        value = np.stack(converted) if rule.per_layer else converted[0]
        _set(params, rule.param, value.astype(dtype))
    unused = sorted(n for n in tensors if n not in used and not _IGNORED.match(n))
    return params, unused


def hf_from_params(cfg: ModelConfig, family: str, params: dict, dtype: str = "float32") -> dict:
    """Convert a parameter tree to HF tensor names and layouts (inverse of `params_from_hf`)."""
    np_dtype = _DTYPES[dtype]
    out: dict[str, np.ndarray] = {}
    for rule in hf_names.TABLES[family]:
        if not hf_names.applies(rule, cfg):
            continue
        names = hf_names.hf_names(rule, cfg)
        if isinstance(rule, hf_names.FusedQKVRule):
            wq, wk, wv = (np.asarray(_get(params, p), np.float32) for p in rule.params)
            for i, name in enumerate(names):
                out[name] = rule.to_hf(cfg, wq[i], wk[i], wv[i])
        else:
            value = np.asarray(_get(params, rule.param), np.float32)
            for i, name in enumerate(names):
                out[name] = rule.layout.to_hf(cfg, value[i] if rule.per_layer else value)
    return {k: np.ascontiguousarray(v).astype(np_dtype) for k, v in out.items()}


REWARD_HEAD_TENSORS = frozenset({"score.weight", "v_head.weight"})  # HF names of a reward head


def heads_of(tensor_names) -> tuple[str, ...]:
    """The heads a checkpoint with these tensor names has: ("reward",) with a reward head, else ("lm",)."""
    return ("reward",) if REWARD_HEAD_TENSORS & set(tensor_names) else ("lm",)


def load_hf(model_dir: str | pathlib.Path, heads: tuple[str, ...] | None = None, **runtime) -> Model:
    """Load an HF directory (llama, qwen2, internlm2; causal LM or reward model).

    `heads` defaults to what the checkpoint has: ("reward",) when it holds a reward head
    (`score.weight` or `v_head.weight`), else ("lm",). `runtime` sets dtype, remat, ...
    """
    model_dir = pathlib.Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    hf_config = json.loads(config_path.read_text())
    family = families.family_of(hf_config)
    tensors = read_safetensors(model_dir)
    if heads is None:
        heads = heads_of(tensors.keys())
    cfg = families.config_from_hf(hf_config, heads=heads, **runtime)
    params, unused = params_from_hf(cfg, family, tensors, source=str(model_dir))
    if unused:
        log.warning("%s: %d tensors not used: %s", model_dir, len(unused), ", ".join(unused[:20]))
    return Model(cfg, params, family, hf_config)


def save_hf(
    model: Model,
    out_dir: str | pathlib.Path,
    head: str | None = None,
    dtype: str = "float32",
    max_shard_bytes: int = 4 << 30,
    code_from: str | pathlib.Path | None = None,
) -> pathlib.Path:
    """Write `config.json` and safetensors (sharded past `max_shard_bytes`) that transformers loads.

    `head` picks the architecture: "lm" (…ForCausalLM) or "reward" (Llama/Qwen2
    ForSequenceClassification, or the official InternLM2ForRewardModel with `v_head`).
    `code_from`: a directory whose remote-code `*.py` files are copied next to the weights.
    """
    head = head or ("reward" if "reward" in model.cfg.heads else "lm")
    if head not in model.cfg.heads:
        raise ValueError(f"cannot export head {head!r}: the model has heads {model.cfg.heads}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_cfg = model.cfg.replace(heads=(head,))
    tensors = hf_from_params(export_cfg, model.family, model.params, dtype)
    hf_config = families.hf_config_for(export_cfg, model.family, head, base=model.hf_config)
    hf_config["torch_dtype"] = hf_config["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    _write_sharded(tensors, out_dir, max_shard_bytes)
    remote_code.copy_code(code_from, out_dir)
    _check_loadable(out_dir, hf_config, head)
    return out_dir


def _check_loadable(out_dir: pathlib.Path, hf_config: dict, head: str) -> None:
    """Warn where an export lacks what the released loaders need (nothing is invented for them)."""
    if head == "reward" and hf_config.get("reward_token_id") is None:
        log.warning(
            "%s: config.json has no reward_token_id (the released POLAR loaders read the reward there); "
            "export from a model whose config or encoding.json carries it",
            out_dir,
        )
    target = (hf_config.get("auto_map") or {}).get("AutoModel")
    if hf_config.get("model_type") != "internlm2" or not target:
        return
    module, class_name = target.rsplit(".", 1)
    if not remote_code.defines_class([f for f in [out_dir / f"{module}.py"] if f.exists()], class_name):
        log.warning(
            "%s: auto_map.AutoModel is %s, but no %s.py here defines it (the base's code was not found or "
            "is a causal LM's): put the modeling file of a released POLAR checkpoint next to the weights "
            "to load it with transformers' AutoModel",
            out_dir,
            target,
            module,
        )


def _write_sharded(tensors: dict[str, np.ndarray], out_dir: pathlib.Path, max_shard_bytes: int):
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, a in tensors.items():
        if shards[-1] and size + a.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += a.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], out_dir / SAFETENSORS_SINGLE, metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / fname, metadata=meta)
        weight_map.update({n: fname for n in shard})
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree
