"""The run loop: a signal that lands on a checkpoint step saves that step once and the
resumed run equals an uninterrupted one, bit for bit (issue 14)."""

import os
import signal

import numpy as np

from polar_jax.io import checkpoint
from polar_jax.train import setup, trainer
from tests.train.test_trainer import config, final_params, losses


def test_signal_on_a_save_step_saves_once_and_resumes_bit_exactly(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert trainer.train(config(), reference, progress=False).stopped_by == "done"

    saved = []
    real_save = checkpoint.Checkpointer.save

    def counting_save(self, step, *args, **kwargs):
        saved.append(step)
        return real_save(self, step, *args, **kwargs)

    real_jit = setup.jit_train_step

    def signalling_jit(*args, **kwargs):
        train_step, calls = real_jit(*args, **kwargs), [0]

        def step_then_signal(state, batch):
            out = train_step(state, batch)
            calls[0] += 1
            if calls[0] == 8:  # step 8 is a checkpoint step (checkpoint_every=4)
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return step_then_signal

    monkeypatch.setattr(checkpoint.Checkpointer, "save", counting_save)
    monkeypatch.setattr(setup, "jit_train_step", signalling_jit)
    interrupted = tmp_path / "interrupted"
    result = trainer.train(config(), interrupted, progress=False)
    assert (result.step, result.stopped_by) == (8, "signal")
    assert saved == [4, 8]  # step 8 once: the periodic save and the save on signal are one
    monkeypatch.undo()

    resumed = trainer.train(config(), interrupted, progress=False)
    assert (resumed.step, resumed.stopped_by) == (12, "done")
    assert losses(interrupted) == losses(reference)
    for a, b in zip(final_params(interrupted), final_params(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
