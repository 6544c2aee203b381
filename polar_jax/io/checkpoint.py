"""Training checkpoints: one Orbax step directory holds the train state (params, optimiser
state, step, RNG), the Grain iterator state and the resolved config, so a restart resumes
exactly where the run stopped.

Saves are asynchronous (training continues while the state is written). What can be trusted:

- Checksums: once a step is finalised on disk, every file of it is listed with its sha256 in
  `<step>/sha256sums.json` (see `checkpoint_integrity`). Finalisation is only known after the
  asynchronous write ends, so the listing of step N is written at the next `save`, `wait` or
  `close`. At restore a step whose files differ from the listing is unreadable. A step without
  a listing (written before checksums existed, or the run was killed between finalising it and
  writing its checksum) is restored with a warning that it is unverified.
- Restore: steps are tried newest first; before each attempt the data iterator's state is
  snapshotted and put back when the attempt fails, so state and iterator move together or not
  at all. Only when an older step is restored are the newer unreadable ones set aside (renamed
  `unreadable-<step>-<time>`, kept for inspection), the log naming which and why. When steps
  exist and none is readable, `NoReadableCheckpoint` lists each with its cause and nothing is
  moved, unless `start_over=True` (the run's `--config.start_over=True`).
- Saves: an error of the previous asynchronous save (disk full, ...) is raised by the next
  `save`, `wait` or `close` as one `CheckpointSaveError` naming the step, directory and cause.

Restoring onto another mesh only needs other target shardings.
"""

from __future__ import annotations

import logging
import pathlib
import time

import grain
import jax
import orbax.checkpoint as ocp

from polar_jax.errors import UserError
from polar_jax.io import checkpoint_integrity as integrity
from polar_jax.io import storage

log = logging.getLogger(__name__)


class NoReadableCheckpoint(UserError):
    """Checkpoints exist in the workdir but none can be restored (each step's cause is listed)."""


class CheckpointSaveError(UserError):
    """An (asynchronous) checkpoint save failed: the message names the step, directory and cause."""


class Checkpointer:
    """Save / restore {state, data iterator, config} under `DIR/checkpoints/<step>`.

    Call `close()` when the run ends; in a `finally` (or `__exit__`) after another exception,
    call `close(raise_errors=False)` so a save error is logged and never hides the first error.
    """

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
        self.directory = storage.path(workdir) / "checkpoints"  # a gs:// workdir: Orbax writes to the bucket
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        handlers = {
            "state": ocp.StandardCheckpointHandler(use_ocdbt=storage.ocdbt(self.directory)),
            "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._pending: int | None = None  # the step saved last whose checksum is not written yet
        self._reported: CheckpointSaveError | None = None  # a save error already raised once

    def save(self, step: int, state, data_iterator, config: dict, force: bool = False) -> bool:
        """Start saving step `step` (asynchronously); returns whether a save was started.

        First waits for the previous save and writes its checksum; raises CheckpointSaveError
        when that save, or the start of this one, failed."""
        self._settle()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        try:
            started = self.manager.save(step, args=args, force=force)
        except OSError as e:  # the synchronous part of the write (directories, metadata)
            raise self._save_error(step, e) from e
        if started:
            self._pending = step
        return started

    def wait(self) -> None:
        """Block until pending saves are on disk and checksummed; raises CheckpointSaveError when one failed."""
        self._settle()

    def _settle(self) -> None:
        """Wait for the pending save, surface its error, write its checksum once finalised."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the write raised is the cause to report
            raise self._save_error(step, e) from e
        if step is None or jax.process_index() != 0:
            return
        step_dir = self.directory / str(step)
        if step_dir.is_dir() and not integrity.has_sums(step_dir):
            try:
                integrity.write_sums(step_dir)
            except OSError as e:  # the step itself is on disk; only its checksum is missing
                raise self._save_error(step, e) from e

    def _save_error(self, step: int | None, cause: BaseException) -> CheckpointSaveError:
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        err = CheckpointSaveError(
            f"{what} could not be written to {self.directory}: {integrity.describe(cause)}; the run stopped "
            "(free space or fix the directory, then rerun: it resumes from the last good checkpoint)"
        )
        self._reported = err
        return err

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state, data_iterator, start_over: bool = False):
        """Restore the newest readable step into `data_iterator` and a state shaped and sharded
        like `abstract_state` (ShapeDtypeStructs with shardings); (None, None) when none exists.

        Returns (step, state). Unreadable steps are skipped, newest first, with a warning (see
        the module docstring); when none is readable raises NoReadableCheckpoint, or with
        `start_over` sets them aside and returns (None, None) with the iterator untouched.
        """
        failed: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            snapshot = _snapshot(data_iterator)
            try:
                verified = integrity.verify(self.directory / str(step))
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                _put_back(data_iterator, snapshot)
                failed.append((step, integrity.describe(e)))
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); trying the previous one",
                    step,
                    self.directory,
                    failed[-1][1],
                )
                continue
            if not verified:
                log.warning(
                    "checkpoint step %d in %s has no %s (saved before checksums, or the run stopped between its "
                    "save and its checksum): restored unverified",
                    step,
                    self.directory,
                    integrity.SUMS_NAME,
                )
            self._set_aside_all(failed, f"step {step} restored instead")
            return step, restored.state
        if failed:
            self._none_readable(failed, start_over)
        return None, None

    def _none_readable(self, failed: list[tuple[int, str]], start_over: bool) -> None:
        listing = "; ".join(f"step {step}: {why}" for step, why in failed)
        if not start_over:
            raise NoReadableCheckpoint(
                f"no readable checkpoint in {self.directory} ({listing}); nothing was moved. To start over at step 0 "
                "(the unreadable steps are kept, renamed unreadable-<step>-<time>), rerun with "
                "--config.start_over=True, or use a new workdir"
            )
        log.warning("starting over at step 0: no readable checkpoint (%s)", listing)
        self._set_aside_all(failed, "starting over at step 0")

    def _set_aside_all(self, failed: list[tuple[int, str]], why: str) -> None:
        for step, cause in failed:
            aside = self._set_aside(step)
            log.warning("checkpoint step %d set aside as %s (%s; %s)", step, aside, cause, why)

    def _set_aside(self, step: int) -> pathlib.Path:
        """Move an unreadable step out of the manager's way (kept for inspection, not deleted)."""
        aside = self.directory / f"unreadable-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def close(self, raise_errors: bool = True) -> None:
        """Wait for pending saves (writing their checksums) and release resources.

        Raises CheckpointSaveError for a failed save not reported yet, unless `raise_errors`
        is False (use that in a `finally` after another exception: the error is only logged).
        A save error that `save` or `wait` already raised is never raised again."""
        already_reported = self._reported is not None
        error = None
        try:
            self._settle()
        except CheckpointSaveError as e:
            error = e
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001 - the first error wins; this one is only logged
            log.warning("closing the checkpoints in %s: %s", self.directory, integrity.describe(e))
        if error is None:
            return
        if raise_errors and not already_reported:
            raise error
        log.error("%s", error)


def _snapshot(data_iterator):
    get_state = getattr(data_iterator, "get_state", None)
    return get_state() if get_state is not None else None


def _put_back(data_iterator, snapshot) -> None:
    if snapshot is not None:
        data_iterator.set_state(snapshot)
