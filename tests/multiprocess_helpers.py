"""Helpers of the tests that run a command on several processes of this machine (jax.distributed
with a localhost coordinator, each process with its own simulated CPU devices)."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on localhost that is free now (for the coordinator of process 0)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(argv: list[str], num_processes: int = 2, devices: int = 4, timeout: float = 400) -> list[str]:
    """Run `python -m polar_jax ARGV` as `num_processes` processes joined by --coordinator /
    --num-processes / --process-id, each with `devices` CPU devices; wait for all, assert each
    exited 0 and return their outputs (stdout and stderr together), by process id."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "polar_jax", *argv, "--coordinator", f"localhost:{port}"]
            + ["--num-processes", str(num_processes), "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # one failed: the others may wait for it at a barrier
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return outputs
