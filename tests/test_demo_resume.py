"""The demo resumes under any spelling of its workdir: its stages' fingerprints (synthesis, the
reward model's config) are equal for a relative, absolute or symlinked workdir, and a finished
synthesis is not redone when the workdir is spelled otherwise."""

import json

import pytest

from polar_jax import demo
from polar_jax.synth import demo_lms
from tests.synth.test_synthesize import _byte_tokenizer, _tiny_lm

CFG = demo.DemoConfig(
    lms=(demo_lms.DemoLMSpec(seed=0, save_at=(5, 9)), demo_lms.DemoLMSpec(seed=1, save_at=(7,))),
    smollm2=(),
    heldout_policies=("lm1-step7",),
    rm_init="",
    max_new_tokens=4,
    prompt_tokens=(2, 6),
    triplets=(4, 2, 2),
    shard_size=2,
    sample_batch=4,
)


def _prepared(tmp_path):
    """A demo workdir with its prepared training set's encoding.json, and a symlink to it."""
    root = tmp_path / "demo"
    (root / "prepared" / "train").mkdir(parents=True)
    (root / "prepared" / "train" / "encoding.json").write_text(json.dumps({"vocab_size": 264}))
    (tmp_path / "link").symlink_to(root)
    return root


@pytest.fixture
def workdir(tmp_path):
    """A demo workdir whose tokenizer, policies and prepared encoding.json exist (tiny stand-ins)."""
    root = _prepared(tmp_path)
    _byte_tokenizer().save_pretrained(str(root / "tokenizer"))
    for seed, step in ((0, 5), (0, 9), (1, 7)):
        _tiny_lm(root / "policies" / f"lm{seed}" / f"step-{step}", seed=10 * seed + step)
    return root


def _spellings(workdir, monkeypatch):
    monkeypatch.chdir(workdir.parent)
    return {"relative": demo.pathlib.Path("demo"), "absolute": workdir, "symlink": workdir.parent / "link"}


def test_rm_config_is_the_same_for_every_spelling_of_the_workdir(tmp_path, monkeypatch):
    workdir = _prepared(tmp_path)
    configs = {k: demo.rm_config(CFG, w).to_dict() for k, w in _spellings(workdir, monkeypatch).items()}
    assert configs["relative"] == configs["absolute"] == configs["symlink"]
    assert configs["absolute"]["data"]["train"] == str(workdir.resolve() / "prepared" / "train")


def test_stage_fingerprints_are_equal_for_every_spelling_and_see_changed_weights(workdir, monkeypatch):
    prints = {
        k: demo.stage_fingerprints(CFG, demo.build_pool(CFG, w, progress=False), w)
        for k, w in _spellings(workdir, monkeypatch).items()
    }
    assert prints["relative"] == prints["absolute"] == prints["symlink"]
    assert set(prints["absolute"]) == {
        "synth.train",
        "synth.heldout_prompts",
        "synth.heldout_policies",
        "rm",
        *(f"sft.{run}" for run in demo.SFT_RUNS),
    }
    assert "demo" not in json.dumps(prints["absolute"]["synth.train"])  # no path in what is compared
    _tiny_lm(workdir / "policies" / "lm1" / "step-7", seed=99)
    changed = demo.stage_fingerprints(CFG, demo.build_pool(CFG, workdir, progress=False), workdir)
    assert changed["synth.heldout_policies"] != prints["absolute"]["synth.heldout_policies"]


def test_synthesis_done_under_one_spelling_resumes_under_another(workdir, monkeypatch):
    spellings = _spellings(workdir, monkeypatch)
    first = demo.synthesize_splits(
        CFG, demo.build_pool(CFG, spellings["relative"], False), spellings["relative"], False
    )
    assert {split: s["resumed_shards"] for split, s in first.items()} == dict.fromkeys(demo.SPLITS, 0)
    monkeypatch.setattr(demo.synthesize, "make_shard", lambda *a, **k: pytest.fail("shard resampled"))
    for name in ("absolute", "symlink"):
        w = spellings[name]
        again = demo.synthesize_splits(CFG, demo.build_pool(CFG, w, False), w, False)
        assert {split: s["triplets"] for split, s in again.items()} == {k: s["triplets"] for k, s in first.items()}
        assert all(s["resumed_shards"] == s["shards"] for s in again.values()), name
