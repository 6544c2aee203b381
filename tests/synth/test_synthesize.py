"""Triplet synthesis: policy pairs, prompts, the pool, provenance, and stop/resume equality."""

import json
import pathlib

import jax
import numpy as np
import pytest
import tokenizers
from transformers import PreTrainedTokenizerFast

from polar_jax.__main__ import main as cli
from polar_jax.data import schema
from polar_jax.io import hf
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.synth import synthesize as S
from polar_jax.synth.pool import PolicyPool, PolicySpec, Sample
from polar_jax.synth.prompts import PromptSource, read_instructions, split_documents

DOCS = [
    f"Document {d}. " + " ".join(f"word{d}_{w}" for w in range(40)) + "\n\nSecond paragraph of document "
    f"{d} with more text here.\n\nThird paragraph {d}."
    for d in range(10)
]


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: 256 byte symbols plus <|endoftext|>."""
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _tiny_lm(path: pathlib.Path, seed: int) -> str:
    """A random 1-layer LM saved as an HF directory with the byte tokenizer."""
    cfg = ModelConfig(
        vocab_size=264, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64, init_std=0.5
    )  # large init: peaked, seed-specific distributions
    params = jax.tree.map(np.asarray, T.init_params(cfg, jax.random.key(seed)))
    hf.save_hf(Model(cfg, params, "llama", families.hf_config_for(cfg, "llama", "lm")), path)
    _byte_tokenizer().save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    return [_tiny_lm(root / f"lm{i}", seed=i) for i in range(3)]


def _pool(lms, temperature=1.0, **kw):
    specs = [PolicySpec(f"p{i}", ckpt, temperature=temperature, max_new_tokens=12) for i, ckpt in enumerate(lms)]
    specs.append(PolicySpec("p0-hot", lms[0], temperature=2.0, max_new_tokens=12, template="> {prompt}"))
    return PolicyPool(specs, batch_size=8, prompt_bucket=16, **kw)


def _prompts(pool, seed=0):
    return PromptSource(DOCS, pool.tokenizer("p0"), min_tokens=2, max_tokens=20, seed=seed)


def test_policy_pairs_are_ordered_distinct_and_honour_must_include():
    pairs = S.policy_pairs(("a", "b", "c"))
    assert sorted(pairs) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert sorted(S.policy_pairs(("a", "b", "c"), must_include=("c",))) == [
        ("a", "c"),
        ("b", "c"),
        ("c", "a"),
        ("c", "b"),
    ]
    with pytest.raises(ValueError, match="no policy pair"):
        S.policy_pairs(("a",))


def test_prompt_source_is_pure_bounded_and_splits_documents():
    tok = _byte_tokenizer()
    train, heldout = split_documents(DOCS, heldout_every=5)
    assert heldout == [4, 9] and set(train) == set(range(10)) - {4, 9}
    source = PromptSource(DOCS, tok, doc_indices=heldout, min_tokens=3, max_tokens=30, seed=7)
    prompts = [source.prompt(i) for i in range(50)]
    assert prompts == [source.prompt(i) for i in range(50)]  # pure in (seed, index)
    lengths = []
    for p in prompts:
        doc, offset, n_tokens = map(int, p.source.split(":")[1:])
        assert doc in heldout and 3 <= n_tokens <= 30
        assert DOCS[doc][offset:].startswith(p.text)
        lengths.append(n_tokens)
    assert min(lengths) < 8 and max(lengths) > 15  # log-uniform lengths spread over the range
    other = PromptSource(DOCS, tok, doc_indices=heldout, min_tokens=3, max_tokens=30, seed=8)
    assert [other.prompt(i) for i in range(50)] != prompts


def test_instructions_read_from_jsonl_and_text_with_errors_at_their_line(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"prompt": "Say hi."}\n\n{"prompt": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}\n'
    )
    assert [p.text for p in read_instructions(tmp_path / "a.jsonl")] == ["Say hi.", "x\ny"]
    (tmp_path / "b.txt").write_text("first\nsecond\n")
    assert [p.source for p in read_instructions(tmp_path / "b.txt")] == ["instructions:b.txt:1", "instructions:b.txt:2"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(schema.DataError, match=r"bad.jsonl:2: field 'prompt'"):
        read_instructions(tmp_path / "bad.jsonl")


def test_pool_loads_each_checkpoint_once_and_samples_deterministically(lms):
    pool = _pool(lms)
    a = pool.sample("p0", ["Hello there", "x"], jax.random.key(1))
    b = pool.sample("p0-hot", ["Hello there"], jax.random.key(1))
    assert len(pool._loaded) == 1  # p0 and p0-hot share one copy of lm0
    assert a == pool.sample("p0", ["Hello there", "x"], jax.random.key(1))
    assert a != pool.sample("p0", ["Hello there", "x"], jax.random.key(2))
    assert all(isinstance(s, Sample) and 1 <= s.num_tokens <= 12 for s in a + b)


def test_each_triplet_comes_from_the_policies_its_provenance_names(lms, tmp_path):
    # Greedy policies with different weights: a response can be re-derived from its policy alone.
    pool = _pool(lms, temperature=0.0)
    plan = S.SynthPlan(num_triplets=12, shard_size=5, seed=3, policies=("p0", "p1", "p2"))
    summary = S.synthesize(pool, _prompts(pool), plan, tmp_path, progress=False)
    rows = [r.data for f in sorted(tmp_path.glob("triplets-*.jsonl")) for r in schema.read_jsonl(f, "triplet")]
    assert summary["shards"] == 3 and summary["triplets"] + summary["empty_response"] == 12
    assert [r["meta"]["prompt_index"] for r in rows] == sorted(r["meta"]["prompt_index"] for r in rows)
    assert len({(r["meta"]["reference_policy"], r["meta"]["rejected_policy"]) for r in rows}) >= 3
    for r in rows:
        m = r["meta"]
        assert m["reference_policy"] == m["chosen_policy"] != m["rejected_policy"]
        assert set(m["policies"]) == {m["reference_policy"], m["rejected_policy"]}
        assert m["policies"][m["rejected_policy"]]["checkpoint"] == pool.specs[m["rejected_policy"]].checkpoint
        for role, policy in (("reference", m["reference_policy"]), ("rejected", m["rejected_policy"])):
            (again,) = pool.sample(policy, [r["prompt"]], jax.random.key(0))
            assert r[role] == again.text, (role, policy)
        assert r["chosen"] == r["reference"]  # greedy: A's two answers agree
    assert sum(r["reference"] != r["rejected"] for r in rows) == len(rows)  # the policies really differ


def test_stopped_and_resumed_synthesis_equals_an_uninterrupted_run(lms, tmp_path, monkeypatch):
    pool = _pool(lms)
    plan = S.SynthPlan(num_triplets=14, shard_size=4, seed=11)
    whole = tmp_path / "whole"
    S.synthesize(pool, _prompts(pool), plan, whole, progress=False)

    resumed = tmp_path / "resumed"
    real_make_shard = S.make_shard

    def killed_at_shard_2(pool, prompts, plan, shard):
        if shard == 2:
            raise KeyboardInterrupt
        return real_make_shard(pool, prompts, plan, shard)

    monkeypatch.setattr(S, "make_shard", killed_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        S.synthesize(pool, _prompts(pool), plan, resumed, progress=False)
    assert sorted(p.name for p in resumed.glob("triplets-*.jsonl")) == ["triplets-00000.jsonl", "triplets-00001.jsonl"]
    monkeypatch.setattr(S, "make_shard", real_make_shard)
    fresh_pool = _pool(lms)  # a new process: nothing cached
    summary = S.synthesize(fresh_pool, _prompts(fresh_pool), plan, resumed, progress=False)
    assert summary["resumed_shards"] == 2
    resampled = [json.loads((resumed / f"triplets-0000{s}.stats.json").read_text())["new_tokens"] for s in (2, 3)]
    assert summary["engine"]["useful_tokens"] == sum(resampled) > 0  # this run's figures: the shards it wrote
    names = sorted(p.name for p in whole.glob("triplets-*.jsonl"))
    assert names == sorted(p.name for p in resumed.glob("triplets-*.jsonl")) and len(names) == 4
    for name in names:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes()
    rows = [json.loads(line) for name in names for line in (whole / name).read_text().splitlines()]
    assert len({r["meta"]["prompt_index"] for r in rows}) == len(rows)  # no duplicates

    with pytest.raises(ValueError, match="other settings"):
        S.synthesize(pool, _prompts(pool, seed=1), plan, resumed, progress=False)


class _ScriptedPool:
    """A pool whose policy "e" answers empty on its first draw of every request."""

    names = ["a", "e"]
    specs = {n: PolicySpec(n, "none") for n in names}

    def __init__(self):
        self.calls = []

    def sample(self, name, prompts, key):
        self.calls.append((name, len(prompts)))
        if name == "e" and sum(c[0] == "e" for c in self.calls) == 1:
            return [Sample(" ", 1, False)] * len(prompts)
        return [Sample(f"{name}:{p}", 3, False) for p in prompts]


def test_empty_responses_are_drawn_again_then_counted():
    pool = _ScriptedPool()
    prompts = PromptSource(DOCS, _byte_tokenizer(), min_tokens=2, max_tokens=5)
    rows, counts = S.make_shard(pool, prompts, S.SynthPlan(num_triplets=6, shard_size=6), 0)
    assert counts["triplets"] == 6 and counts["empty_response"] == 0
    assert [c for c in pool.calls if c[0] == "e"][1][1] == [c for c in pool.calls if c[0] == "e"][0][1]
    assert all(r[role].startswith(r["meta"][f"{role}_policy"] + ":") for r in rows for role in S.ROLES)
    never = _ScriptedPool()
    never.sample = lambda name, prompts, key: [Sample("", 0, False)] * len(prompts)
    rows, counts = S.make_shard(never, prompts, S.SynthPlan(num_triplets=6, shard_size=6), 0)
    assert rows == [] and counts["empty_response"] == 6


def test_synth_command_writes_valid_shards_from_a_config(lms, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(DOCS[0])
    config = tmp_path / "synth.py"
    config.write_text(f"""
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.seed, c.num_triplets, c.shard_size, c.batch_size, c.prompt_bucket = 0, 6, 4, 8, 16
    c.policies = [dict(name="x", checkpoint={lms[0]!r}, max_new_tokens=8),
                  dict(name="y", checkpoint={lms[1]!r}, max_new_tokens=8, system="S", template="{{system}}|{{prompt}}")]
    c.draw_from, c.must_include = [], []
    c.prompts = ml_collections.ConfigDict(dict(corpus={str(corpus)!r}, split="all", heldout_every=0, min_tokens=2,
        max_tokens=10, tokenizer="", instructions="", instruction_fraction=0.0))
    return c
""")
    out = tmp_path / "out"
    assert cli(["synth", "--config", str(config), "--out", str(out), "--no-progress", "--config.num_triplets=5"]) == 0
    rows = [r.data for f in sorted(out.glob("*.jsonl")) for r in schema.read_jsonl(f, "triplet")]
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == summary["triplets"] == 5 - summary["empty_response"]
    assert json.loads((out / "synth.json").read_text())["policies"][1]["system"] == "S"


def test_policy_weights_set_how_often_pairs_are_drawn():
    pool = _ScriptedPool()
    pool.names = ["a", "b", "c"]
    pool.specs = {"a": PolicySpec("a", "none"), "b": PolicySpec("b", "none"), "c": PolicySpec("c", "none", weight=0.2)}
    prompts = PromptSource(DOCS, _byte_tokenizer(), min_tokens=1, max_tokens=2)
    rows, _ = S.make_shard(pool, prompts, S.SynthPlan(num_triplets=600, shard_size=600), 0)
    with_c = np.mean([row["meta"]["reference_policy"] == "c" or row["meta"]["rejected_policy"] == "c" for row in rows])
    # P(c in the pair) = (0.2 + 0.2 + 0.2 + 0.2) / (1 + 1 + 0.8) = 0.286; std of the mean 0.018
    assert abs(with_c - 0.8 / 2.8) < 0.06
    with pytest.raises(ValueError, match="weight"):
        PolicySpec("d", "none", weight=0.0)
