"""The run manifest: `WORKDIR/run.json`, written at every start and resume of a run.

It records what is needed to reproduce the run: the command line, the code version (git
commit and dirty flag of the source checkout, else the installed package version), exact
library versions, platform, devices, mesh, XLA flags, every `seed` in the config, and a
fingerprint of every input. The top level is the latest start; earlier starts are kept,
oldest first, under "previous" (each without its own "previous").

Fingerprints: a file is its size and the sha256 of its bytes; a file over 256 MiB is hashed
on its first and last 64 MiB only, with its size and mtime_ns ("partial": true), so touching
such a file reads as a change. A directory is the sorted relative paths of every file below
it (names starting with "." skipped: temporary files), each with size and hash as above, and
one sha256 over that list. A missing path or a value that is no path ("scratch", "smollm2")
is the value itself. On resume, a different code version or input fingerprint is one
`log.warning` line each; nothing is refused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
import platform
import subprocess
import sys
import time

import jax

from polar_jax.io import atomic, storage

log = logging.getLogger(__name__)

FILENAME = "run.json"
DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "libtpu", "transformers")
LARGE_FILE = 256 << 20  # bytes; above this only the head and tail are hashed
EDGE = 64 << 20  # bytes hashed at each end of a large file
_CHUNK = 1 << 20


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run depends on (None when absent), and Python's."""
    out = {}
    for name in DISTRIBUTIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def _git(repo: pathlib.Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version() -> dict:
    """{"git_commit", "git_dirty"} when polar_jax runs from a git checkout, else {"package_version"}."""
    repo = pathlib.Path(__file__).resolve().parent.parent
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is not None and pathlib.Path(top.strip()).resolve() == repo:
        commit, status = _git(repo, "rev-parse", "HEAD"), _git(repo, "status", "--porcelain")
        if commit is not None:
            return {"git_commit": commit.strip(), "git_dirty": bool(status and status.strip())}
    try:
        return {"package_version": importlib.metadata.version("polar_jax")}
    except importlib.metadata.PackageNotFoundError:
        return {"package_version": None}


def _hash_file(path: pathlib.Path) -> dict:
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as f:
        if st.st_size <= LARGE_FILE:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            return {"size": st.st_size, "sha256": h.hexdigest()}
        for start in (0, st.st_size - EDGE):
            f.seek(start)
            left = EDGE
            while left and (chunk := f.read(min(_CHUNK, left))):
                h.update(chunk)
                left -= len(chunk)
    return {"size": st.st_size, "sha256": h.hexdigest(), "mtime_ns": st.st_mtime_ns, "partial": True}


def fingerprint(value):
    """Fingerprint of one input: a file or directory (see the module doc), else the value itself."""
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return value
    path = pathlib.Path(value)
    if path.is_file():
        return {"path": str(path), **_hash_file(path)}
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        listing = [(str(p.relative_to(path)), _hash_file(p)) for p in files]
        digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
        return {"path": str(path), "files": len(listing), "bytes": sum(f["size"] for _, f in listing), "sha256": digest}
    return str(value)


def seeds(config) -> dict:
    """Every key named `seed` (or ending in `_seed`) in a (nested) ConfigDict or dict, by dotted name."""
    if config is None:
        return {}
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, name + ".")
            elif k == "seed" or str(k).endswith("_seed"):
                out[name] = v

    walk(d, "")
    return out


def train_inputs(config) -> dict:
    """The inputs of a train config: data.train / data.eval (comma-separated) and model.init."""

    def items(spec):
        return [item for item in str(spec or "").split(",") if item]

    return {
        "data.train": items(config.data.train),
        "data.eval": items(config.data.get("eval", "")),
        "model.init": config.model.get("init", None),
    }


def _mesh_shape(mesh) -> dict | None:
    if mesh is None:
        return None
    shape = mesh.shape if hasattr(mesh, "shape") else mesh
    return {str(k): int(v) for k, v in dict(shape).items()}


def _describe_code(code: dict) -> str:
    if "git_commit" in code:
        return code["git_commit"][:12] + (" (dirty)" if code.get("git_dirty") else "")
    return f"package {code.get('package_version')}"


def _content(fp):
    """A fingerprint without the paths it was read from: what the input holds."""
    if isinstance(fp, dict):
        return {k: v for k, v in fp.items() if k != "path"}
    if isinstance(fp, list):
        return [_content(f) for f in fp]
    return fp


def _input_path(fp) -> str:
    if isinstance(fp, dict):
        return fp.get("path", "?")
    if isinstance(fp, list):
        return ", ".join(_input_path(f) for f in fp)
    return str(fp)


def _redacted_argv(argv: list[str]) -> list[str]:
    """The command line with API keys (`--config.reward.api_key=K`, `--api-key K`) written as <redacted>."""
    out = list(argv)
    for i, arg in enumerate(out):
        if "api_key=" in arg or "api-key=" in arg:
            out[i] = arg.split("=", 1)[0] + "=<redacted>"
        elif arg in ("--api-key", "--config.reward.api_key") and i + 1 < len(out):
            out[i + 1] = "<redacted>"
    return out


def build(config, inputs: dict, argv: list[str] | None = None, mesh=None, hash_inputs: bool = True) -> dict:
    """The manifest of this start, without writing it (inputs as given when not `hash_inputs`)."""
    devices = jax.devices()
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": _redacted_argv(sys.argv if argv is None else argv),
        "code": code_version(),
        "versions": versions(),
        "platform": jax.default_backend(),
        "devices": {"kind": devices[0].device_kind, "count": jax.device_count(), "processes": jax.process_count()},
        "mesh": _mesh_shape(mesh),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "seeds": seeds(config),
        "inputs": {name: fingerprint(v) if hash_inputs else v for name, v in (inputs or {}).items()},
    }


def write(workdir, config, inputs: dict[str, str | list[str] | None], argv: list[str] | None = None, mesh=None) -> dict:
    """Write `workdir/run.json` (process 0 only, atomically), keeping earlier starts under
    "previous"; warn once per change of code version or input since the last start. Returns it."""
    if jax.process_index() != 0:  # only the writer reads the inputs
        return build(config, inputs, argv, mesh, hash_inputs=False)
    manifest = build(config, inputs, argv, mesh)
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / FILENAME
    previous = []
    if path.exists():
        try:
            last = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s); starting a new manifest", path, e)
        else:
            previous = last.pop("previous", []) + [last]
            _warn_changes(last, json.loads(json.dumps(manifest)))
    out = {**manifest, "previous": previous}
    atomic.write_text(path, json.dumps(out, indent=1) + "\n")
    return out


def _warn_changes(old: dict, new: dict) -> None:
    if old.get("code") != new["code"]:
        log.warning(
            "resuming with another code version: %s -> %s",
            _describe_code(old.get("code") or {}),
            _describe_code(new["code"]),
        )
    old_inputs = old.get("inputs") or {}
    for name, fp in new["inputs"].items():
        if name in old_inputs and _content(old_inputs[name]) != _content(fp):  # a respelled path is the same input
            log.warning("input %s changed since the run started: %s", name, _input_path(fp))
