"""Every RL algorithm on the demo, side by side: the held-out POLAR reward and the target's
log-likelihood before and after, the trainable parameters and the seconds of each run.

    python -m polar_jax demo --workdir runs/demo                        # first: the models
    python -m polar_jax.bench.rft_algorithms                            # all configs/rft_demo*.py below
    python -m polar_jax.bench.rft_algorithms --only grpo lora --seed 1  # some of them, another seed

Each config (`configs/rft_demo.py` = PPO, `configs/rft_demo_<name>.py` for the others) runs as
its own `python -m polar_jax rft` process in ROOT/<name>-seed<S> (log beside it, as <dir>.log);
a directory that already holds rft_results.json is read, not rerun (--rerun deletes and redoes it;
a run stopped part-way resumes). The
runs are sequential so that their seconds compare; each is about 2 to 4 minutes on 2 CPU cores.
LoRA's line is compared with PPO's (the same run with full fine-tuning): the fraction of the
reward gain it reaches with what fraction of the trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

from polar_jax.bench.common import print_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
# name -> config file; "ppo" is the released recipe's estimator (GAE with a critic), full fine-tuning
CONFIGS = {
    "ppo": "configs/rft_demo.py",
    "grpo": "configs/rft_demo_grpo.py",
    "dr_grpo": "configs/rft_demo_dr_grpo.py",
    "dapo": "configs/rft_demo_dapo.py",
    "gspo": "configs/rft_demo_gspo.py",
    "rloo": "configs/rft_demo_rloo.py",
    "reinforce_pp": "configs/rft_demo_reinforce_pp.py",
    "lora": "configs/rft_demo_lora.py",
}


def run_one(name: str, demo_dir: str, workdir: pathlib.Path, seed: int, rerun: bool) -> dict:
    """Run (or read) one config's RFT; its rft_results.json, config.json's algorithm and the run's seconds."""
    results_file = workdir / "rft_results.json"
    if rerun or not results_file.exists():
        if rerun and workdir.exists():  # otherwise a run that stopped part-way resumes
            shutil.rmtree(workdir)
        workdir.parent.mkdir(parents=True, exist_ok=True)
        log_file = workdir.with_name(workdir.name + ".log")
        cmd = [sys.executable, "-m", "polar_jax", "rft", "--config", f"{ROOT / CONFIGS[name]}:{demo_dir}"]
        cmd += ["--workdir", str(workdir), "--no-progress", f"--config.seed={seed}"]
        print(f"{name}: {' '.join(cmd[1:])}  (log: {log_file})", flush=True)
        start = time.perf_counter()
        with log_file.open("w") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{name}: rft exited {done.returncode}; see {log_file}")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    results = json.loads(results_file.read_text())
    config = json.loads((workdir / "config.json").read_text())
    return dict(results, config=config)


def row(name: str, r: dict) -> dict:
    """One table row from a run's results."""
    c = r["config"]
    estimator = c["algorithm"]["estimator"]
    return {
        "algorithm": name,
        "estimator / loss": f"{estimator} / {c['algorithm']['loss']}",
        "critic": "yes" if estimator == "gae" else "no",
        "group": c["rollout"]["samples_per_prompt"],
        "trainable": r.get("actor_trainable_params", "?"),
        "reward before -> after": f"{r['reward_before']:.2f} -> {r['reward_after']:.2f}",
        "gain": f"{r['reward_after'] - r['reward_before']:+.2f}",
        "target's own": f"{r['target_samples_reward']:.2f}" if "target_samples_reward" in r else "",
        "target loglik before -> after": f"{r['target_loglik_before']:.2f} -> {r['target_loglik_after']:.2f}",
        "loglik gain": f"{r['target_loglik_after'] - r['target_loglik_before']:+.2f}",
        "length before -> after": f"{r['response_length_before']:.1f} -> {r['response_length_after']:.1f}",
        "seconds": f"{r['run_seconds']:.0f}" if "run_seconds" in r else "?",
    }


def main(argv=None) -> None:
    """Run the chosen algorithms' demo configs one after another and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", default="runs/demo", help="where `python -m polar_jax demo` wrote its models")
    ap.add_argument("--root", default="runs/rft_algorithms", help="the runs' directories go here")
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rerun", action="store_true", help="run again even where rft_results.json exists")
    args = ap.parse_args(argv)
    if not (pathlib.Path(args.demo_dir) / "rm" / "model").exists():
        raise SystemExit(f"no demo models in {args.demo_dir}: run `python -m polar_jax demo --workdir {args.demo_dir}`")
    results = {}
    for name in args.only:
        workdir = pathlib.Path(args.root) / f"{name}-seed{args.seed}"
        results[name] = run_one(name, args.demo_dir, workdir.resolve(), args.seed, args.rerun)
    print_table([row(n, r) for n, r in results.items()], f"RFT on the demo, seed {args.seed} (held out)")
    if "lora" in results and "ppo" in results:
        gain = {n: results[n]["reward_after"] - results[n]["reward_before"] for n in ("lora", "ppo")}
        params = {n: results[n].get("actor_trainable_params") for n in ("lora", "ppo")}
        share = f"{params['lora'] / params['ppo']:.1%}" if all(params.values()) else "?"
        print(
            f"\nLoRA vs full fine-tuning (PPO): {gain['lora'] / gain['ppo']:.0%} of the reward gain, {share} of the trainable parameters"
        )


if __name__ == "__main__":
    main()
