"""The rules every command applies to the paths it is given, so that each kind of input and
output is treated the same way in `score`, `evaluate` and `prepare`:

- Inputs (`expand_inputs`): a file is taken as given; a directory stands for its `*.jsonl` files,
  sorted (a directory without any is refused, with one message everywhere); a path that does not
  exist is refused; a file named twice (also through its directory, or under another spelling)
  is read once, with a warning.
- Empty inputs (`check_not_empty`, `no_rows_error`): an input file without a single row is an
  error naming it, and so is a run whose inputs hold no valid row; both exit 2 in every command.
- Outputs (`check_output_file`, `atomic_lines`): checked before any work (not a directory; the
  parent exists or is created; a file can be created there), then written to a hidden temporary
  sibling renamed over the name at the end, so an interrupted run leaves the old file or the
  complete new one, never a part.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import TextIO

from polar_jax.errors import UserError
from polar_jax.io import atomic

log = logging.getLogger(__name__)

JSONL_SUFFIX = ".jsonl"


class InputError(UserError, FileNotFoundError):
    """An input path that does not exist, or a directory without JSONL files (the message names it)."""


class OutputError(UserError):
    """An output path that cannot be written (a directory, an unwritable or uncreatable parent)."""


class EmptyInputError(UserError, ValueError):
    """An input file without rows, or inputs without a single valid row."""


def _identity(path: pathlib.Path) -> tuple:
    """What makes two spellings the same file: device and inode (hard and symbolic links included)."""
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _directory_files(directory: pathlib.Path, flag: str) -> list[pathlib.Path]:
    shards = sorted(p for p in directory.glob("*" + JSONL_SUFFIX) if p.is_file())
    if shards:
        return shards
    prepared = any(directory.glob("*.array_record"))
    hint = (
        " (it holds ArrayRecord shards written by `prepare`: give the JSONL files they were prepared from)"
        if prepared
        else ""
    )
    raise InputError(
        f"{flag} {directory}: a directory without *{JSONL_SUFFIX} files{hint}; give JSONL files or a directory of them"
    )


def expand_inputs(paths: Iterable[str | os.PathLike], flag: str = "--input") -> list[pathlib.Path]:
    """Files as given and each directory as its `*.jsonl` files (sorted), each file once, in order.

    A path that does not exist, or a directory without `*.jsonl` files, raises `InputError`; a file
    reached twice (named twice, or also through its directory) is kept at its first place with a warning."""
    out: list[pathlib.Path] = []
    first: dict[tuple, pathlib.Path] = {}
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            files = _directory_files(p, flag)
        elif p.exists():
            files = [p]
        else:
            raise InputError(f"{flag} {p} does not exist; {p}: no such file or directory")
        for f in files:
            key = _identity(f)
            if key in first:
                log.warning("%s %s is the file %s given before: read once", flag, f, first[key])
                continue
            first[key] = f
            out.append(f)
    return out


def has_rows(path: str | os.PathLike) -> bool:
    """Whether a JSONL file has at least one non-blank line (reads only up to the first one)."""
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def check_not_empty(files: Iterable[str | os.PathLike], flag: str = "--input") -> None:
    """Raise `EmptyInputError` naming every input file without a single row (empty or blank lines only)."""
    empty = [os.fspath(f) for f in files if not has_rows(f)]
    if empty:
        raise EmptyInputError(
            f"{flag}: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (no rows); "
            "remove it from the inputs or give a file with rows"
        )


def no_rows_error(files: Iterable[str | os.PathLike], kind: str = "") -> EmptyInputError:
    """The error for inputs that hold no valid row (all of them invalid and skipped)."""
    names = ", ".join(os.fspath(f) for f in files)
    return EmptyInputError(f"no valid {kind + ' ' if kind else ''}rows in {names}")


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> pathlib.Path:
    """Check, before any work, that a file can be written at `path`; create its parent if missing.

    Refused with `OutputError`: an existing directory, a parent that is a file or cannot be
    created, a parent where no file can be created (read-only, no permission: tried, not guessed)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; give a file path (for example {path / 'out.json'})")
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{flag} {path}: its parent {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot create its directory {parent}: {e.strerror or e}") from e
    probe = atomic.temp_sibling(path, "probe")
    try:
        probe.open("x").close()
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {parent}: {e.strerror or e}") from e
    probe.unlink()  # only once created: on a read-only file system even a missing file's unlink fails
    return path


@contextlib.contextmanager
def atomic_lines(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file to write that appears at `path` complete when the block ends, or not at all.

    The lines go to a hidden temporary sibling (`.NAME.tmp-PID`) renamed over `path` at the end; if
    the block raises (or the process dies) the old `path`, if any, is left as it was."""
    tmp = atomic.temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
