"""Checkpoints that ship their own Python code (InternLM2 and the released POLAR models).

transformers 5 has no built-in InternLM2: its checkpoints carry `configuration_internlm2.py`,
`modeling_internlm2.py` and `tokenization_internlm2*.py`, named by the `auto_map` entries of
config.json and tokenizer_config.json. Loading such a tokenizer means running that code, so
it happens only when the user asked for it (`--trust-remote-code`, as in transformers);
otherwise `RemoteCodeError` says which directory and class need it, and how to allow it.
"""

from __future__ import annotations

import json
import logging
import pathlib

from polar_jax.io import storage

log = logging.getLogger(__name__)

FLAG = "--trust-remote-code"  # how a command-line user allows it; config-driven commands name their key
CODE_GLOB = "*.py"  # the remote-code files of an HF directory (all its Python files)


class RemoteCodeError(ValueError):
    """A directory whose tokenizer needs its own code, loaded without permission to run it
    (or whose code is missing)."""


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tokenizer_code(src: str | pathlib.Path) -> tuple[str, str | None] | None:
    """(class name, "module.Class" reference or None) when the tokenizer of directory `src`
    is not a transformers class; None when transformers can load it with its own code.

    The reference comes from tokenizer_config.json's `auto_map.AutoTokenizer` (a [slow, fast]
    pair, the fast one preferred as transformers does); a `tokenizer_class` transformers lacks
    with no `auto_map` gives (class, None).
    """
    src = pathlib.Path(src)
    if not src.is_dir():
        return None
    tok_cfg = _read_json(src / "tokenizer_config.json")
    auto_map = tok_cfg.get("auto_map")
    refs = auto_map if isinstance(auto_map, (list, tuple)) else (auto_map or {}).get("AutoTokenizer")
    if isinstance(refs, str):
        refs = [None, refs]
    ref = next((r for r in reversed(list(refs or [])) if r), None)
    class_name = tok_cfg.get("tokenizer_class")
    if ref is not None:
        return class_name or ref.rsplit(".", 1)[-1], ref
    if class_name and not _known_tokenizer_class(class_name):
        return class_name, None
    return None


def _known_tokenizer_class(name: str) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    return any(tokenizer_class_from_name(n) is not None for n in (name, name.removesuffix("Fast"), name + "Fast"))


def check_tokenizer(src: str | pathlib.Path, trust_remote_code: bool, flag: str = FLAG) -> bool:
    """Whether loading the tokenizer of `src` runs the directory's own code; raises
    `RemoteCodeError` (naming `flag`) when it would and `trust_remote_code` is false, or when
    the code it names is not in the directory."""
    found = tokenizer_code(src)
    if found is None:
        return False
    class_name, ref = found
    if ref is not None and "--" in ref:
        raise RemoteCodeError(
            f"{src}: tokenizer_config.json takes its tokenizer {class_name} from another "
            f"repository ({ref}); nothing is downloaded here: copy that code into {src}"
        )
    if ref is not None:
        module_file = pathlib.Path(src) / (ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
        if not module_file.exists():
            raise RemoteCodeError(
                f"{src}: tokenizer_config.json names {ref} for its tokenizer {class_name}, but "
                f"{module_file.name} is not in the directory: copy it from the checkpoint's release"
            )
    if not trust_remote_code and ref is not None:
        raise RemoteCodeError(
            f"{src}: the tokenizer is {class_name}, which needs its own code ({ref}); loading it "
            f"runs that code: read it, then allow it with {flag}"
        )
    if not trust_remote_code:
        raise RemoteCodeError(
            f"{src}: the tokenizer is {class_name}, which transformers does not have, and the "
            f"directory names no code for it (tokenizer_config.json auto_map); transformers' generic "
            f"fast tokenizer may give other ids: check them, then allow it with {flag}"
        )
    if ref is None:
        log.warning(
            "%s: tokenizer class %s is not in transformers and the directory names no code for it; "
            "loading transformers' generic fast tokenizer from its files",
            src,
            class_name,
        )
    return ref is not None


def tokenizer_code_files(src: str | pathlib.Path) -> list[pathlib.Path]:
    """The module files tokenizer_config.json's `auto_map.AutoTokenizer` names that directory `src` has."""
    src = pathlib.Path(src)
    auto_map = _read_json(src / "tokenizer_config.json").get("auto_map") if src.is_dir() else None
    refs = auto_map if isinstance(auto_map, (list, tuple)) else (auto_map or {}).get("AutoTokenizer")
    refs = [refs] if isinstance(refs, str) else list(refs or [])
    files = {src / (r.rsplit(".", 1)[0].replace(".", "/") + ".py") for r in refs if r and "--" not in r}
    return sorted(f for f in files if f.is_file())


def code_files(src: str | pathlib.Path | None) -> list[pathlib.Path]:
    """The Python files (remote code) of a model directory, sorted; [] for None, "", a file or a
    missing path (a training run without an HF base)."""
    if not src or not pathlib.Path(src).is_dir():
        return []
    return sorted(p for p in pathlib.Path(src).glob(CODE_GLOB) if p.is_file())


def copy_code(src: str | pathlib.Path | None, dst: str | pathlib.Path) -> list[pathlib.Path]:
    """Copy the remote-code files of `src` (see `code_files`) into directory `dst`; returns the sources."""
    files = code_files(src)
    for f in files:
        target = storage.path(dst) / f.name
        if storage.is_bucket(target) or not (target.exists() and target.samefile(f)):
            storage.copy_file(f, target)
    return files


def defines_class(files, class_name: str) -> bool:
    """Whether one of these Python files defines `class_name` at top level (read as text, not run)."""
    needle = f"class {class_name}"
    for f in files:
        for line in pathlib.Path(f).read_text(errors="replace").splitlines():
            if line.startswith(needle) and line[len(needle) : len(needle) + 1] in ("(", ":"):
                return True
    return False
