"""The demo at a small size: every stage runs, results are written, a rerun resumes."""

import json

import pytest

from polar_jax import demo
from polar_jax.synth import demo_lms

SMALL = demo.DemoConfig(
    tokenizer_vocab=512,
    lms=(
        demo_lms.DemoLMSpec(seed=0, save_at=(5, 40), batch_size=8, seq_len=32),
        demo_lms.DemoLMSpec(seed=1, save_at=(20,), batch_size=8, seq_len=32),
    ),
    smollm2=(),  # SmolLM2 sampling is minutes on a CPU; the full demo covers it
    heldout_policies=("lm1-step20",),
    max_new_tokens=8,
    prompt_tokens=(2, 8),
    triplets=(48, 16, 16),
    shard_size=16,
    sample_batch=16,
    rm_steps=12,
    rm_size=(32, 1, 2),
)


@pytest.mark.slow
def test_small_demo_runs_every_stage_and_a_rerun_resumes(tmp_path, monkeypatch):
    results = demo.run_demo(tmp_path, SMALL, progress=False)
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["heldout_prompt_accuracy"] == results["heldout_prompt_accuracy"]
    assert 0.0 <= saved["heldout_prompt_accuracy"] <= 1.0 and 0.0 <= saved["heldout_policy_accuracy"] <= 1.0
    assert saved["policies"] == {"train": ["lm0-step5", "lm0-step40"], "heldout": ["lm1-step20"]}
    assert saved["heldout_prompts"]["all"]["n"] == saved["triplets"]["heldout_prompts"] > 0
    # Held-out prompts involve training policies only; held-out-policy triplets always a held-out one.
    assert saved["heldout_prompts"]["unseen_policies"]["n"] == 0
    assert saved["heldout_policies"]["seen_policies"]["n"] == 0
    assert saved["heldout_policies"]["unseen_policies"]["n"] == saved["triplets"]["heldout_policies"]
    assert saved["reward_model"]["steps"] == SMALL.rm_steps
    printed = demo.format_results(saved)
    assert "held-out prompts, training policies" in printed
    assert f"rft --config configs/rft_demo.py:{tmp_path} " in printed, printed
    assert f"--config.data_dir={tmp_path / 'prepared'} " in printed

    # A rerun trains nothing again: no LM training, no sampling, no training steps.
    monkeypatch.setattr(demo_lms.lm, "train_lm", lambda *a, **k: pytest.fail("LM retrained"))
    monkeypatch.setattr(demo.synthesize, "make_shard", lambda *a, **k: pytest.fail("shard resampled"))
    again = demo.run_demo(tmp_path, SMALL, progress=False)
    assert again["heldout_prompt_accuracy"] == results["heldout_prompt_accuracy"]
    assert again["reward_model"]["steps"] == SMALL.rm_steps


def test_heldout_policies_must_be_in_the_pool(tmp_path):
    with pytest.raises(ValueError, match="not in the pool"):
        demo.run_demo(tmp_path, demo.DemoConfig(heldout_policies=("nobody",)), progress=False)
