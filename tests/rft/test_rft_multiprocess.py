"""RFT on two processes of this machine (2 x 4 CPU devices, jax.distributed with a localhost
coordinator) equals RFT on one process of 8 devices, for PPO (gae) and the group baseline: the
same metrics.jsonl (untimed keys), final policy and rft_results.json to float32 rounding
(`TOLERANCE`: rtol = atol = 1e-6); a SIGTERM to one
process stops both after the same iteration, and a resume on both equals the uninterrupted
two-process run bit for bit."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from multiprocess_helpers import free_port, run_processes

from polar_jax.io import models
from tests.rft.test_rft_loop import CONFIG, TIMED

pytestmark = pytest.mark.slow

ITERATIONS = 3
# The group baseline on references the target samples here (data.kind=policy_samples): process 0 alone
# samples and writes them, the other reads its files.
GROUP = """
    c.algorithm.estimator = "group"
    c.rollout.samples_per_prompt = 2
    c.data.kind, c.data.prompts, c.data.heldout_every = "policy_samples", {prompts!r}, 3
    c.data.train_prompts, c.data.eval_prompts, c.target.max_new_tokens = 16, 8, 8
    c.reward.shared_prefix = False  # one row per rollout: scores bit-identical on any mesh (see TOLERANCE)
    return c
"""


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The module's runs (subprocesses) share JAX's persistent compilation cache: the stopped and
    resumed two-process runs load the uninterrupted run's programs instead of compiling them again
    (the same executables, so the same results; only the test's time changes)."""
    cache = tmp_path_factory.mktemp("rft_multiprocess_jax_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        yield


@pytest.fixture(scope="module")
def config_files(tiny, rft_jsonl, tmp_path_factory):
    """{"gae": path, "group": path}: the loop test's tiny config, PPO and the group baseline."""
    root = tmp_path_factory.mktemp("rft_multiprocess_config")
    text = CONFIG.format(
        policy=tiny["policy"],
        reward=tiny["reward"],
        target=tiny["target"],
        train=rft_jsonl[0],
        eval=rft_jsonl[1],
        iterations=ITERATIONS,
    )
    files = {"gae": root / "gae.py", "group": root / "group.py"}
    files["gae"].write_text(text)
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"Lists {i}\n" for i in range(30)))
    files["group"].write_text(text.replace("\n    return c\n", GROUP.format(prompts=str(prompts))))
    return {k: str(v) for k, v in files.items()}


def args(config_file, workdir) -> list[str]:
    return ["rft", "--config", config_file, "--workdir", str(workdir), "--no-progress"]


def run_one(config_file, workdir, devices: int = 8) -> str:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "polar_jax", *args(config_file, workdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def logged(workdir) -> list[dict]:
    """metrics.jsonl without the wall-clock keys and the engine's own figures (slots per process differ)."""
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMED and not k.startswith("rollout_")} for r in rows]


# One process of 8 devices vs two of 4: how close (None: bit for bit). The update's gradient sums over
# the devices of two processes add in another order than within one process (float32 rounding,
# ~1e-7). The group baseline scores one row per rollout (reward.shared_prefix=False): those scores
# are bit-identical on a mesh of any size, while shared-prefix scores differ in their last bit
# between 4 and 8 devices (tests/rft/test_rft_reward_mesh.py), which the z-score within a group of
# two near-tied rollouts amplifies to ~1e-5 in the advantages.
TOLERANCE = {"gae": dict(rtol=1e-6, atol=1e-6), "group": dict(rtol=1e-6, atol=1e-6)}


def assert_same_run(a, b, tolerance: dict | None = None):
    """The same metrics, final policy and results: bit for bit, or within `tolerance` (assert_allclose's)."""

    def same(x, y):
        if tolerance is None:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, **tolerance)

    rows_a, rows_b = logged(a), logged(b)
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ra:
            same(ra[key], rb[key])
    for x, y in zip(
        jax.tree.leaves(models.load_model(pathlib.Path(a) / "policy").params),
        jax.tree.leaves(models.load_model(pathlib.Path(b) / "policy").params),
        strict=True,
    ):
        same(x, y)
    ra, rb = (json.loads((pathlib.Path(w) / "rft_results.json").read_text()) for w in (a, b))
    for r in (ra, rb):
        r.pop("run_seconds"), r.pop("policy")
    assert sorted(ra) == sorted(rb)
    for key in ra:
        if isinstance(ra[key], float):
            same(ra[key], rb[key])
        else:
            assert ra[key] == rb[key], key


def stopped_at(output: str, process: int) -> tuple[int, str]:
    step, why = re.search(rf"process {process}: stopped at iteration (\d+) \((\w+)\)", output).groups()
    return int(step), why


@pytest.mark.parametrize("estimator", ["gae", "group"])
def test_two_processes_equal_one_process_of_all_devices(config_files, estimator, tmp_path):
    run_one(config_files[estimator], tmp_path / "one")
    outputs = run_processes(args(config_files[estimator], tmp_path / "two"))
    assert [stopped_at(out, i) for i, out in enumerate(outputs)] == [(ITERATIONS, "done")] * 2
    saved = sorted(int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2, ITERATIONS]
    assert_same_run(tmp_path / "one", tmp_path / "two", TOLERANCE[estimator])
    if estimator == "group":  # the references: sampled and written by process 0 alone, those of one process
        for split in ("train", "eval"):
            one, two = (tmp_path / w / "data" / f"{split}.jsonl" for w in ("one", "two"))
            assert two.read_bytes() == one.read_bytes() and len(two.read_text().splitlines()) > 2
        assert [len(re.findall(r"sampled \d+ train references", out)) for out in outputs] == [1, 0]
    if estimator == "gae":  # the reference of the stop-and-resume test
        (tmp_path.parent / "rft_two_gae").symlink_to(tmp_path / "two")


def test_sigterm_to_one_process_stops_both_and_a_resume_equals_the_uninterrupted_run(config_files, tmp_path):
    reference = tmp_path.parent / "rft_two_gae"
    if not reference.exists():  # this test alone: the uninterrupted two-process run
        run_processes(args(config_files["gae"], reference))
    workdir = tmp_path / "stopped"
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "polar_jax", *args(config_files["gae"], workdir)]
            + ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        metrics_file, deadline = workdir / "metrics.jsonl", time.monotonic() + 300
        while not (metrics_file.exists() and '"reward"' in metrics_file.read_text()):  # iteration 1 is logged
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)  # process 1 only
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], outputs[1][-3000:]
    (k0, why0), (k1, why1) = stopped_at(outputs[0], 0), stopped_at(outputs[1], 1)
    assert k0 == k1 < ITERATIONS and why0 == why1 == "signal"
    assert (workdir / "checkpoints" / str(k0)).is_dir() and not (workdir / "policy").exists()

    resumed = run_processes(args(config_files["gae"], workdir))
    assert all("resumed from" in out for out in resumed)
    assert [stopped_at(out, i) for i, out in enumerate(resumed)] == [(ITERATIONS, "done")] * 2
    assert_same_run(workdir, reference)
