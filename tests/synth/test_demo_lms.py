"""The demo's home-grown policies: corpus, byte-level BPE tokenizer, LM checkpoints on disk."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax import sampling
from polar_jax.data import encoding
from polar_jax.io import models, tokenizers
from polar_jax.models import transformer as T
from polar_jax.synth import corpus, demo_lms
from polar_jax.train import lm

# Tiny, and the same shape in every test so that the compiled train step is shared.
SPEC = demo_lms.DemoLMSpec(
    seed=0,
    save_at=(3, 6),
    batch_size=2,
    seq_len=16,
    lr=1e-2,
    d_model=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    mlp_dim=64,
)
TEXTS = (
    "Plain English, with punctuation: yes!",
    "déjà vu — naïve café, 東京, emoji 🙂",
    "def f(x):\n\treturn x ** 2  # trailing  \n\n",
    "  leading spaces<|endoftext|>and an EOS inside",
)


@pytest.fixture(scope="module")
def docs():
    return corpus.corpus_documents()


@pytest.fixture(scope="module")
def tok_dir(docs, tmp_path_factory):
    return demo_lms.train_tokenizer(docs, 512, tmp_path_factory.mktemp("tok") / "tokenizer")


def test_corpus_is_the_pydoc_topics_in_key_order(docs):
    from pydoc_data.topics import topics

    keys = sorted(topics)
    assert len(docs) == len(topics) > 50
    assert sum(map(len, docs)) > 400_000
    assert 'The "if" statement' in docs[keys.index("if")]
    assert all(d == d.rstrip() and d for d in docs)


def test_tokenizer_special_tokens_are_single_tokens_with_fixed_ids(tok_dir):
    tok = tokenizers.load_tokenizer(tok_dir)
    assert len(tok) == 512
    assert [tok.convert_tokens_to_ids(t) for t in demo_lms.SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token_id == tok.pad_token_id == 0
    for token in ("<|reward|>", "[UNUSED_TOKEN_130]", "<|endoftext|>"):
        assert encoding.is_single_token(tok, token)
    cfg = encoding.EncodingConfig(max_length=256, max_response_length=64)
    reward_id = encoding.resolve_reward_token_id(tok, cfg)
    ids = encoding.encode(tok, "What is 2 + 2?", "4.", "Four.", cfg, reward_id).ids
    assert reward_id == 2 and ids[-1] == 2 and list(ids).count(1) == 1 and list(ids).count(2) == 1
    assert tok.decode(ids) == "What is 2 + 2?\n4.<|reward|>What is 2 + 2?\nFour.[UNUSED_TOKEN_130]"


def test_tokenizer_round_trips_any_text(tok_dir):
    tok = tokenizers.load_tokenizer(tok_dir)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.encode(TEXTS[3], add_special_tokens=False).count(0) == 1  # the EOS text is the EOS token
    assert tok("if x:")["input_ids"] == tok.encode("if x:", add_special_tokens=False)  # no BOS added


def test_tokenizer_training_is_deterministic_and_done_once(docs, tok_dir, tmp_path):
    again = demo_lms.train_tokenizer(docs, 512, tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    mtime = (again / "tokenizer.json").stat().st_mtime_ns
    assert demo_lms.train_tokenizer(docs, 512, again) == again
    assert (again / "tokenizer.json").stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*tmp*"))


def _reference_params(cfg, ids_n, steps):
    """Parameters after each step in `steps`, trained in memory with the train_lm settings."""
    out = {}
    for point in lm.lm_training(
        cfg, ids_n, steps=max(steps), batch_size=SPEC.batch_size, seq_len=SPEC.seq_len, lr=SPEC.lr, seed=SPEC.seed
    ):
        if point.step in steps:
            out[point.step] = jax.tree.map(np.asarray, point.params)
    return out


def test_train_lm_writes_loadable_checkpoints_and_reruns_skip(docs, tok_dir, tmp_path, monkeypatch):
    tok = tokenizers.load_tokenizer(tok_dir)
    cfg = SPEC.model_config(len(tok))
    ids_n = demo_lms.corpus_ids(tok, docs[:4])
    assert ids_n.dtype == np.int32 and (ids_n == 0).sum() == 4  # one EOS per document
    train = dict(
        steps=6,
        save_at=(3, 6),
        batch_size=SPEC.batch_size,
        seq_len=SPEC.seq_len,
        lr=SPEC.lr,
        seed=SPEC.seed,
        tokenizer_dir=tok_dir,
        progress=False,
    )
    dirs = lm.train_lm(cfg, ids_n, tmp_path / "run", **train)
    assert dirs == {3: tmp_path / "run" / "step-3", 6: tmp_path / "run" / "step-6"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["step-3", "step-6"]  # no temp dirs left

    reference = _reference_params(cfg, ids_n, (3, 6))
    assert not np.array_equal(reference[3]["embedding"], reference[6]["embedding"])
    for step, d in dirs.items():
        model = models.load_model(d)
        assert model.family == "llama" and model.cfg == cfg.replace(scan_unroll=1)
        jax.tree.map(np.testing.assert_array_equal, model.params, reference[step])
        config = json.loads((d / "config.json").read_text())
        assert config["eos_token_id"] == config["pad_token_id"] == 0
        assert json.loads((d / lm.TRAINING_FILE).read_text())["step"] == step
        assert tokenizers.load_tokenizer(d).encode(TEXTS[0]) == tok.encode(TEXTS[0])

    # Greedy generation from the loaded checkpoint: its first token is the forward pass's argmax.
    model = models.load_model(dirs[6])
    prompt_bt = jnp.asarray([tok.encode("The value of", add_special_tokens=False)], jnp.int32)
    out = sampling.generate(
        model.cfg,
        model.params,
        prompt_bt,
        jnp.asarray([prompt_bt.shape[1]]),
        sampling.SamplingConfig(max_new_tokens=4),
        jax.random.key(0),
    )
    positions_bt, segment_ids_bt = T.padded_inputs(jnp.ones_like(prompt_bt))
    logits_btv = T.forward(model.cfg, model.params, prompt_bt, positions_bt, segment_ids_bt).logits_btv
    assert out.tokens_bn.shape == (1, 4) and int(out.lengths_b[0]) == 4
    assert int(out.tokens_bn[0, 0]) == int(jnp.argmax(logits_btv[0, -1]))

    # A rerun with every checkpoint present trains nothing and rewrites nothing.
    mtimes = {d: (d / "model.safetensors").stat().st_mtime_ns for d in dirs.values()}
    monkeypatch.setattr(lm, "lm_training", lambda *a, **k: pytest.fail("trained again"))
    assert lm.train_lm(cfg, ids_n, tmp_path / "run", **train) == dirs
    monkeypatch.undo()
    # A missing one is retrained, identically, and the present one is left alone.
    weights_3 = (dirs[3] / "model.safetensors").read_bytes()
    for f in dirs[3].iterdir():
        f.unlink()
    dirs[3].rmdir()
    assert lm.train_lm(cfg, ids_n, tmp_path / "run", **train) == dirs
    assert (dirs[3] / "model.safetensors").read_bytes() == weights_3
    assert (dirs[6] / "model.safetensors").stat().st_mtime_ns == mtimes[dirs[6]]


def test_train_demo_lm_trains_a_spec_on_the_corpus(docs, tok_dir, tmp_path):
    spec = demo_lms.DemoLMSpec(**{**SPEC.__dict__, "save_at": (3,), "steps": 6, "seed": 1})
    dirs = demo_lms.train_demo_lm(spec, tok_dir, tmp_path / "lm", texts=docs[:4], progress=False)
    assert list(dirs) == [3]
    model = models.load_model(dirs[3])
    assert model.cfg.vocab_size == 512 and model.cfg.tie_embeddings and model.cfg.d_model == 32
    info = json.loads((dirs[3] / lm.TRAINING_FILE).read_text())
    assert (info["seed"], info["step"], info["steps"]) == (1, 3, 6)
    assert 5.0 < info["loss"] < 6.5  # about ln(512) = 6.24 after 3 steps of a random model
    assert demo_lms.DemoLMSpec().model_config(2051).vocab_size == 2112  # rounded up to a multiple of 64
