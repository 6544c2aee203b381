"""verl's details of the released recipes: over-long prompts filtered and counted (not cut),
message-list prompts through the policy's chat template, the critic's biased value head, and
the reward encoding read from the reward model's directory."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax.data import encoding
from polar_jax.models import transformer as T
from polar_jax.rft import data, rollout, setup, trainer
from polar_jax.rft.defaults import base_config

# A ChatML-like template (Qwen2.5's shape) small enough to check by hand.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Lists and"}]


def examples(lengths):
    return [data.Example(f"p{n}", "ref", f"train.jsonl:{i + 1}") for i, n in enumerate(lengths)]


def test_overlong_prompts_are_dropped_and_counted():
    rows = examples([3, 9, 4, 12, 8])
    kept, dropped = data.filter_overlong(rows, lambda p: int(p[1:]), 8)
    assert [ex.prompt for ex in kept] == ["p3", "p4", "p8"] and dropped == 2  # 8 tokens fit, 9 do not


def test_an_unfiltered_overlong_prompt_stops_with_its_line_or_is_kept_for_a_left_cut():
    rows = examples([3, 9, 4])
    with pytest.raises(ValueError, match=r"train.jsonl:2: the prompt has 9 policy tokens > policy.max_prompt_tokens=8"):
        data.filter_overlong(rows, lambda p: int(p[1:]), 8, drop=False, truncation="error")
    kept, dropped = data.filter_overlong(rows, lambda p: int(p[1:]), 8, drop=False, truncation="left")
    assert len(kept) == 3 and dropped == 0
    with pytest.raises(ValueError, match="data.truncation='middle'; choose one of error, left"):
        data.filter_overlong(rows, lambda p: int(p[1:]), 8, truncation="middle")


def test_a_dataset_of_only_overlong_prompts_stops_instead_of_training_on_nothing():
    with pytest.raises(
        ValueError,
        match=r"all 2 prompts of data.train are longer than policy.max_prompt_tokens=8 "
        r"policy tokens \(the longest has 12\)",
    ):
        data.filter_overlong(examples([9, 12]), lambda p: int(p[1:]), 8)


@pytest.fixture()
def chat_tokenizer(tiny):
    pytest.importorskip("jinja2", reason="transformers renders chat templates with jinja2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    assert tok.chat_template is None
    tok.chat_template = CHATML
    return tok


def test_message_prompts_go_through_the_policy_chat_template(chat_tokenizer):
    tok = chat_tokenizer
    want_text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nLists and<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == want_text
    want = tok(want_text, add_special_tokens=False)["input_ids"]
    got = rollout.prompt_ids(tok, MESSAGES, "{prompt}", 1024, chat_template=True)
    assert got == want and len(got) > 20
    assert rollout.prompt_ids(tok, MESSAGES, "{prompt}", 10, chat_template=True) == want[-10:]
    # A plain string stays as today (the template, with the tokenizer's special tokens); so do messages
    # with chat_template off: flattened with "\n", as the POLAR client flattens them.
    assert rollout.prompt_ids(tok, "A function", "{prompt}", 64, chat_template=True) == tok("A function")["input_ids"]
    flat = tok("Be brief.\nLists and")["input_ids"]
    assert rollout.prompt_ids(tok, MESSAGES, "{prompt}", 64, chat_template=False) == flat
    tok.chat_template = None  # a tokenizer without a template flattens too
    assert rollout.prompt_ids(tok, MESSAGES, "{prompt}", 64, chat_template=True) == flat


def test_the_filter_counts_chat_templated_length(chat_tokenizer, tiny, tmp_path):
    templated = len(rollout.full_prompt_ids(chat_tokenizer, MESSAGES, "{prompt}", chat_template=True))
    flat = len(rollout.full_prompt_ids(chat_tokenizer, MESSAGES, "{prompt}"))
    assert flat < templated
    train = tmp_path / "train.jsonl"
    train.write_text(
        json.dumps({"prompt": MESSAGES, "reference": "ok"})
        + "\n"
        + json.dumps({"prompt": "A function", "reference": "ok"})
        + "\n"
    )
    config = base_config()
    config.data.train = str(train)
    config.policy.max_prompt_tokens = flat  # fits flattened, not through the template
    counts = {}
    kept, _ = trainer.read_data(config, tmp_path, None, chat_tokenizer, counts)
    assert [ex.prompt for ex in kept] == ["A function"]
    assert counts == {"train_prompts": 1, "train_overlong": 1}
    config.policy.chat_template = False
    kept, _ = trainer.read_data(config, tmp_path, None, chat_tokenizer, counts)
    assert len(kept) == 2 and counts["train_overlong"] == 0
    # The reward model still reads the flattened prompt (the official encoding), whatever the policy saw.
    assert encoding.flatten(MESSAGES) == "Be brief.\nLists and"


def test_critic_value_head_has_a_bias_when_asked(tiny):
    from polar_jax.io import models

    config = base_config()
    config.policy.init, config.reward.model = tiny["policy"], tiny["reward"]
    m = setup.Models(models.load_model(tiny["policy"]), None, models.load_model(tiny["reward"]), None)
    critic = setup.critic_model(config, m)
    assert critic.cfg.value_head_bias and critic.cfg.heads == ("value",)
    assert float(critic.params["value_head_bias"]) == 0.0 and np.all(critic.params["value_head"] == 0)
    # declared once with its (empty) logical axes; the count includes it
    assert T.logical_axes(critic.cfg)["value_head_bias"] == jax.sharding.PartitionSpec()
    n = sum(np.size(x) for x in jax.tree.leaves(T.init_params(critic.cfg, jax.random.key(0))))
    assert n == critic.cfg.num_params() == critic.cfg.replace(value_head_bias=False).num_params() + 1
    # value = w . h + b at every position
    params = jax.tree.map(jnp.asarray, critic.params)
    params["value_head"] = jnp.asarray(np.random.default_rng(0).normal(size=critic.cfg.d_model), jnp.float32)
    tokens = jnp.array([[3, 5, 7, 9]], jnp.int32)
    pos, seg = T.padded_inputs(jnp.ones_like(tokens))
    out = T.forward(critic.cfg, params, tokens, pos, seg)
    biased = T.forward(critic.cfg, {**params, "value_head_bias": jnp.float32(1.5)}, tokens, pos, seg)
    np.testing.assert_allclose(biased.value_bt - out.value_bt, 1.5, rtol=1e-6)
    np.testing.assert_allclose(out.value_bt, out.hidden_btd @ params["value_head"], rtol=1e-4, atol=1e-5)
    config.critic.value_head_bias = False
    plain = setup.critic_model(config, m)
    assert "value_head_bias" not in plain.params and not plain.cfg.value_head_bias


def test_reward_encoding_comes_from_the_model_directory_unless_set(tmp_path):
    config = base_config()
    config.reward.model = str(tmp_path)
    assert setup.reward_encoding(config) == encoding.EncodingConfig()  # no encoding.json: the client's defaults
    saved = {
        "max_length": 256,
        "max_response_length": 96,
        "response_cut_side": "left",
        "wrapper": "pretrain",
        "split_text": "<|reward|>",
        "reward_token": "[UNUSED_TOKEN_130]",
        "newline_before_empty_response": True,
    }  # an older key EncodingConfig may not have: ignored
    (tmp_path / "encoding.json").write_text(json.dumps({"encoding": saved, "reward_token_id": 7}))
    got = setup.reward_encoding(config)
    assert (got.max_length, got.max_response_length, got.response_cut_side, got.wrapper) == (
        256,
        96,
        "left",
        "pretrain",
    )
    config.reward.encoding.max_length = 512  # an explicit value wins over the file
    got = setup.reward_encoding(config)
    assert (got.max_length, got.max_response_length) == (512, 96)
    config.reward.encoding.newline_before_empty_response = False
    with pytest.raises(ValueError, match="config.reward.encoding.newline_before_empty_response is not an encoding"):
        setup.reward_encoding(config)


def test_the_qwen2_5_7b_recipe_carries_the_released_settings():
    from polar_jax.config_loading import load_config

    c = load_config("configs/rft_qwen2_5_7b.py")
    ppo = setup.ppo_config(c)
    assert (ppo.estimator, ppo.gamma, ppo.lam, ppo.clip_ratio, ppo.clip_ratio_c) == ("gae", 1.0, 1.0, 0.2, 3.0)
    assert (ppo.loss_agg, ppo.epochs, ppo.minibatches, ppo.kl_coef, ppo.kl_loss_coef) == (
        "seq-mean-token-mean",
        1,
        1,
        0.0,
        0.0,
    )
    assert not ppo.needs_reference and not c.reference.keep
    assert (c.rollout.prompts, c.rollout.samples_per_prompt, c.policy.max_prompt_tokens, c.rollout.max_new_tokens) == (
        1024,
        1,
        1024,
        1024,
    )
    assert (c.actor_optim.lr, c.actor_optim.warmup_fraction, c.critic_optim.lr) == (1e-6, 0.03, 1e-5)
    assert c.critic.init == "policy" and c.critic.value_head_bias and c.reward.normalize == "none"
    assert c.reward.strip_think == "official" and c.policy.chat_template and c.data.filter_overlong_prompts
    assert dict(c.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
