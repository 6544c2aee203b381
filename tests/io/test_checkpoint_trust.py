"""Checkpoints you can trust (issue 15, item 7): checksums verified at restore, a failed restore
moves nothing (state and data iterator together or not at all), no readable checkpoint is an
error unless starting over, and a failed asynchronous save stops the run with one clear error."""

import errno
import logging
import os
import pathlib
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from polar_jax.errors import UserError
from polar_jax.io import checkpoint, checkpoint_integrity
from polar_jax.io.checkpoint import Checkpointer, CheckpointSaveError, NoReadableCheckpoint
from polar_jax.train import loop

N = 4096  # random float32s: incompressible, so a flipped byte lands in the array's data


def numbers():
    """A Grain iterator 0, 1, 2, ... whose position is saved with each checkpoint."""
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def state_at(step: int) -> dict:
    return {"w": jnp.asarray(np.random.default_rng(step).normal(size=N).astype(np.float32))}


def abstract() -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct((N,), jnp.float32, sharding=sharding)}


def save_steps(workdir, steps=(1, 2)) -> None:
    """Save `steps`; at step s the iterator has yielded 0..s-1 (so it next yields s)."""
    ckpt, data = Checkpointer(workdir), numbers()
    for step in steps:
        while next(data) < step - 1:
            pass
        ckpt.save(step, state_at(step), data, {"step": step}, force=True)
    ckpt.close()


def step_dir(workdir, step) -> pathlib.Path:
    return pathlib.Path(workdir) / "checkpoints" / str(step)


def names(workdir) -> list[str]:
    return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


def corrupt_state(workdir, step) -> None:
    """Overwrite the array data of `step` (Orbax fails reading it: a byte range out of range)."""
    for f in (step_dir(workdir, step) / "state" / "ocdbt.process_0").rglob("*"):
        if f.is_file():
            f.write_bytes(b"corrupted")


def test_every_file_of_a_finalised_step_is_checksummed(tmp_path):
    save_steps(tmp_path)
    for step in (1, 2):
        assert checkpoint_integrity.verify(step_dir(tmp_path, step)) is True
    listed = (step_dir(tmp_path, 2) / checkpoint_integrity.SUMS_NAME).read_text()
    assert "state/_METADATA" in listed and "data/process_0-of-1.json" in listed


def test_a_flipped_byte_in_the_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    save_steps(tmp_path)
    files = [f for f in step_dir(tmp_path, 2).rglob("*") if f.is_file()]
    biggest = max(files, key=lambda f: f.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, size unchanged: Orbax alone restores it silently
    biggest.write_bytes(bytes(raw))
    data = numbers()
    with caplog.at_level(logging.WARNING):
        step, state = Checkpointer(tmp_path).restore_latest(abstract(), data)
    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(state_at(1)["w"]))
    assert next(data) == 1  # the iterator is where step 1 left it
    assert "ChecksumMismatch" in caplog.text and biggest.name in caplog.text
    assert "checkpoint step 2 set aside" in caplog.text
    assert [n for n in names(tmp_path) if not n.startswith("unreadable-2-")] == ["1"]


def test_a_step_without_checksum_is_restored_with_a_warning(tmp_path, caplog):
    save_steps(tmp_path)
    (step_dir(tmp_path, 2) / checkpoint_integrity.SUMS_NAME).unlink(
        missing_ok=True
    )  # killed between finalise and checksum
    with caplog.at_level(logging.WARNING):
        step, state = Checkpointer(tmp_path).restore_latest(abstract(), numbers())
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(state_at(2)["w"]))
    assert "checkpoint step 2" in caplog.text and "restored unverified" in caplog.text


def test_the_warning_names_the_real_cause_not_a_pybind_object(tmp_path, caplog):
    save_steps(tmp_path)
    (step_dir(tmp_path, 2) / checkpoint_integrity.SUMS_NAME).unlink(missing_ok=True)  # so Orbax itself meets the damage
    corrupt_state(tmp_path, 2)
    with caplog.at_level(logging.WARNING):
        step, _ = Checkpointer(tmp_path).restore_latest(abstract(), numbers())
    assert step == 1
    warning = next(r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage())
    assert "OUT_OF_RANGE" in warning and "pybind11" not in warning and "bound method" not in warning


def test_describe_walks_past_noise_to_the_cause():
    try:
        try:
            raise ValueError('OUT_OF_RANGE: Error reading "w/0": Requested byte range [0, 15) is not valid')
        except ValueError as inner:
            raise Exception(
                "Encountered error while reading array index. See full TensorStore details: "
                "<bound method pybind11_detail_function_record.spec of TensorStore({...})>"
            ) from inner
    except Exception as e:  # noqa: BLE001
        text = checkpoint_integrity.describe(e)
    assert text == (
        "Exception: Encountered error while reading array index. <- "
        'ValueError: OUT_OF_RANGE: Error reading "w/0": Requested byte range [0, 15) is not valid'
    )
    assert checkpoint_integrity.describe(OSError(errno.ENOSPC, "No space left on device")) == (
        "OSError: [Errno 28] No space left on device"
    )


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
    save_steps(tmp_path)
    corrupt_state(tmp_path, 1)
    corrupt_state(tmp_path, 2)
    before = names(tmp_path)
    data = numbers()
    with pytest.raises(NoReadableCheckpoint) as raised:
        Checkpointer(tmp_path).restore_latest(abstract(), data)
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert "step 2: ChecksumMismatch" in message and "step 1: ChecksumMismatch" in message
    assert "--config.start_over=True" in message and "nothing was moved" in message
    assert names(tmp_path) == before == ["1", "2"]
    assert next(data) == 0  # the iterator did not move either


def test_a_failed_restore_puts_the_data_iterator_back(tmp_path, caplog):
    save_steps(tmp_path)
    for step in (1, 2):  # unverified steps whose data item reads fine and whose state does not
        (step_dir(tmp_path, step) / checkpoint_integrity.SUMS_NAME).unlink(missing_ok=True)
        corrupt_state(tmp_path, step)
    data = numbers()
    assert [next(data) for _ in range(10)] == list(range(10))
    with caplog.at_level(logging.WARNING):
        assert Checkpointer(tmp_path).restore_latest(abstract(), data, start_over=True) == (None, None)
    assert next(data) == 10  # where it was before the two failed attempts (not step 1's or 2's position)
    assert "starting over at step 0: no readable checkpoint (step 2: " in caplog.text
    assert sorted(n.split("-")[1] for n in names(tmp_path)) == ["1", "2"]  # set aside: new saves can't collide


def fail_json_writes(monkeypatch):
    """Make the background write of the config item fail as on a full disk."""

    async def no_space(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", no_space)


def test_a_failed_async_save_stops_the_next_save_and_a_rerun_resumes(tmp_path, monkeypatch):
    ckpt, data = Checkpointer(tmp_path), numbers()
    ckpt.save(1, state_at(1), data, {}, force=True)
    ckpt.wait()
    with monkeypatch.context() as m:
        fail_json_writes(m)
        assert ckpt.save(2, state_at(2), data, {}, force=True)  # started; fails in the background
        with pytest.raises(CheckpointSaveError) as raised:
            ckpt.save(3, state_at(3), data, {}, force=True)
    message = str(raised.value)
    assert message.startswith(f"checkpoint step 2 could not be written to {ckpt.directory}: ")
    assert "No space left on device" in message and "\n" not in message
    ckpt.close()  # already reported: no second error
    # The later run is a new process, as a real rerun is (Orbax keeps per-process state of the failed save).
    rerun = subprocess.run(
        [sys.executable, "-c", RERUN, str(tmp_path)], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.split() == ["restored", "1", "equal", "True", "steps", "[1,2]", "verified", "True"]


RERUN = f"""
import sys
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import numpy as np
from test_checkpoint_trust import Checkpointer, abstract, numbers, state_at, step_dir, checkpoint_integrity
ckpt = Checkpointer(sys.argv[1])
step, state = ckpt.restore_latest(abstract(), numbers())
equal = bool((np.asarray(state["w"]) == np.asarray(state_at(1)["w"])).all())
ckpt.save(2, state_at(2), numbers(), {{}}, force=True)
ckpt.close()
steps = str(ckpt.steps()).replace(" ", "")
print("restored", step, "equal", equal, "steps", steps, "verified", checkpoint_integrity.verify(step_dir(sys.argv[1], 2)))
"""


def test_close_reports_a_failed_last_save_once_or_only_logs_it(tmp_path, monkeypatch, caplog):
    fail_json_writes(monkeypatch)
    ckpt = Checkpointer(tmp_path / "a")
    ckpt.save(5, state_at(5), numbers(), {}, force=True)
    with pytest.raises(CheckpointSaveError, match="checkpoint step 5 could not be written"):
        ckpt.close()
    ckpt.close()  # a second close (a `finally` after the error) raises nothing
    quiet = Checkpointer(tmp_path / "b")
    quiet.save(5, state_at(5), numbers(), {}, force=True)
    with caplog.at_level(logging.ERROR, logger=checkpoint.__name__):
        quiet.close(raise_errors=False)  # after another exception: logged, never hides it
    assert "checkpoint step 5 could not be written" in caplog.text


def test_the_run_loop_stops_with_one_save_error(tmp_path, monkeypatch):
    cfg = ml_collections.ConfigDict(
        dict(
            mesh=dict(data=-1, fsdp=1, tensor=1),
            keep_checkpoints=3,
            log_every=1,
            checkpoint_every=2,
            checkpoint_minutes=1e9,
            max_bad_steps=2,
        )
    )
    fail_json_writes(monkeypatch)
    data = numbers()

    def step_fn(state, index):
        return {"w": state["w"] + next(data)}, {"loss": 0.0, "bad_streak": jnp.asarray(0)}

    with pytest.raises(CheckpointSaveError) as raised:  # raised by the save at step 4, not again by the close
        with loop.Run(cfg, tmp_path, inputs={}, total=6, progress=False) as r:
            state = r.restore_or_init(abstract(), lambda: state_at(0), data)
            r.loop(step_fn, state, data, log_spec=loop.Log())
    assert str(raised.value).startswith("checkpoint step 2 could not be written to ")
    assert r.step == 4 and "No space left on device" in str(raised.value)
