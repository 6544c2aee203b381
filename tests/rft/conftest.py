"""Tiny models and data for the RFT tests, built here (no network, no demo run): a byte-level
BPE tokenizer with POLAR's special tokens, random one-layer policies (HF directories) and a
random reward model (polar_jax directory)."""

import json
import pathlib

import pytest

from polar_jax.io import hf, polar_format
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig
from polar_jax.synth import demo_lms
from polar_jax.train.lm import numpy_init_params

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A function returns a value to its caller.",
    "Lists and tuples are sequences; dictionaries map keys to values. Loops repeat a block.",
    "Classes define objects with attributes and methods. Modules group related code.",
]
PROMPTS = ["A function", "Lists and", "Classes define", "The quick", "Modules group", "Loops", "Keys map", "Objects"]


def tiny_cfg(vocab_size: int, heads=("lm",), seed_std=0.3) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        mlp_dim=64,
        heads=heads,
        tie_embeddings="lm" in heads,
        init_std=seed_std,
    )


def save_lm(path: pathlib.Path, cfg: ModelConfig, seed: int, tokenizer_dir: pathlib.Path) -> str:
    params = numpy_init_params(cfg, seed)
    hf.save_hf(Model(cfg, params, "llama", families.hf_config_for(cfg, "llama", "lm")), path)
    for f in tokenizer_dir.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    return str(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{tokenizer, policy, target, reward, vocab}: paths of tiny random models sharing one tokenizer."""
    root = tmp_path_factory.mktemp("rft_models")
    tok_dir = demo_lms.train_tokenizer(TEXTS, 300, root / "tokenizer")
    from transformers import AutoTokenizer

    vocab = -(-len(AutoTokenizer.from_pretrained(str(tok_dir))) // 64) * 64
    policy = save_lm(root / "policy", tiny_cfg(vocab), 0, tok_dir)
    target = save_lm(root / "target", tiny_cfg(vocab), 1, tok_dir)
    rm_cfg = tiny_cfg(vocab, heads=("reward",), seed_std=0.05)
    rm_params = numpy_init_params(rm_cfg, 2)
    rm_dir = root / "rm"
    polar_format.save_polar(
        Model(rm_cfg, rm_params, "llama", families.hf_config_for(rm_cfg, "llama", "reward")), rm_dir
    )
    for f in tok_dir.iterdir():
        (rm_dir / f.name).write_bytes(f.read_bytes())
    return {"tokenizer": str(tok_dir), "policy": policy, "target": target, "reward": str(rm_dir), "vocab": vocab}


@pytest.fixture(scope="session")
def rft_jsonl(tmp_path_factory):
    """(train.jsonl, eval.jsonl) of {prompt, reference} rows; one prompt is a message list, one training
    prompt (line 6) is over-long for the loop test."""
    root = tmp_path_factory.mktemp("rft_data")
    rows = [{"prompt": p, "reference": f"{p} is described in the manual."} for p in PROMPTS]
    rows[1]["prompt"] = [{"role": "user", "content": "Lists"}, {"role": "user", "content": "and"}]
    # Longer than the loop test's policy.max_prompt_tokens (16): filtered out and counted, as verl does.
    overlong = {"prompt": " ".join(TEXTS), "reference": "Too long to be a prompt here."}
    for name, subset in (("train", rows[:5] + [overlong] + rows[5:]), ("eval", rows[:4])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in subset))
    return str(root / "train.jsonl"), str(root / "eval.jsonl")
