"""The library's own model format: a directory with `polar_model.json` and Orbax parameters.

DIR/polar_model.json   {"format": "polar_jax.model", "version": 1, "family", "model_config", "hf_config"}
DIR/params/            Orbax checkpoint of the parameter tree (restorable onto any sharding)
DIR/tokenizer*.json    the tokenizer files that travel with the weights
DIR/*.py               the base checkpoint's remote code (InternLM2), for an HF export
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from polar_jax.io import remote_code, storage
from polar_jax.io.model import Model
from polar_jax.models.config import ModelConfig

META_FILE = "polar_model.json"
FORMAT = "polar_jax.model"
VERSION = 1


def is_polar_dir(path: str | pathlib.Path) -> bool:
    """Whether `path` holds a model in this format."""
    return (pathlib.Path(path) / META_FILE).exists()


def save_polar(model: Model, out_dir: str | pathlib.Path, code_from: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write `model` (config, metadata, parameters) to `out_dir`; `code_from` (the base HF or
    polar_jax directory) gives the remote-code `*.py` files copied beside it for later HF exports."""
    out_dir = storage.path(out_dir)  # a gs:// directory: Orbax writes the parameters to the bucket
    out_dir.mkdir(parents=True, exist_ok=True)
    code = remote_code.copy_code(code_from, out_dir)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": model.family,
        "model_config": model.cfg.to_dict(),
        "hf_config": model.hf_config,
    }
    if code:
        meta["remote_code"] = {"files": [f.name for f in code], "from": str(pathlib.Path(code_from).absolute())}
    with ocp.StandardCheckpointer(use_ocdbt=storage.ocdbt(out_dir)) as ckptr:
        ckptr.save(out_dir / "params", model.params, force=True)
        ckptr.wait_until_finished()
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_polar(path: str | pathlib.Path, shardings=None, **runtime) -> Model:
    """Read a model written by `save_polar`; `shardings` (a pytree) places each parameter."""
    path = pathlib.Path(path).absolute()
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: no {META_FILE}; not a polar_jax model directory")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')} is not {FORMAT} v{VERSION}"
        )
    cfg = ModelConfig.from_dict(meta["model_config"]).replace(**runtime)
    with ocp.StandardCheckpointer() as ckptr:
        abstract = ckptr.metadata(path / "params").item_metadata.tree
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), abstract)
        if shardings is not None:
            target = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), target, shardings)
        params = ckptr.restore(path / "params", target)
    if shardings is None:
        params = jax.tree.map(np.asarray, params)
    return Model(cfg, params, meta["family"], meta["hf_config"])
