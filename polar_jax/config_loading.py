"""Experiment configs are code: `configs/NAME.py` defines `get_config()` returning an
`ml_collections.ConfigDict`; the command line overrides fields with `--config.a.b=VALUE`."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib

import ml_collections

from polar_jax.errors import ConfigError


def load_config(
    path: str | pathlib.Path, overrides: list[str] = (), check: str | None = None
) -> ml_collections.ConfigDict:
    """Run `get_config()` of a config file (`path:ARG` passes ARG) and apply overrides; with `check`
    (a config_checks kind: train, rft, synth, scaling) validate every key's type and range."""
    path, _, arg = str(path).partition(":")
    file = pathlib.Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file {file} does not exist")
    spec = importlib.util.spec_from_file_location(f"polar_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file} defines no get_config(); a config file returns its ConfigDict from get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        apply_override(config, item, source=str(file))
    if check is not None:
        from polar_jax import config_checks

        config_checks.check(config, check, source=str(file), overrides=overrides)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
    """Apply one `--config.a.b=VALUE` (or `config.a.b=VALUE`); VALUE is parsed like Python
    and must fit the field's type (ints widen to floats; strings may go unquoted)."""
    key, sep, raw = item.removeprefix("--").partition("=")
    if not sep or not key.startswith("config."):
        raise ConfigError(f"override {item!r}: expected --config.KEY=VALUE (or --config.KEY VALUE)")
    *parents, leaf = key.removeprefix("config.").split(".")
    node, path = config, "config"
    for depth, name in enumerate([*parents, leaf]):
        if not hasattr(node, "keys") or name not in node:
            fields = sorted(node.keys()) if hasattr(node, "keys") else []
            nearest = difflib.get_close_matches(name, fields, n=3, cutoff=0.5)
            hint = (f"did you mean {', '.join(f'{path}.{n}' for n in nearest)}? " if nearest else "") + (
                f"fields of {path}: {', '.join(fields)}" if fields else f"{path} is not a section"
            )
            raise ConfigError(f"override {item!r}: {source} has no field {path}.{name}; {hint}")
        if depth < len(parents):
            node, path = node[name], f"{path}.{name}"
    old = node[leaf]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(old, bool) and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"override {item!r}: {key} is a bool; use True or False")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and not isinstance(value, type(old)):
        raise ConfigError(f"override {item!r}: {key} expects {_type_text(old)}, got {_type_text(value)} {value!r}")
    node[leaf] = value


def _type_text(value) -> str:
    """'an integer', 'a number', 'a string', ... for error messages."""
    names = {
        bool: "a bool (True or False)",
        int: "an integer",
        float: "a number",
        str: "a string",
        tuple: "a tuple",
        list: "a list",
    }
    return names.get(type(value), f"a {type(value).__name__}")
