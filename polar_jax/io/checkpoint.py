"""Training checkpoints: one Orbax step directory holds the train state (params, optimiser
state, step, RNG), the Grain iterator state and the resolved config, so a restart resumes
exactly where the run stopped.

Saves are asynchronous (training continues while the state is written). A latest step that
cannot be read (a half-written or corrupted directory) is skipped with a warning and the
previous one is restored; restoring onto another mesh only needs other target shardings.
"""

from __future__ import annotations

import logging
import pathlib
import time

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Save / restore {state, data iterator, config} under `DIR/checkpoints/<step>`."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, data_iterator, config: dict, force: bool = False) -> bool:
        """Start saving step `step` (asynchronously); returns whether a save was started."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config),
        )
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        """Block until pending saves are on disk."""
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state, data_iterator):
        """Restore the newest readable step into `data_iterator` and a state shaped and sharded
        like `abstract_state` (ShapeDtypeStructs with shardings); (None, None) when none exists.

        Returns (step, state). Unreadable steps are skipped, newest first, with a warning.
        """
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
                return step, restored.state
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint falls back
                aside = self._set_aside(step)
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s: %s); moved to %s; trying the previous one",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                    aside.name,
                )
        return None, None

    def _set_aside(self, step: int) -> pathlib.Path:
        """Move an unreadable step out of the manager's way (kept for inspection, not deleted)."""
        aside = self.directory / f"unreadable-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def close(self) -> None:
        """Wait for pending saves and release resources."""
        self.manager.wait_until_finished()
        self.manager.close()
