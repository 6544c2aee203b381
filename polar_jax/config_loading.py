"""Experiment configs are code: `configs/NAME.py` defines `get_config()` returning an
`ml_collections.ConfigDict`; the command line overrides fields with `--config.a.b=VALUE`."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import ml_collections


def load_config(path: str | pathlib.Path, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Run `get_config()` of a config file (`path:ARG` passes ARG) and apply overrides."""
    path, _, arg = str(path).partition(":")
    file = pathlib.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"polar_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"{file} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        apply_override(config, item, source=str(file))
    return config


def apply_override(config: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
    """Apply one `--config.a.b=VALUE` (or `config.a.b=VALUE`); VALUE is parsed like Python
    and must fit the field's type (ints widen to floats; strings may go unquoted)."""
    key, sep, raw = item.removeprefix("--").partition("=")
    if not sep or not key.startswith("config."):
        raise ValueError(f"override {item!r}: expected --config.KEY=VALUE")
    *parents, leaf = key.removeprefix("config.").split(".")
    node = config
    for name in parents:
        if name not in node:
            raise KeyError(f"override {item!r}: {source} has no field config.{'.'.join(parents)}")
        node = node[name]
    if leaf not in node:
        raise KeyError(f"override {item!r}: {source} has no field {key}; fields here: {', '.join(sorted(node.keys()))}")
    old = node[leaf]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(old, bool) and isinstance(value, int) and not isinstance(value, bool):
        raise TypeError(f"override {item!r}: {key} is a bool; use True or False")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and not isinstance(value, type(old)):
        raise TypeError(f"override {item!r}: {key} is {type(old).__name__}, got {type(value).__name__}")
    node[leaf] = value
