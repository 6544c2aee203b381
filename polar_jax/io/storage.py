"""Run directories on local disks or in buckets: `gs://BUCKET/PATH` workdirs through the libraries'
own GCS support, everything else as POSIX paths.

`path(p)` is the one place that decides: a `gs://` URL becomes an `etils.epath.Path` (gcsfs
underneath; Orbax writes checkpoints there itself, through TensorStore's GCS driver), anything
else an absolute `pathlib.Path`. Both have the same methods (`/`, `exists`, `is_dir`, `iterdir`,
`read_text`, `write_text`, `open`, `mkdir`, `unlink`, `rename`), so code that sticks to those
runs on both. What a bucket does differently is handled here, once:

- no rename-into-place and no append: an object upload is itself atomic (readers see the old
  object or the new one), so `atomic.write_text` writes a bucket file directly, a directory is
  filled locally and uploaded (`upload_dir`), and `metrics.jsonl` is rewritten whole;
- no exclusive create through the path API: `create_exclusive` uses GCS's `ifGenerationMatch=0`
  precondition for the workdir lock;
- no recursive glob: `files_under` walks a directory level by level;
- arrays without OCDBT (`ocdbt`).

Credentials and endpoints are the GCS client libraries' own: Application Default Credentials on
Cloud TPU; `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage, so TensorBoard events) and
`TENSORSTORE_GCS_HTTP_URL` (Orbax's array writes) for an emulator, as the tests set them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator

from polar_jax.errors import UserError

BUCKET_PREFIX = "gs://"


def is_bucket(p: str | os.PathLike) -> bool:
    """Whether `p` names a GCS bucket location (`gs://BUCKET/...`)."""
    return str(p).startswith(BUCKET_PREFIX)


def path(p: str | os.PathLike):
    """`p` as a path object: an `etils.epath.Path` for `gs://`, else an absolute `pathlib.Path`."""
    if is_bucket(p):
        from etils import epath  # gcsfs is imported only when a bucket is used

        return epath.Path(str(p))
    return pathlib.Path(p).absolute()


class BucketUnreachable(UserError):
    """A `gs://` location that cannot be read: no credentials, no network, no such bucket."""


def check_reachable(p, flag: str = "--workdir") -> None:
    """Fail early, with what to check, when bucket location `p` cannot be listed (nothing for local paths)."""
    if not is_bucket(p):
        return
    try:
        p.exists()
    except Exception as e:  # noqa: BLE001 - whatever the client raised (auth, connection, HTTP) is the cause
        cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        raise BucketUnreachable(
            f"{flag} {p}: cannot reach the bucket ({cause}); check the credentials (`gcloud auth "
            "application-default login`, or the VM's service account), the network and the bucket's name"
        ) from e


def _fs():
    import fsspec

    return fsspec.filesystem("gs")


def files_under(directory) -> Iterator:
    """Every file below `directory` (recursively, sorted per level), on disk or in a bucket."""
    for child in sorted(directory.iterdir(), key=lambda p: p.name):
        if child.is_dir():
            yield from files_under(child)
        else:
            yield child


def size(p) -> int:
    """A file's size in bytes (`pathlib`'s `st_size`, `epath`'s `length`)."""
    st = p.stat()
    return st.st_size if hasattr(st, "st_size") else st.length


def upload_dir(local: pathlib.Path, remote) -> None:
    """Copy the files of local directory `local` into `remote` (a bucket directory), streamed file by
    file; files already in `remote` under other names are left."""
    fs = _fs()
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), str(remote / f.relative_to(local).as_posix()))


def copy_file(src: pathlib.Path, dst) -> None:
    """Copy local file `src` to `dst`, a local path (with its metadata, as `shutil.copy2`) or a bucket one."""
    if is_bucket(dst):
        _fs().put_file(str(src), str(dst))
    else:
        shutil.copy2(src, dst)


def remove_dir(remote) -> None:
    """Delete bucket directory `remote` and everything in it (nothing when it does not exist)."""
    if remote.exists():
        _fs().rm(str(remote), recursive=True)


def ocdbt(p) -> bool:
    """Whether Orbax writes the arrays under `p` as one OCDBT database (local disks) or one
    TensorStore array per parameter (buckets). The per-array layout is the one tested for buckets:
    OCDBT's manifest reads fail on the GCS emulator ("Malformed StorageGeneration": its object
    generations are not GCS's), so the combined layout is not tested against any GCS here."""
    return not is_bucket(p)


def create_exclusive(p, data: bytes) -> None:
    """Create file `p` holding `data`, or raise FileExistsError when it exists (atomic on a local disk;
    in a bucket the upload carries GCS's `ifGenerationMatch=0` precondition)."""
    if not is_bucket(p):
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    if p.exists():  # also what refuses a second holder on an emulator that ignores preconditions
        raise FileExistsError(str(p))
    try:
        _fs().pipe_file(str(p), data, mode="create")
    except FileExistsError:
        raise
    except OSError as e:  # gcsfs reports a failed precondition (HTTP 412) as an OSError carrying the code
        if getattr(e, "code", None) == 412 or "412" in str(e):
            raise FileExistsError(str(p)) from e
        raise
