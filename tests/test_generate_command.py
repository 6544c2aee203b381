"""The `generate` command through the continuous-batching engine: sampled continuations that do
not depend on the number of slots (prompt r draws with fold_in(key(--seed), r)), equal to
`sampling.generate`'s with those keys, and the engine's speed and slot utilisation printed."""

import re

import jax
import numpy as np
import pytest

from polar_jax import sampling
from polar_jax.__main__ import main
from polar_jax.io import hf, models, tokenizers
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models.config import ModelConfig
from polar_jax.synth import demo_lms
from polar_jax.train.lm import numpy_init_params

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A function returns a value to its caller.",
    "Lists and tuples are sequences; dictionaries map keys to values. Loops repeat a block.",
]
PROMPTS = ["A function", "Lists and tuples are", "The quick", "Loops"]
STATS_LINE = re.compile(r"^(\d+) new tokens in .*; engine: [\d.]+ tokens/s, slot utilisation ([\d.]+) \((\d+) slots\)$")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A random one-layer llama with a byte-level BPE tokenizer (an HF directory)."""
    root = tmp_path_factory.mktemp("generate_lm")
    tok_dir = demo_lms.train_tokenizer(TEXTS, 300, root / "tokenizer")
    vocab = -(-len(tokenizers.load_tokenizer(str(tok_dir))) // 64) * 64
    cfg = ModelConfig(
        vocab_size=vocab, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64, init_std=0.3
    )
    path = root / "lm"
    hf.save_hf(Model(cfg, numpy_init_params(cfg, 0), "llama", families.hf_config_for(cfg, "llama", "lm")), path)
    for f in tok_dir.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    return str(path)


def generate(capsys, model: str, *flags: str) -> tuple[list[str], re.Match]:
    """(the printed prompt + continuation blocks, the engine's figures line) of one `generate` run."""
    argv = ["generate", "--model", model, "--temperature", "1", "--max-new-tokens", "8", *flags]
    assert main(argv + [f"--prompt={p}" for p in PROMPTS]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    body, _, last = out.rpartition("\n\n")
    blocks = body.split("\n\n>>> ")[1:]
    figures = STATS_LINE.match(last)
    assert figures, last
    return blocks, figures


def test_continuations_do_not_depend_on_the_slots(capsys, tiny_lm):
    one, one_figures = generate(capsys, tiny_lm, "--slots", "1")
    three, three_figures = generate(capsys, tiny_lm, "--slots", "3")
    assert len(one) == len(PROMPTS) and one == three
    assert [b.split("\n")[0] for b in one] == PROMPTS
    assert one_figures[1] == three_figures[1] and (one_figures[3], three_figures[3]) == ("1", "3")
    assert 0 < float(three_figures[2]) <= 1 and 0 < float(one_figures[2]) <= 1
    other_seed, _ = generate(capsys, tiny_lm, "--slots", "3", "--seed", "1")
    assert other_seed != one  # sampled: the seed matters

    # Prompt r drew with fold_in(key(0), r): what `sampling.generate` gives with those keys.
    model, tok = models.load_model(tiny_lm), tokenizers.load_tokenizer(tiny_lm)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    prompt_bt = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for row, row_ids in enumerate(ids):
        prompt_bt[row, : len(row_ids)] = row_ids
    config = sampling.SamplingConfig(temperature=1.0, max_new_tokens=8, stop_ids=(tok.eos_token_id,))
    keys = sampling.row_keys(jax.random.key(0), len(ids))
    gen = sampling.generate(model.cfg, model.params, prompt_bt, np.array(list(map(len, ids))), config, keys)
    want = [
        f"{p}\n{p}{tok.decode(row[:n].tolist(), skip_special_tokens=True)}"
        for p, row, n in zip(PROMPTS, np.asarray(gen.tokens_bn), np.asarray(gen.lengths_b))
    ]
    assert one == want
    assert int(one_figures[1]) == int(np.sum(gen.lengths_b))
