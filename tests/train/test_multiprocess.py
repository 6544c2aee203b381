"""Two processes on this machine (2 x 4 CPU devices, jax.distributed with a localhost
coordinator) train one model together, checkpoint it together and agree on every step."""

import pathlib
import re

from multiprocess_helpers import run_processes

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = [
    "--config",
    str(ROOT / "configs" / "pretrain_tiny.py"),
    "--no-progress",
    "--config.log_every=1",
    "--config.eval_every=0",
    "--config.checkpoint_every=4",
    "--config.data.batch_size=8",
]


def run_two(workdir, steps: int, *extra: str) -> list[str]:
    return run_processes(["train", "--workdir", str(workdir), *ARGS, f"--config.steps={steps}", *extra])


def final_line(output: str, process: int) -> tuple[int, str]:
    step, loss = re.search(rf"process {process}: step (\d+), loss ([-0-9.e]+|nan)", output).groups()
    return int(step), loss


def test_two_processes_train_checkpoint_resume_and_agree(tmp_path):
    first = run_two(tmp_path, steps=8)
    (s0, loss0), (s1, loss1) = final_line(first[0], 0), final_line(first[1], 1)
    assert s0 == s1 == 8 and loss0 == loss1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]
    assert (tmp_path / "model" / "polar_model.json").exists()

    # The same workdir: both processes resume from step 8. More steps change the LR schedule, so the run
    # says it knowingly (a resume with a config that changes the result is otherwise refused).
    second = run_two(tmp_path, 12, "--config.allow_changed_config=True")
    assert all("resumed from" in out for out in second)
    (s0, loss0), (s1, loss1) = final_line(second[0], 0), final_line(second[1], 1)
    assert s0 == s1 == 12 and loss0 == loss1
    steps = [int(line.split(",")[0].split(":")[1]) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
