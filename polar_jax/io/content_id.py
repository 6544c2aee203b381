"""Content identities of inputs: what a file or directory holds, never how its path is spelled.

Resume checks (a synthesis run's `synth.json`, the demo's stages) compare these, so the same
input under another spelling (relative or absolute, through a symlink) or after the whole
directory was copied or moved compares equal, while changed bytes compare different.

    identity("runs/demo/policies/lm0/step-40")
    # {"kind": "dir", "files": 5, "bytes": 2361387, "sha256": "..."}

A file is its size and the sha256 of its bytes; a file over `run_manifest.LARGE_FILE` is
hashed on its first and last `run_manifest.EDGE` bytes with its size ("partial": true; the
modification time is left out, so a copy still matches). A directory is the sorted relative
paths of every file below it (names starting with "." skipped: temporary files), each with
its size and hash, and one sha256 over that list. Results are cached per process and
recomputed when a file's size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

from polar_jax import run_manifest

_CHUNK = 1 << 20
_CACHE: dict[str, tuple[tuple, dict]] = {}  # resolved path -> (stat signature, identity)


def _file_digest(path: pathlib.Path, size: int) -> dict:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= run_manifest.LARGE_FILE:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            return {"bytes": size, "sha256": h.hexdigest()}
        for start in (0, size - run_manifest.EDGE):
            f.seek(start)
            left = run_manifest.EDGE
            while left and (chunk := f.read(min(_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
    return {"bytes": size, "sha256": h.hexdigest(), "partial": True}


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _signature(path: pathlib.Path, files: list[pathlib.Path] | None) -> tuple:
    if files is None:
        st = path.stat()
        return ((st.st_size, st.st_mtime_ns),)
    return tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def identity(path: str | os.PathLike) -> dict:
    """The content identity of an existing file or directory (see the module doc); a
    FileNotFoundError naming the path when it does not exist."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    resolved = path.resolve()
    files = _files(resolved) if resolved.is_dir() else None
    signature = _signature(resolved, files)
    cached = _CACHE.get(str(resolved))
    if cached is not None and cached[0] == signature:
        return dict(cached[1])
    if files is None:
        out = {"kind": "file", **_file_digest(resolved, resolved.stat().st_size)}
    else:
        listing = [(str(p.relative_to(resolved)), _file_digest(p, p.stat().st_size)) for p in files]
        digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
        out = {"kind": "dir", "files": len(listing), "bytes": sum(f["bytes"] for _, f in listing), "sha256": digest}
    _CACHE[str(resolved)] = (signature, out)
    return dict(out)


def tokenizer_identity(tokenizer) -> str:
    """sha256 of what a loaded tokenizer does, whatever its files were called: the full
    serialisation of a fast tokenizer (vocabulary, merges, normalisation, added tokens), else its
    class and its vocabulary with the added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        text = json.dumps([type(tokenizer).__name__, vocab, sorted(getattr(tokenizer, "all_special_tokens", []))])
    return hashlib.sha256(text.encode()).hexdigest()
