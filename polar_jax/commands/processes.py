"""The multi-process flags of the commands that run on several processes (`train`, `rft`,
`synth`, `score`, `evaluate`), defined once here.

    --multihost                                   JAX detects the cluster (TPU pod slice, Slurm, ...)
    --coordinator HOST:PORT --num-processes N --process-id I     by hand, e.g. N processes on one machine

Every process runs the same command line but its own --process-id; what each one does is the
command's to say (`train`: a data-parallel share of each batch; `rft`: its share of each
iteration's rollouts and scoring, the update over every device; `synth`: its share of the shards;
`score` / `evaluate`: its share of the scoring batches, process 0 writing the one output).
"""

from __future__ import annotations

import argparse

from polar_jax import parallel
from polar_jax.errors import UserError


class ProcessFlagError(UserError, ValueError):
    """The multi-process flags disagree (the message names the flag)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --multihost, --coordinator, --num-processes and --process-id to a command's parser."""
    group = parser.add_argument_group("multi-process (every process runs the same command, each its --process-id)")
    group.add_argument(
        "--multihost",
        action="store_true",
        help="one process per host of a TPU pod slice or Slurm job (JAX detects the cluster)",
    )
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="multi-process by hand: process 0's")
    group.add_argument("--num-processes", type=int, default=None, metavar="N", help="multi-process by hand: how many")
    group.add_argument(
        "--process-id", type=int, default=None, metavar="I", help="multi-process by hand: this process's, 0 .. N-1"
    )


def check(args: argparse.Namespace) -> None:
    """Refuse flags that cannot describe a run, naming the flag: a count below 1, an id outside
    0 .. N-1, a coordinator without a port, or a by-hand run missing one of its three flags."""
    n, i, coordinator = args.num_processes, args.process_id, args.coordinator
    if n is not None and n < 1:
        raise ProcessFlagError(f"--num-processes {n}: must be at least 1")
    if i is not None and i < 0:
        raise ProcessFlagError(f"--process-id {i}: must be at least 0")
    if n is not None and i is not None and i >= n:
        raise ProcessFlagError(f"--process-id {i} is out of range for --num-processes {n}: give 0 .. {n - 1}")
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not (sep and host and port.isdigit()):
            raise ProcessFlagError(f"--coordinator {coordinator!r}: give HOST:PORT of process 0 (e.g. localhost:1234)")
    if args.multihost or n == 1:
        return  # JAX fills in what is not given / one process: nothing to join
    given = {"--coordinator": coordinator, "--num-processes": n, "--process-id": i}
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) < len(given) and missing:
        raise ProcessFlagError(
            f"{', '.join(missing)} missing: a multi-process run by hand needs --coordinator, --num-processes and "
            "--process-id on every process (or --multihost on a cluster JAX detects)"
        )


def join(args: argparse.Namespace) -> None:
    """Check the flags and join the other processes (`parallel.initialize_distributed`); nothing
    to do for one process. Call it before anything touches a device."""
    check(args)
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.multihost)
