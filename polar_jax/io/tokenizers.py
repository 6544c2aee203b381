"""Tokenizers: load one stored with a model (HF / polar_jax directory, GGUF metadata) or on its own, and copy
its files next to a model's weights.

Light on purpose (no model code, no JAX): `data` reads its tokenizer through this module, never `io.models`.
"""

from __future__ import annotations

import pathlib
import tempfile

from polar_jax.errors import UserError
from polar_jax.io import gguf, remote_code, storage

# Files that make up a Hugging Face tokenizer (copied as found).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
# Any one of these defines a tokenizer (the others only accompany it).
TOKENIZER_DEFINING_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class NoTokenizerError(UserError, FileNotFoundError):
    """A model directory without tokenizer files, asked for its tokenizer."""


def is_gguf_file(src: str | pathlib.Path) -> bool:
    """Whether `src` is a `.gguf` file (its tokenizer is in the file's metadata)."""
    src = pathlib.Path(src)
    return src.is_file() and src.suffix == ".gguf"


def _not_a_source(src: pathlib.Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{src}: not a model: expected a .gguf file or a directory with a tokenizer "
        f"({', '.join(TOKENIZER_DEFINING_FILES)})"
    )


def has_tokenizer(src: str | pathlib.Path) -> bool:
    """Whether `src` holds a tokenizer: a `.gguf` file, or a directory with one of `TOKENIZER_DEFINING_FILES`."""
    src = pathlib.Path(src)
    return is_gguf_file(src) or any((src / n).exists() for n in TOKENIZER_DEFINING_FILES)


def load_tokenizer(src: str | pathlib.Path, trust_remote_code: bool = False, flag: str = remote_code.FLAG):
    """A tokenizer: stored with a model (HF / polar directory, GGUF metadata) or saved on its own.

    A tokenizer that needs the directory's own code (InternLM2's) loads only with
    `trust_remote_code`; without it `RemoteCodeError` names the directory, the class and `flag`.
    """
    src = pathlib.Path(src)
    if not src.is_dir():
        if is_gguf_file(src):
            return gguf.load_gguf_tokenizer(src)
        raise _not_a_source(src)
    if not has_tokenizer(src):
        raise NoTokenizerError(
            f"{src} holds no tokenizer ({', '.join(TOKENIZER_DEFINING_FILES)}); give the tokenizer's "
            "directory or .gguf (--tokenizer), or copy its files next to the weights"
        )
    remote_code.check_tokenizer(src, trust_remote_code, flag)
    from transformers import AutoTokenizer

    # False, not None: transformers would otherwise ask on a terminal and wait.
    return AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=bool(trust_remote_code))


def copy_tokenizer(src: str | pathlib.Path, dst: str | pathlib.Path) -> list[str]:
    """Put the source's tokenizer files into `dst`, with the code modules its tokenizer_config.json
    names (a remote-code tokenizer's); returns the names written."""
    dst, src = storage.path(dst), pathlib.Path(src)
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        if not is_gguf_file(src):
            raise _not_a_source(src)
        with tempfile.TemporaryDirectory() as tmp:  # HF writes local files; a bucket gets them uploaded
            local = dst if not storage.is_bucket(dst) else pathlib.Path(tmp)
            written = [pathlib.Path(f).name for f in load_tokenizer(src).save_pretrained(str(local))]
            if local != dst:
                storage.upload_dir(local, dst)
        return written
    found = [src / n for n in TOKENIZER_FILES if (src / n).exists()] + remote_code.tokenizer_code_files(src)
    for f in found:
        storage.copy_file(f, dst / f.name)
    return [f.name for f in found]
