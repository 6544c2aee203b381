"""Atomic writes: a file or a whole directory appears complete under its name, or not at all.

Both write a hidden sibling first (same file system, so the final `os.replace` is atomic) whose
name carries the process id, so concurrent writers never share a temporary. In a bucket
(`gs://`, see `storage`) an object upload is atomic by itself: a file is written directly, a
directory is filled in a local temporary directory and uploaded once it is complete.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from polar_jax.io import storage


def temp_sibling(path: str | os.PathLike, tag: str = "tmp") -> pathlib.Path:
    """The hidden temporary sibling of `path` this process writes: `.NAME.TAG-PID`."""
    path = pathlib.Path(os.path.abspath(path))
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically: a temporary sibling (`.NAME.tmp-PID`), then `os.replace`
    (in a bucket: one upload)."""
    if storage.is_bucket(path):
        storage.path(path).write_text(text, encoding=encoding)
        return
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def directory(path: str | os.PathLike, *, tag: str = "tmp", overwrite: bool = True) -> Iterator[pathlib.Path]:
    """Yield an empty temporary sibling directory (`.NAME.TAG-PID`, a leftover one removed first) to fill;
    when the block succeeds it replaces `path`, when it raises it is removed and `path` is left as it was.

    An existing `path` is removed first: any directory with `overwrite`, else only an empty one
    (a non-empty one makes `os.rmdir` raise, and the temporary is removed). A bucket `path` is
    filled in a local temporary directory, then the old one is deleted and the new one uploaded.
    """
    if storage.is_bucket(path):
        yield from _bucket_directory(storage.path(path), overwrite)
        return
    path = pathlib.Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, tag)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir() and overwrite:
            shutil.rmtree(path)
        elif path.is_dir():
            os.rmdir(path)  # raises if not empty
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _bucket_directory(remote, overwrite: bool) -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="polar_jax-upload-") as tmp:
        yield pathlib.Path(tmp)
        if remote.exists() and any(remote.iterdir()):
            if not overwrite:
                raise OSError(f"{remote} exists and is not empty")
            storage.remove_dir(remote)
        storage.upload_dir(pathlib.Path(tmp), remote)
