"""What a finished RFT run leaves in its workdir besides metrics and checkpoints: policy/ (the
trained policy as an HF directory), with policy.lora policy_lora/ (the adapters as a PEFT
directory), and rft_results.json (held-out measures before and after)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from polar_jax.io import atomic, hf, peft, tokenizers
from polar_jax.io.model import Model
from polar_jax.rft.setup import Models

RESULTS_FILE = "rft_results.json"
ADAPTERS_DIR = "policy_lora"
EVAL_BEFORE_FILE = "eval_before.json"


def save_policy(m: Models, params, out_dir: pathlib.Path) -> pathlib.Path:
    """The trained policy as an HF causal-LM directory with its tokenizer (and the base's remote code)."""
    policy = m.policy
    with atomic.directory(out_dir) as tmp:
        hf.save_hf(
            Model(policy.cfg, jax.tree.map(np.asarray, params), policy.family, policy.hf_config),
            tmp,
            head="lm",
            code_from=m.policy_source or None,
        )
        if m.policy_source:
            tokenizers.copy_tokenizer(m.policy_source, tmp)
        else:
            m.policy_tokenizer.save_pretrained(str(tmp))
    return out_dir


def save_adapters(m: Models, adapters, lora, out_dir: pathlib.Path) -> pathlib.Path:
    """The trained LoRA adapters as a PEFT directory (`io.peft`) for the initial policy (`policy.init`)."""
    policy = m.policy
    with atomic.directory(out_dir) as tmp:
        host = jax.tree.map(np.asarray, adapters)
        peft.save_adapters(policy.cfg, policy.family, host, lora, tmp, base_model=m.policy_source)
    return out_dir


def write_results(
    workdir: pathlib.Path,
    evaluate_before: Callable[[], dict],
    heldout_prompts: int,
    after: dict,
    config,
    data_counts: dict,
    extra: dict | None = None,
) -> dict:
    """rft_results.json: the held-out measures before (EVAL_BEFORE_FILE, else `evaluate_before()`)
    and after, the training reward curve's ends, and `extra` (the trainer's: the target's own
    samples' measures, `Runner.target_baseline`, the reward-gaming check; the actor's trainable
    parameter count; the run's seconds)."""
    before_file = workdir / EVAL_BEFORE_FILE
    before = json.loads(before_file.read_text()) if before_file.exists() else evaluate_before()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curve = [r["reward"] for r in rows if "reward" in r]
    window = max(1, min(10, len(curve) // 4))
    results = {f"{k}_{when}": v[k] for k in before for when, v in (("before", before), ("after", after))}
    results.update(
        heldout_prompts=heldout_prompts,
        iterations=config.iterations,
        train_reward_first=float(np.mean(curve[:window])) if curve else None,
        train_reward_last=float(np.mean(curve[-window:])) if curve else None,
        train_reward_window=window,
        policy=str(workdir / "policy"),
        **{f"data_{k}": v for k, v in data_counts.items()},
        **(extra or {}),
    )
    (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    return results
