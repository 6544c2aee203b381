"""One door for model files: load from an HF directory, a `.gguf` file or a polar_jax
directory; save as HF safetensors or polar_jax; the tokenizer (`io.tokenizers`) travels with the weights."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

from polar_jax.data import encoding
from polar_jax.errors import UserError
from polar_jax.io import gguf, hf, polar_format, remote_code, tokenizers
from polar_jax.io.model import Model
from polar_jax.models import families


class ModelKindError(UserError, ValueError):
    """A path that is not the kind of model a command needs (a workdir, a reward model for `generate`...)."""


# A run's workdir (`train`, `rft`) -> the subdirectory its finished model is written to.
WORKDIR_MODELS = (("model", "a training workdir"), ("policy", "an RFT workdir"))


def _check_not_workdir(src: pathlib.Path) -> None:
    """Refuse a run's workdir (checkpoints/ beside the run's config.json) given where a model is expected."""
    if not (src / "checkpoints").is_dir() or any(src.glob("*.safetensors")):
        return
    config = src / "config.json"  # a run's config, not a Hugging Face model's (which names its model_type)
    try:
        if config.is_file() and "model_type" in json.loads(config.read_text() or "{}"):
            return
    except ValueError:
        pass  # not JSON: not a Hugging Face config either
    for sub, kind in WORKDIR_MODELS:
        if (src / sub).is_dir():
            raise ModelKindError(f"{src} is {kind}; its model is {src / sub}")
    raise ModelKindError(
        f"{src} is a run's workdir (checkpoints/) without a finished model yet: "
        f"{src / 'model'} (train) or {src / 'policy'} (rft) is written when the run ends"
    )


def source_format(src: str | pathlib.Path) -> str:
    """ "gguf", "polar" or "hf" for a path, or an error saying what was expected (and what it is
    when it is a run's workdir)."""
    src = pathlib.Path(src)
    if src.is_file() and src.suffix == ".gguf":
        return "gguf"
    if src.is_dir() and polar_format.is_polar_dir(src):
        return "polar"
    if src.is_dir():
        _check_not_workdir(src)
    if src.is_dir() and (src / "config.json").exists():
        return "hf"
    raise FileNotFoundError(
        f"{src}: not a model: expected a .gguf file, a polar_jax directory "
        f"({polar_format.META_FILE}) or a Hugging Face directory (config.json + safetensors)"
    )


def load_model(src: str | pathlib.Path, heads: tuple[str, ...] | None = None, **runtime) -> Model:
    """Load weights and config from any supported source; `runtime` sets dtype, remat, ..."""
    fmt = source_format(src)
    if fmt == "polar":
        model = polar_format.load_polar(src, **runtime)
        if heads is not None and tuple(heads) != model.cfg.heads:
            raise ValueError(f"{src} has heads {model.cfg.heads}, not {tuple(heads)}")
        return model
    if fmt == "hf":
        return hf.load_hf(src, heads=heads, **runtime)
    hf_config, tensors = gguf.read_gguf(src)
    cfg = families.config_from_hf(hf_config, heads=heads or ("lm",), **runtime)
    params, unused = hf.params_from_hf(cfg, "llama", tensors, source=str(src))
    assert not unused, unused  # read_gguf already reported unmapped tensors
    return Model(cfg, params, families.family_of(hf_config), hf_config)


def read_model_config(src: str | pathlib.Path, heads: tuple[str, ...] | None = None, **runtime):
    """The `ModelConfig` of any supported source without reading its weights (`load_model(src,
    heads, **runtime).cfg`): a polar_jax directory's metadata, an HF `config.json` (heads as
    `load_hf` picks them, from the safetensors' tensor names only), a GGUF file's metadata."""
    fmt = source_format(src)
    src = pathlib.Path(src)
    if fmt == "polar":
        from polar_jax.models.config import ModelConfig

        meta = json.loads((src / polar_format.META_FILE).read_text())
        cfg = ModelConfig.from_dict(meta["model_config"]).replace(**runtime)
        if heads is not None and tuple(heads) != cfg.heads:
            raise ValueError(f"{src} has heads {cfg.heads}, not {tuple(heads)}")
        return cfg
    if fmt == "hf":
        hf_config = json.loads((src / "config.json").read_text())
        if heads is None:
            from safetensors import safe_open

            names = set()
            for f in sorted(src.glob("*.safetensors")):
                with safe_open(str(f), framework="np") as st:
                    names.update(st.keys())
            heads = hf.heads_of(names)
        return families.config_from_hf(hf_config, heads=heads, **runtime)
    return families.config_from_hf(gguf.read_gguf_config(src), heads=heads or ("lm",), **runtime)


def check_heads(src: str | pathlib.Path, head: str, command: str) -> tuple[str, ...]:
    """The heads of the model at `src` (config only, no weights), or `ModelKindError` saying what the
    model is and what `command` needs when it lacks `head` ("lm": a causal LM, "reward": a reward model)."""
    heads = tuple(read_model_config(src).heads)
    if head in heads:
        return heads
    what = "a reward model" if "reward" in heads else "a causal LM" if "lm" in heads else "a model"
    needs = {"lm": "a causal LM (a model with an lm head)", "reward": "a reward model (a model with a reward head)"}
    raise ModelKindError(f"{src} is {what} (heads {', '.join(heads)}): {command} needs {needs.get(head, head)}")


def copy_model_files(src: str | pathlib.Path, dst: str | pathlib.Path) -> list[str]:
    """Everything that travels with a model's weights, from `src` into `dst`: the tokenizer files,
    the remote-code `*.py` files and `encoding.json`; returns the names written, sorted."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    names = tokenizers.copy_tokenizer(src, dst)
    code = remote_code.copy_code(src, dst)
    if (src / encoding.ENCODING_FILE).is_file():
        shutil.copy2(src / encoding.ENCODING_FILE, dst / encoding.ENCODING_FILE)
        names.append(encoding.ENCODING_FILE)
    return sorted(set(names) | {f.name for f in code})


def export_token_ids(model: Model, src, trust_remote_code: bool = False) -> dict:
    """`reward_token_id` and `pad_token_id` for an export's config.json: the model config's, else
    (reward) the source's `encoding.json`, else (pad) its tokenizer's; only the ids found."""
    ids = {k: model.hf_config[k] for k in ("reward_token_id", "pad_token_id") if model.hf_config.get(k) is not None}
    info = (encoding.read_encoding_file(src) or {}) if pathlib.Path(src).is_dir() else {}
    if "reward_token_id" not in ids and info.get("reward_token_id") is not None:
        ids["reward_token_id"] = int(info["reward_token_id"])
    if "pad_token_id" not in ids and tokenizers.has_tokenizer(src):
        pad = tokenizers.load_tokenizer(src, trust_remote_code).pad_token_id
        if pad is not None:
            ids["pad_token_id"] = int(pad)
    return ids


def convert(
    src, dst, fmt: str, head: str | None = None, dtype: str = "float32", trust_remote_code: bool = False
) -> Model:
    """Read `src` (any format) and write it to `dst` as `fmt` ("hf" | "polar"), with the tokenizer,
    remote code and `encoding.json`; the export's config carries `reward_token_id` and `pad_token_id`."""
    if fmt not in ("hf", "polar"):
        raise ValueError(f"unknown format {fmt!r}; choose hf or polar")
    model = load_model(src)
    ids = export_token_ids(model, src, trust_remote_code)
    model = dataclasses.replace(model, hf_config={**model.hf_config, **ids})
    if fmt == "hf":
        hf.save_hf(model, dst, head=head, dtype=dtype, code_from=src)
    else:
        polar_format.save_polar(model, dst, code_from=src)
    copy_model_files(src, dst)
    return model
