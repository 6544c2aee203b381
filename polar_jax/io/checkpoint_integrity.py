"""Checksums of checkpoint steps, and a readable one-line cause for a failed restore or save.

Every file of a finalised step directory is listed with its size and sha256 in
`<step>/sha256sums.json` (written atomically: a temporary file renamed into place). At restore
the listing is checked before Orbax reads anything: a file changed, missing or added since the
save makes the step unreadable (`ChecksumMismatch`), so the fallback to the previous step
applies. A step without the listing (written before checksums existed, or a run killed between
the save's finalisation and its checksum) reads as "unverified": `verify` returns False.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

from polar_jax.io import storage

SUMS_NAME = "sha256sums.json"
_CHUNK = 1 << 22
_NOISE = re.compile(
    r"\s*See full TensorStore details:.*|<bound method pybind11[^>]*>?.*|<pybind11[^>]*>|\s*\[tensorstore_spec=.*"
)


class ChecksumMismatch(ValueError):
    """A step's files differ from its sha256sums.json (changed, missing or added after the save)."""


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir) -> dict[str, pathlib.Path]:
    """The step's files by path relative to it, the listing itself (and its temporary) excluded."""
    out = {}
    for path in storage.files_under(step_dir):
        rel = path.relative_to(step_dir).as_posix()
        if not rel.startswith(SUMS_NAME):
            out[rel] = path
    return dict(sorted(out.items()))


def write_sums(step_dir: str | pathlib.Path) -> pathlib.Path:
    """List every file of the finalised step `step_dir` with its size and sha256 in
    `step_dir/sha256sums.json` (atomic: written to a temporary file, synced, renamed; in a bucket
    one upload)."""
    step_dir = storage.path(step_dir)
    files = {rel: {"size": storage.size(p), "sha256": _sha256(p)} for rel, p in _files(step_dir).items()}
    target = step_dir / SUMS_NAME
    if storage.is_bucket(step_dir):
        target.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
        return target
    tmp = step_dir / f"{SUMS_NAME}.tmp-{os.getpid()}"
    try:
        with tmp.open("w") as f:
            json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def has_sums(step_dir: str | pathlib.Path) -> bool:
    """Whether `step_dir` holds its sha256sums.json."""
    return (storage.path(step_dir) / SUMS_NAME).is_file()


def verify(step_dir: str | pathlib.Path) -> bool:
    """Check `step_dir` against its sha256sums.json: True when every file matches, False when the
    step has no listing (unverified); raises ChecksumMismatch naming the first differences."""
    step_dir = storage.path(step_dir)
    listing = step_dir / SUMS_NAME
    if not listing.is_file():
        return False
    try:
        expected = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ChecksumMismatch(f"{listing} cannot be read ({type(e).__name__}: {e})") from e
    present = _files(step_dir)
    problems = [f"{rel} missing" for rel in expected if rel not in present]
    problems += [f"{rel} added after the save" for rel in present if rel not in expected]
    for rel, want in expected.items():
        if rel not in present:
            continue
        size = storage.size(present[rel])
        if size != want["size"]:
            problems.append(f"{rel} is {size} bytes, {want['size']} when saved")
        elif _sha256(present[rel]) != want["sha256"]:
            problems.append(f"{rel} sha256 differs from the save's")
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ChecksumMismatch(f"{shown} (checked against {SUMS_NAME}: the files changed after the save)")
    return True


def _line(exc: BaseException) -> tuple[str, bool]:
    """(first meaningful line of `exc`'s message, whether noise such as a pybind object was cut)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    cleaned = _NOISE.sub("", first).strip()
    noisy = cleaned != first.strip() or not cleaned
    if len(cleaned) > 240:  # keep both ends: the operation and, last, the OS's reason
        cleaned = f"{cleaned[:120]} ... {cleaned[-110:]}"
    return cleaned, noisy


def describe(exc: BaseException, depth: int = 3) -> str:
    """`Type: first line` of `exc`, followed by its causes (`__cause__`, else `__context__`) while
    a message is empty or had to be cut (a pybind object, TensorStore's details), so the real
    cause (e.g. "OUT_OF_RANGE: ... byte range" or "No space left on device") shows."""
    parts = []
    seen = set()
    while exc is not None and id(exc) not in seen and len(parts) < depth:
        seen.add(id(exc))
        line, noisy = _line(exc)
        parts.append(f"{type(exc).__name__}: {line}" if line else type(exc).__name__)
        if not noisy and line:
            break
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)
