"""The demo at a small size: every stage runs, results are written, a rerun resumes."""

import json

import pytest

from polar_jax import demo
from polar_jax.synth import demo_lms

SMALL = demo.DemoConfig(
    tokenizer_vocab=512,
    lms=(
        demo_lms.DemoLMSpec(seed=0, save_at=(5, 40, 60), batch_size=8, seq_len=32),
        demo_lms.DemoLMSpec(seed=1, save_at=(20,), batch_size=8, seq_len=32),
    ),
    smollm2=(),  # SmolLM2 sampling is minutes on a CPU; the full demo covers it
    heldout_policies=("lm1-step20",),
    rm_init="lm0-step60",  # the reward model's base LM: not a policy
    max_new_tokens=8,
    prompt_tokens=(2, 8),
    triplets=(48, 16, 16),
    shard_size=16,
    sample_batch=16,
    rm_steps=12,
    rm_size=(32, 1, 2),
    sft_steps=4,
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
    assert saved["reward_model"]["init"] == "lm0-step60"
    # The ablation: the pre-trained model and each SFT run, on the held-out ranked triplets (with the reference,
    # or the no-reference stand-in for the run trained without) and on the held-out policies.
    assert list(saved["ablation"]) == ["pretrained", *demo.SFT_RUNS]
    assert saved["ablation"]["pretrained"]["heldout_policies"] == saved["heldout_policies"]["all"]
    for run, row in saved["ablation"].items():
        assert row["ranked_triplets"]["n"] == saved["ranked_triplets"]["heldout"] > 0, run
        assert row["heldout_policies"]["n"] == saved["triplets"]["heldout_policies"], run
        low, high = row["ranked_triplets"]["ci95"]
        assert low <= row["ranked_triplets"]["accuracy"] <= high, run
    assert saved["ablation"]["sft_no_reference"]["reference"] is False
    assert {run: s["steps"] for run, s in saved["sft"].items()} == dict.fromkeys(demo.SFT_RUNS, SMALL.sft_steps)
    no_ref = (tmp_path / "rankings" / "no_reference" / "heldout.jsonl").read_text()
    assert no_ref.count(f'"reference": "{demo.rankings.NO_REFERENCE}"') == saved["ranked_triplets"]["heldout"]
    printed = demo.format_results(saved)
    assert "held-out prompts, training policies" in printed
    assert "sft_no_reference" in printed and "base LM" in printed
    assert f"rft --config configs/rft_demo.py:{tmp_path} " in printed, printed
    assert f"--config.data_dir={tmp_path / 'prepared'} " in printed

    # A rerun trains nothing again: no LM training, no sampling, no training steps.
    monkeypatch.setattr(demo_lms.lm, "train_lm", lambda *a, **k: pytest.fail("LM retrained"))
    monkeypatch.setattr(demo.synthesize, "make_shard", lambda *a, **k: pytest.fail("shard resampled"))
    again = demo.run_demo(tmp_path, SMALL, progress=False)
    assert again["heldout_prompt_accuracy"] == results["heldout_prompt_accuracy"]
    assert again["reward_model"]["steps"] == SMALL.rm_steps
    assert again["ablation"] == results["ablation"]


def test_heldout_policies_must_be_in_the_pool(tmp_path):
    with pytest.raises(ValueError, match="not in the pool"):
        demo.run_demo(tmp_path, demo.DemoConfig(heldout_policies=("nobody",)), progress=False)


def test_rm_init_must_be_a_demo_lm_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="rm_init='lm9-step1' is none of the demo LMs"):
        demo.run_demo(tmp_path, demo.DemoConfig(rm_init="lm9-step1"), progress=False)


def test_rankings_written_under_other_settings_stop_the_run(tmp_path):
    (tmp_path / "rankings").mkdir()
    (tmp_path / "rankings" / "settings.json").write_text('{"min_gap": 0.5}')
    with pytest.raises(ValueError, match="remove .*rankings and the prepared sft_"):
        demo.write_rankings(demo.DemoConfig(), tmp_path, progress=False)


def test_the_paper_recipe_holds_out_one_policy_of_each_kind_and_keeps_its_base_lm_out_of_the_pool():
    cfg = demo.PAPER_RECIPE
    names = cfg.policy_names()
    assert cfg.rm_init == "lm0-step1200" and cfg.rm_init not in names
    assert set(cfg.heldout_policies) <= set(names)
    # an intermediate checkpoint of another seed, another model size, a SmolLM2 setting
    assert cfg.heldout_policies == ("lm1-step40", "lm2-step400", "smollm2-playful")
    assert demo.lm_dir(demo.pathlib.Path("w"), cfg.rm_init) == demo.pathlib.Path("w/policies/lm0/step-1200")
    assert len(names) == 8 and demo.RECIPES["default"] == demo.DemoConfig()


def test_an_unknown_sft_ranking_is_refused():
    with pytest.raises(ValueError, match="sft_ranking='people'"):
        demo.write_rankings(demo.DemoConfig(sft_ranking="people"), demo.pathlib.Path("unused"), progress=False)
