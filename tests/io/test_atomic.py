"""Atomic writes (polar_jax/io/atomic.py): the new content appears whole, a failure leaves the old
content and no temporary behind, and an existing path is replaced."""

import os

import pytest

from polar_jax.io import atomic


def _names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_write_text_creates_and_replaces_a_file(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_text(path, "first")
    assert path.read_text() == "first"
    atomic.write_text(str(path), "second ü")
    assert path.read_text(encoding="utf-8") == "second ü" and _names(tmp_path) == ["out.json"]


def test_write_text_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old" and _names(tmp_path) == ["out.json"]


def test_directory_appears_on_success(tmp_path):
    out = tmp_path / "sub" / "model"
    with atomic.directory(out) as tmp:
        assert tmp.is_dir() and not out.exists() and tmp.name == f".model.tmp-{os.getpid()}"
        (tmp / "weights.bin").write_bytes(b"123")
    assert _names(out) == ["weights.bin"] and _names(out.parent) == ["model"]


def test_directory_that_raises_leaves_the_old_one_and_no_temporary(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic.directory(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert _names(out) == ["old.txt"] and _names(tmp_path) == ["model"]


def test_directory_replaces_an_existing_one_and_a_leftover_temporary(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    leftover = atomic.temp_sibling(out)
    leftover.mkdir()
    (leftover / "stale.txt").write_text("stale")
    with atomic.directory(out) as tmp:
        assert _names(tmp) == []
        (tmp / "new.txt").write_text("new")
    assert _names(out) == ["new.txt"] and _names(tmp_path) == ["model"]


def test_directory_without_overwrite_replaces_only_an_empty_one(tmp_path):
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    with atomic.directory(empty, tag="partial", overwrite=False) as tmp:
        assert tmp.name == f".empty.partial-{os.getpid()}"
        (tmp / "a.txt").write_text("a")
    assert _names(empty) == ["a.txt"]
    with pytest.raises(OSError):
        with atomic.directory(full, overwrite=False) as tmp:
            (tmp / "b.txt").write_text("b")
    assert _names(full) == ["keep.txt"] and _names(tmp_path) == ["empty", "full"]
