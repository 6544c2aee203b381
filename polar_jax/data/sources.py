"""ArrayRecord files of tokenised triplets: the writer `prepare` uses and the random-access
source the Grain pipeline reads.

`ArrayRecordTriplets` satisfies Grain's `RandomAccessDataSource` protocol (`__len__`,
`__getitem__`, plus `_getitems` for batched reads and a stable `__repr__` for checkpoints),
so `grain.MapDataset.source(ArrayRecordTriplets(paths))` works. It pickles without its
readers: each process (Grain worker) opens its own, lazily, on first read.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import itertools
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import SupportsIndex

import msgpack
from array_record.python import array_record_module

from polar_jax.data import records
from polar_jax.errors import UserError

log = logging.getLogger(__name__)

# group_size:1 makes every record its own chunk, so one random read decodes one record
# (Grain's requirement for fast random access); compression stays ArrayRecord's default zstd.
WRITER_OPTIONS = "group_size:1"
# No readahead: reads are random, so prefetching the following bytes is wasted work.
READER_OPTIONS = "readahead_buffer_size:0"
SHARD_PATTERN = "triplets-{index:05d}-of-{count:05d}.array_record"


def shard_name(index: int, count: int) -> str:
    """File name of shard `index` of `count`: triplets-00000-of-00004.array_record."""
    return SHARD_PATTERN.format(index=index, count=count)


# Every ArrayRecord (Riegeli) file starts with these bytes: the hash of its first, fixed block header.
ARRAY_RECORD_MAGIC = b"\x83\xafp\xd1\r\x88J?"
PREPARE_HINT = "run `python -m polar_jax prepare` on it first"


class NotArrayRecordError(UserError, ValueError):
    """A file given as prepared (ArrayRecord) data that is not one: JSONL, empty or something else."""


def check_array_record(path: str | os.PathLike) -> None:
    """Raise `NotArrayRecordError` unless `path` starts as an ArrayRecord file does; a JSONL file
    (or a directory of them, in `find_shards`) is told to go through `prepare` first."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(ARRAY_RECORD_MAGIC):
        return
    if not head:
        raise NotArrayRecordError(f"{path} is empty, not an ArrayRecord file; {PREPARE_HINT} (on its JSONL)")
    if head.lstrip()[:1] in (b"{", b"[") or os.fspath(path).endswith(".jsonl"):
        raise NotArrayRecordError(f"{path} is JSONL, not ArrayRecord: {PREPARE_HINT}")
    raise NotArrayRecordError(f"{path} is not an ArrayRecord file (prepare writes triplets-*-of-*.array_record)")


def find_shards(directory: str | os.PathLike) -> list[str]:
    """The triplet shards in a `prepare` output directory, in order; error if there are none."""
    paths = sorted(glob.glob(os.path.join(os.fspath(directory), "triplets-*-of-*.array_record")))
    if not paths:
        jsonl = glob.glob(os.path.join(os.fspath(directory), "*.jsonl"))
        hint = f"it holds JSONL ({len(jsonl)} *.jsonl files): {PREPARE_HINT}" if jsonl else "run `prepare` first"
        raise FileNotFoundError(f"no triplets-*-of-*.array_record shards in {directory}; {hint}")
    counts = {re.search(r"-of-(\d+)\.array_record$", p).group(1) for p in paths}
    if len(counts) != 1 or len(paths) != int(counts.pop()):
        raise ValueError(
            f"{directory} holds an incomplete or mixed set of shards: {[os.path.basename(p) for p in paths]}"
        )
    return paths


class RecordWriter:
    """An ArrayRecord file open for appending records (bytes); a context manager."""

    def __init__(self, path: str | os.PathLike, options: str = WRITER_OPTIONS):
        self.path = os.fspath(path)
        self.count = 0
        self._writer = array_record_module.ArrayRecordWriter(self.path, options)
        if not self._writer.ok():
            raise OSError(f"cannot open {self.path} for writing")

    def write(self, record: bytes) -> None:
        """Append one record."""
        self._writer.write(record)
        self.count += 1

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_array_record(path: str | os.PathLike, records_: Iterable[bytes]) -> int:
    """Write `records_` (bytes each) to one ArrayRecord file; returns how many were written."""
    with RecordWriter(path) as writer:
        for record in records_:
            writer.write(record)
        return writer.count


class ArrayRecordTriplets:
    """Random access over ArrayRecord shards of triplet records, decoded by `records.decode_record`.

    Item i is {"chosen": int32[Tc], "rejected": int32[Tr], "meta": dict}; indices run over the
    shards in the order given (a `prepare` directory's shards in order = its input order).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(paths, (str, os.PathLike)):
            paths = find_shards(paths) if os.path.isdir(paths) else [paths]
        self._paths = [os.fspath(p) for p in paths]
        if not self._paths:
            raise ValueError("ArrayRecordTriplets needs at least one file")
        sizes = []
        for path in self._paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no ArrayRecord file {path}")
            check_array_record(path)
            reader = array_record_module.ArrayRecordReader(path)
            sizes.append(reader.num_records())
            options = reader.writer_options_string()
            if sizes[-1]:  # refuse stale data now, not at the first batch after compiling
                records.check_version(msgpack.unpackb(reader.read([0])[0], raw=False).get("v"), path)
            reader.close()
            if options and "group_size:1," not in options + ",":
                log.warning("%s was written with %s; random access is slow unless group_size:1", path, options)
        self._ends = list(itertools.accumulate(sizes))  # exclusive end index of each file
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._readers = [None] * len(self._paths)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, index: SupportsIndex) -> tuple[int, int]:
        """(file number, position in that file) of a global index."""
        i = index.__index__()
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} records")
        file_idx = bisect.bisect_right(self._ends, i)
        return file_idx, i - (self._ends[file_idx - 1] if file_idx else 0)

    def _reader(self, file_idx: int):
        # A reader opened before a fork belongs to the parent; reopen after one.
        if self._pid != os.getpid():
            self._init_process_state()
        reader = self._readers[file_idx]
        if reader is None:
            with self._lock:
                reader = self._readers[file_idx]
                if reader is None:
                    reader = array_record_module.ArrayRecordReader(
                        self._paths[file_idx], READER_OPTIONS, file_reader_buffer_size=32768
                    )
                    self._readers[file_idx] = reader
        return reader

    def read_bytes(self, index: SupportsIndex) -> bytes:
        """Record `index` as stored (msgpack bytes)."""
        file_idx, position = self._locate(index)
        return self._reader(file_idx).read([position])[0]

    def __getitem__(self, index: SupportsIndex) -> dict:
        return records.decode_record(self.read_bytes(index))

    def _getitems(self, indices: Sequence[int]) -> list[dict]:
        """Batched read (Grain's `SupportsBatchedReadRandomAccessDataSource`): one call per file."""
        by_file: dict[int, list[tuple[int, int]]] = {}
        for slot, index in enumerate(indices):
            file_idx, position = self._locate(index)
            by_file.setdefault(file_idx, []).append((position, slot))
        out: list = [None] * len(indices)
        for file_idx, wanted in by_file.items():
            raw = self._reader(file_idx).read([position for position, _ in wanted])
            for (_, slot), data in zip(wanted, raw):
                out[slot] = records.decode_record(data)
        return out

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Close this process's open readers (they reopen on the next read)."""
        for reader in self._readers:
            if reader is not None:
                reader.close()
        self._init_process_state()

    def __getstate__(self) -> dict:
        # Readers and locks do not pickle; the receiving process opens its own.
        return {"_paths": self._paths, "_ends": self._ends}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def __repr__(self) -> str:
        # Grain checkpoints compare the source's repr: make it stable and short.
        digest = hashlib.sha1("\n".join(self._paths).encode()).hexdigest()[:16]
        return f"ArrayRecordTriplets(files={len(self._paths)}, records={len(self)}, paths_sha1={digest})"

    @property
    def paths(self) -> list[str]:
        """The files, in index order."""
        return list(self._paths)
