"""LoRA adapters <-> a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`),
the layout `peft.PeftModel.from_pretrained(base, DIR)` loads.

Tensor names come from the HF weight-name table (`hf_names.py`): the adapted weight
`model.layers.{i}.self_attn.q_proj.weight` gives `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
[r, in] and `...lora_B.weight` [out, r], PyTorch's `[out, in]` convention, so that
`W_hf + lora_alpha / r x lora_B @ lora_A` is the merged weight. Ours are A [L, *in, r] and B
[L, r, *out] (`models/lora.py`), flattened in the same order as the weight's own layout.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from safetensors.numpy import load_file, save_file

from polar_jax.errors import UserError
from polar_jax.io import hf_names
from polar_jax.models import lora as lora_lib
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


class AdapterError(UserError, ValueError):
    """An adapter directory that does not match its model: missing or mis-shaped tensors, unknown targets."""


def _rule(family: str, target: str):
    """The weight-name table's rule of one LoRA target (a plain per-layer linear weight)."""
    path = T.PROJECTIONS[target][0]
    for rule in hf_names.TABLES[family]:
        if isinstance(rule, hf_names.FusedQKVRule) and path in rule.params:
            raise AdapterError(
                f"policy.lora.targets: {target!r} is part of {family}'s fused {rule.hf!r}, which PEFT adapts as one "
                "module; PEFT adapters of wq / wk / wv are not written for this family (the merged policy/ is)"
            )
        if getattr(rule, "param", None) == path:
            return rule
    raise AdapterError(f"no {family} weight name for the LoRA target {target!r} ({path})")


def module_name(family: str, target: str) -> str:
    """PEFT's target module name of a target, from the HF weight name: wq -> "q_proj" (llama, qwen2)."""
    return _rule(family, target).hf.split(".")[-2]


def _names(rule, layer: int) -> tuple[str, str]:
    stem = PREFIX + rule.hf.format(i=layer).removesuffix(".weight")
    return f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"


def adapter_tensors(cfg: ModelConfig, family: str, adapters: dict, lora: lora_lib.LoraConfig) -> dict:
    """PEFT's {name: float32 array} of host adapters: lora_A [r, in], lora_B [out, r] per layer and target."""
    tensors = {}
    for target in lora.targets:
        rule, path = _rule(family, target), T.PROJECTIONS[target][0]
        factors = lora_lib.get_at(adapters, path)
        a_lir = np.asarray(factors["lora_a"], np.float32).reshape(cfg.num_layers, -1, lora.rank)
        b_lro = np.asarray(factors["lora_b"], np.float32).reshape(cfg.num_layers, lora.rank, -1)
        for i in range(cfg.num_layers):
            name_a, name_b = _names(rule, i)
            tensors[name_a] = np.ascontiguousarray(a_lir[i].T)
            tensors[name_b] = np.ascontiguousarray(b_lro[i].T)
    return tensors


def save_adapters(
    cfg: ModelConfig, family: str, adapters: dict, lora: lora_lib.LoraConfig, out_dir, base_model: str = ""
) -> pathlib.Path:
    """Write `adapters` as a PEFT LoRA directory for the HF model of (`cfg`, `family`)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": [module_name(family, t) for t in lora.targets],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": base_model or None,
    }
    save_file(adapter_tensors(cfg, family, adapters, lora), out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_adapters(cfg: ModelConfig, family: str, adapter_dir) -> tuple[dict, lora_lib.LoraConfig]:
    """(adapters as float32 host arrays in our layout, their `LoraConfig`) of a PEFT LoRA directory
    written for this model; every tensor is checked against the expected name and shape."""
    adapter_dir = pathlib.Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    by_module = {module_name(family, t): t for t in lora_lib.ALL_TARGETS if _is_plain(family, t)}
    unknown = [m for m in config["target_modules"] if m not in by_module]
    if unknown:
        raise AdapterError(f"{adapter_dir}: target module {unknown[0]!r} is not one of {', '.join(by_module)}")
    targets = tuple(t for t in lora_lib.ALL_TARGETS if t in {by_module[m] for m in config["target_modules"]})
    lora = lora_lib.LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]), targets=targets)
    tensors = load_file(adapter_dir / WEIGHTS_FILE)
    adapters: dict = {}
    for target in targets:
        rule, path = _rule(family, target), T.PROJECTIONS[target][0]
        a_shape, b_shape = lora_lib.factor_shapes(cfg, target, lora.rank)
        n_in, n_out = math.prod(a_shape[1:-1]), math.prod(b_shape[2:])
        a_layers, b_layers = [], []
        for i in range(cfg.num_layers):
            name_a, name_b = _names(rule, i)
            a_layers.append(_take(tensors, name_a, (lora.rank, n_in), adapter_dir).T)
            b_layers.append(_take(tensors, name_b, (n_out, lora.rank), adapter_dir).T)
        lora_lib.set_at(
            adapters,
            path,
            {"lora_a": np.stack(a_layers).reshape(a_shape), "lora_b": np.stack(b_layers).reshape(b_shape)},
        )
    return adapters, lora


def _is_plain(family: str, target: str) -> bool:
    try:
        _rule(family, target)
    except AdapterError:
        return False
    return True


def _take(tensors: dict, name: str, shape: tuple[int, ...], source) -> np.ndarray:
    if name not in tensors:
        raise AdapterError(f"{source}: tensor {name!r} is missing (expected shape {shape})")
    if tuple(tensors[name].shape) != shape:
        raise AdapterError(f"{source}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
    return np.asarray(tensors[name], np.float32)
