"""Official InternLM2 checkpoints in and out: the remote-code gate on their tokenizers, and
exports that carry what the released POLAR loaders read (reward_token_id, auto_map, the
original rope_scaling, the remote-code and tokenizer files); `convert` carrying a trained
model's tokenizer, encoding.json and token ids.

Every directory is built here: tiny random InternLM2 weights, a character-level tokenizer made
with `tokenizers`, and stand-in remote-code files. The stand-in `InternLM2TokenizerFast`
lower-cases text (the plain fast tokenizer maps capitals to <unk>), so a test can tell that the
checkpoint's own class ran. There is no torch here, so the modeling code is never run: the
stand-in `modeling_internlm2.py` is only copied and read as text.
"""

import json

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tok_models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from polar_jax import scoring
from polar_jax.__main__ import main as cli
from polar_jax.data import encoding
from polar_jax.io import hf, polar_format, remote_code, tokenizers
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig, RopeScaling

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,?!\n "
SPECIAL = ["<unk>", "<s>", "</s>", "<|reward|>", "[UNUSED_TOKEN_130]"]
REWARD_ID = 4  # [UNUSED_TOKEN_130], as 92527 is in the real InternLM2 tokenizer
PAD_ID = 2
ROWS = [
    {"prompt": "What is the capital of China?", "reference": "Beijing.", "output": "Beijing."},
    {"prompt": "What is the capital of China?", "reference": "Beijing.", "output": "Shanghai."},
    {"prompt": "Name a Colour.", "reference": "Blue", "output": "RED, maybe"},
]

TOKENIZER_CODE = '''"""Stand-in for a checkpoint's tokenization_internlm2_fast.py (test fixture)."""
from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast


class InternLM2TokenizerFast(PreTrainedTokenizerFast):
    """Lower-cases text before tokenising: observably not the plain fast tokenizer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_tokenizer.normalizer = normalizers.Lowercase()
'''
SLOW_TOKENIZER_CODE = '''"""Stand-in for tokenization_internlm2.py (never loaded: transformers 5 takes the fast class)."""


class InternLM2Tokenizer:
    pass
'''
CONFIG_CODE = '''"""Stand-in for configuration_internlm2.py (test fixture)."""
from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"

    def __init__(self, rope_scaling=None, rope_theta=10000.0, **kwargs):
        self.rope_scaling, self.rope_theta = rope_scaling, rope_theta
        super().__init__(**kwargs)
'''
CAUSAL_MODELING_CODE = '''"""Stand-in for an InternLM2.5 base's modeling_internlm2.py (needs torch; never run here)."""


class InternLM2ForCausalLM:
    pass
'''
REWARD_MODELING_CODE = (
    CAUSAL_MODELING_CODE.replace("an InternLM2.5 base's", "a released POLAR model's")
    + """

class InternLM2ForRewardModel:
    pass
"""
)
TOKENIZER_AUTO_MAP = {
    "AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", "tokenization_internlm2_fast.InternLM2TokenizerFast"]
}
CFG = ModelConfig(
    vocab_size=len(SPECIAL) + len(CHARS),
    d_model=16,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    mlp_dim=32,
    rope_theta=1e6,
    heads=("reward",),
    init_std=0.5,
)


def plain_tokenizer() -> PreTrainedTokenizerFast:
    """The fixture's tokenizer as transformers' own fast class (no remote code)."""
    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    inner = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    inner.decoder = decoders.Fuse()
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[3:]})
    return fast


def official_config(reward: bool) -> dict:
    """config.json as InternLM2.5 bases (reward=False) and released POLAR models (True) have it."""
    config = {
        "architectures": ["InternLM2ForRewardModel" if reward else "InternLM2ForCausalLM"],
        "attn_implementation": "eager",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": CFG.d_model,
        "initializer_range": 0.02,
        "intermediate_size": CFG.mlp_dim,
        "max_position_embeddings": 64,
        "model_type": "internlm2",
        "num_attention_heads": CFG.num_heads,
        "num_hidden_layers": CFG.num_layers,
        "num_key_value_heads": CFG.num_kv_heads,
        "pad_token_id": PAD_ID,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.41.0",
        "use_cache": True,
        "vocab_size": CFG.vocab_size,
    }
    if reward:
        config["auto_map"] = {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        }
        config["reward_token_id"] = REWARD_ID
    return config


def internlm2_dir(path, reward: bool = True, seed: int = 0):
    """An InternLM2-layout HF directory: random weights, official-style config.json, the
    tokenizer with tokenizer_config.json's auto_map / tokenizer_class, the remote-code files."""
    cfg = CFG if reward else CFG.replace(heads=("lm",))
    path.mkdir(parents=True)
    for name, text in (
        ("tokenization_internlm2_fast.py", TOKENIZER_CODE),
        ("tokenization_internlm2.py", SLOW_TOKENIZER_CODE),
        ("configuration_internlm2.py", CONFIG_CODE),
        ("modeling_internlm2.py", REWARD_MODELING_CODE if reward else CAUSAL_MODELING_CODE),
    ):
        (path / name).write_text(text)
    model = Model(cfg, T.init_params(cfg, jax.random.key(seed)), "internlm2", official_config(reward))
    hf.save_hf(model, path)
    (path / "config.json").write_text(json.dumps(official_config(reward), indent=2))  # exactly the official keys
    plain_tokenizer().save_pretrained(str(path))
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg.update(tokenizer_class="InternLM2Tokenizer", auto_map=TOKENIZER_AUTO_MAP)
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return internlm2_dir(tmp_path_factory.mktemp("fixtures") / "polar_official")


def _write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rewards(path):
    return [json.loads(line)["reward"] for line in path.read_text().splitlines()]


# ---- the gate -------------------------------------------------------------------------------


def test_remote_code_tokenizer_is_refused_without_the_flag(official):
    with pytest.raises(remote_code.RemoteCodeError) as e:
        tokenizers.load_tokenizer(official)
    message = str(e.value)
    assert "\n" not in message
    assert str(official) in message and "InternLM2Tokenizer" in message
    assert "tokenization_internlm2_fast.InternLM2TokenizerFast" in message and "--trust-remote-code" in message
    with pytest.raises(
        remote_code.RemoteCodeError, match=r"then allow it with --config\.reward\.trust_remote_code=true$"
    ):
        tokenizers.load_tokenizer(official, flag="--config.reward.trust_remote_code=true")


def test_with_the_flag_the_checkpoints_own_class_gives_the_remote_code_ids(official):
    ours = tokenizers.load_tokenizer(official, trust_remote_code=True)
    theirs = AutoTokenizer.from_pretrained(str(official), trust_remote_code=True)
    assert type(ours).__name__ == type(theirs).__name__ == "InternLM2TokenizerFast"
    texts = ["What is the capital of China?", "Beijing.[UNUSED_TOKEN_130]", "RED, maybe"]
    for text in texts:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    # The checkpoint's class ran: the plain fast tokenizer reads the capitals as <unk> (0).
    assert ours("What")["input_ids"] == [1] + [len(SPECIAL) + CHARS.index(c) for c in "what"]
    assert plain_tokenizer()("What")["input_ids"][1] == 0


def test_missing_remote_code_file_is_an_error_even_with_the_flag(official, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((official / name).read_bytes())
    with pytest.raises(remote_code.RemoteCodeError, match=r"tokenization_internlm2_fast\.py is not in the directory"):
        tokenizers.load_tokenizer(broken, trust_remote_code=True)


def test_plain_tokenizers_need_no_flag(tmp_path):
    plain_tokenizer().save_pretrained(str(tmp_path))
    assert remote_code.tokenizer_code(tmp_path) is None
    assert tokenizers.load_tokenizer(tmp_path)("ab")["input_ids"] == [1, 5, 6]


def test_score_refuses_without_the_flag_and_with_it_equals_the_remote_code_path(official, tmp_path, capsys):
    rows = _write_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--model", str(official), "--input", str(rows), "--output", str(out), "--batch-size", "2"]
    try:
        status = cli(argv)
    except remote_code.RemoteCodeError as e:  # until the CLI's general error handling turns it into status 2
        assert "--trust-remote-code" in str(e) and str(official) in str(e)
    else:
        err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]  # log lines aside
        assert status == 2 and len(err) == 1 and "--trust-remote-code" in err[0] and str(official) in err[0]
    assert not out.exists()

    assert cli(argv + ["--trust-remote-code"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(str(official), trust_remote_code=True)
    expected = scoring.score_rows(hf.load_hf(official), tokenizer, ROWS, batch_size=2, progress=False)
    np.testing.assert_allclose(_rewards(out), expected, rtol=0, atol=1e-6)
    # ...and that is not what transformers' plain fast tokenizer would have scored.
    cfg = encoding.EncodingConfig()
    own = encoding.encode(
        tokenizer,
        **{k: ROWS[2][k] for k in ("prompt", "reference")},
        candidate=ROWS[2]["output"],
        cfg=cfg,
        reward_token_id=REWARD_ID,
    ).ids
    plain = encoding.encode(
        plain_tokenizer(),
        **{k: ROWS[2][k] for k in ("prompt", "reference")},
        candidate=ROWS[2]["output"],
        cfg=cfg,
        reward_token_id=REWARD_ID,
    ).ids
    n, a = (len(SPECIAL) + CHARS.index(c) for c in "na")
    assert own.tolist()[:2] == [1, n] and plain.tolist()[:2] == [1, a]  # the plain one loses the "N" of "Name"


# ---- exports --------------------------------------------------------------------------------


def test_official_reward_model_round_trips_with_its_config_and_files(official, tmp_path):
    out = tmp_path / "export"
    assert cli(["convert", "--from", str(official), "--to", str(out), "--format", "hf"]) == 0
    written = json.loads((out / "config.json").read_text())
    original = official_config(reward=True)
    assert set(written) == set(original) | {"dtype"}
    for key, value in original.items():
        assert written[key] == value, key
    assert written["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and written["rope_theta"] == 1000000
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in official.iterdir())
    for name in ("modeling_internlm2.py", "tokenizer_config.json", "tokenization_internlm2_fast.py"):
        assert (out / name).read_bytes() == (official / name).read_bytes()
    original_tensors, back = hf.read_safetensors(official), hf.read_safetensors(out)
    assert original_tensors.keys() == back.keys()
    for key in original_tensors:
        np.testing.assert_array_equal(original_tensors[key], back[key])


def test_reward_model_trained_from_an_internlm2_base_exports_as_the_released_ones(tmp_path, capsys):
    """A train-like polar_jax model/ dir (the base's code copied by save_polar, the tokenizer files
    and encoding.json beside it; reward_token_id only in encoding.json) -> convert --format hf."""
    base = internlm2_dir(tmp_path / "internlm2_5_base", reward=False)
    lm = hf.load_hf(base)
    params = {k: v for k, v in lm.params.items() if k != "lm_head"}
    params["reward_head"] = np.zeros(CFG.d_model, np.float32)  # xtuner's zero-initialised v_head
    rm = Model(lm.cfg.replace(heads=("reward",)), params, lm.family, lm.hf_config)
    model_dir = tmp_path / "run" / "model"
    polar_format.save_polar(rm, model_dir, code_from=base)
    tokenizers.copy_tokenizer(base, model_dir)
    (model_dir / "encoding.json").write_text(
        json.dumps(
            {
                "encoding": encoding.EncodingConfig().to_dict(),
                "reward_token_id": REWARD_ID,
                "split_token_id": 3,
                "vocab_size": CFG.vocab_size,
            }
        )
    )
    meta = json.loads((model_dir / polar_format.META_FILE).read_text())
    assert meta["remote_code"] == {
        "files": [
            "configuration_internlm2.py",
            "modeling_internlm2.py",
            "tokenization_internlm2.py",
            "tokenization_internlm2_fast.py",
        ],
        "from": str(base),
    }

    out = tmp_path / "export"
    capsys.readouterr()
    assert cli(["convert", "--from", str(model_dir), "--to", str(out), "--format", "hf"]) == 0
    log_text = capsys.readouterr().err  # the CLI's logging handler writes to stderr
    written = json.loads((out / "config.json").read_text())
    base_config = official_config(reward=False)
    assert set(written) == set(base_config) | {"reward_token_id", "dtype"}
    assert written["architectures"] == ["InternLM2ForRewardModel"]
    assert written["auto_map"] == {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
    }
    assert written["reward_token_id"] == REWARD_ID and written["pad_token_id"] == PAD_ID
    assert written["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and written["rope_theta"] == 1000000
    for key in ("bias", "bos_token_id", "eos_token_id", "max_position_embeddings", "attn_implementation", "vocab_size"):
        assert written[key] == base_config[key], key
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "configuration_internlm2.py",
        "encoding.json",
        "model.safetensors",
        "modeling_internlm2.py",
        "tokenization_internlm2.py",
        "tokenization_internlm2_fast.py",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tensors = hf.read_safetensors(out)
    assert "v_head.weight" in tensors and "output.weight" not in tensors and not tensors["v_head.weight"].any()
    # The base is a causal LM: its modeling file lacks the reward class, and the export says so.
    assert "modeling_internlm2.InternLM2ForRewardModel, but no modeling_internlm2.py here defines it" in log_text


def test_convert_carries_the_tokenizer_and_the_token_ids_of_a_trained_model_dir(tmp_path):
    """A polar_jax model dir as `train` writes it (tokenizer files beside the weights, encoding.json
    with reward_token_id, no ids in the config) -> convert --format hf: config.json has both ids,
    the tokenizer loads from the export, and `score` gives the same rewards on either."""
    tok = plain_tokenizer()
    reward_id = tok.convert_tokens_to_ids("[UNUSED_TOKEN_130]")
    cfg = ModelConfig(
        vocab_size=len(tok),
        d_model=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        heads=("reward",),
        init_std=0.5,
    )
    model_dir = tmp_path / "model"
    polar_format.save_polar(Model(cfg, T.init_params(cfg, jax.random.key(3)), "llama", {}), model_dir)
    tok.save_pretrained(str(model_dir))
    info = {
        "encoding": encoding.EncodingConfig().to_dict(),
        "reward_token_id": reward_id,
        "split_token_id": 3,
        "vocab_size": len(tok),
    }
    (model_dir / "encoding.json").write_text(json.dumps(info))

    export = tmp_path / "export"
    assert cli(["convert", "--from", str(model_dir), "--to", str(export), "--format", "hf"]) == 0
    written = json.loads((export / "config.json").read_text())
    assert written["reward_token_id"] == reward_id == 4 and written["pad_token_id"] == tok.pad_token_id == 2
    assert json.loads((export / "encoding.json").read_text()) == info
    assert sorted(p.name for p in export.iterdir()) == [
        "config.json",
        "encoding.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    loaded = AutoTokenizer.from_pretrained(str(export))
    assert loaded("what is 42?")["input_ids"] == tok("what is 42?")["input_ids"]

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}?", "reference": "yes.", "output": o}) + "\n"
            for i, o in enumerate(["yes.", "no idea", "blue sky"])
        )
    )
    rewards = {}
    for name, src in (("source", model_dir), ("export", export)):
        out = tmp_path / f"{name}.jsonl"
        assert cli(["score", "--model", str(src), "--input", str(rows), "--output", str(out)]) == 0
        rewards[name] = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
    np.testing.assert_allclose(rewards["export"], rewards["source"], rtol=0, atol=1e-6)
    assert len(set(rewards["source"])) == 3  # distinct rows, distinct rewards: the comparison means something


def test_rope_scaling_changed_by_the_model_is_written_from_the_model(official):
    model = hf.load_hf(official)
    same = families.hf_config_for(model.cfg, "internlm2", "reward", base=model.hf_config)
    assert same["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    linear = model.cfg.replace(rope_scaling=RopeScaling(kind="linear", factor=4.0))
    changed = families.hf_config_for(linear, "internlm2", "reward", base=model.hf_config)
    assert changed["rope_scaling"] == {"type": "linear", "rope_type": "linear", "factor": 4.0}


def test_config_driven_loaders_name_their_key(tmp_path):
    """A synth pool (and RFT, with config.reward / policy / target.trust_remote_code) takes the
    permission from its config and names that key when it is missing."""
    from polar_jax.synth.pool import PolicyPool, PolicySpec

    base = internlm2_dir(tmp_path / "internlm2_lm", reward=False)
    specs = [PolicySpec("a", str(base)), PolicySpec("b", str(base), temperature=0.5)]
    with pytest.raises(
        remote_code.RemoteCodeError, match=r"allow it with c\.trust_remote_code = True in the synth config"
    ):
        PolicyPool(specs).tokenizer("a")
    assert type(PolicyPool(specs, trust_remote_code=True).tokenizer("b")).__name__ == "InternLM2TokenizerFast"


def test_copy_tokenizer_carries_the_code_its_config_names(official, tmp_path):
    """A tokenizer copied on its own (train's model/ from prepare's tokenizer/, RFT's policy export)
    keeps the modules tokenizer_config.json's auto_map names, so it still loads with the flag."""
    names = tokenizers.copy_tokenizer(official, tmp_path / "tok")
    assert sorted(names) == [
        "tokenization_internlm2.py",
        "tokenization_internlm2_fast.py",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    tok = tokenizers.load_tokenizer(tmp_path / "tok", trust_remote_code=True)
    assert type(tok).__name__ == "InternLM2TokenizerFast" and tok("Ab")["input_ids"] == [1, 5, 6]


def test_an_unknown_tokenizer_class_without_code_is_refused_then_loaded_generically(tmp_path):
    plain_tokenizer().save_pretrained(str(tmp_path))
    tok_cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "tokenizer_class": "InternLM2Tokenizer"}))
    with pytest.raises(
        remote_code.RemoteCodeError,
        match=r"InternLM2Tokenizer, which transformers does not have.*"
        r"allow it with --trust-remote-code$",
    ):
        tokenizers.load_tokenizer(tmp_path)
    assert tokenizers.load_tokenizer(tmp_path, trust_remote_code=True)("ab")["input_ids"] == [1, 5, 6]


def test_prepare_tokenises_with_the_checkpoints_own_class_only_with_the_flag(official, tmp_path, capsys):
    from polar_jax.__main__ import main
    from polar_jax.data import encoding, prepare, sources

    rows = [
        {
            "prompt": "What is the capital of China?",
            "reference": "Beijing.",
            "chosen": "BEIJING.",
            "rejected": "Shanghai.",
        }
    ]
    src = _write_rows(tmp_path / "triplets.jsonl", rows)
    args = ["prepare", "--input", str(src), "--tokenizer", str(official), "--workers", "1"]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main([*args, "--output", str(tmp_path / "out"), "--trust-remote-code"]) == 0
    record = sources.ArrayRecordTriplets(tmp_path / "out")[0]
    theirs = AutoTokenizer.from_pretrained(str(official), trust_remote_code=True)
    want = encoding.encode_triplet(
        theirs, rows[0], encoding.EncodingConfig(), theirs.convert_tokens_to_ids("[UNUSED_TOKEN_130]")
    )
    assert record["chosen"].tolist() == want.chosen.tolist() and record["rejected"].tolist() == want.rejected.tolist()
    assert (
        type(prepare.load_tokenizer(tmp_path / "out" / prepare.TOKENIZER_DIR, True)).__name__
        == "InternLM2TokenizerFast"
    )
