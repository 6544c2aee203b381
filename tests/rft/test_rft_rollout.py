"""Rollouts and their rewards: the [left-padded prompt | response] layout, log-probs that
match the sampler's, `<think>` stripping, and POLAR scores equal to the `score` path's."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polar_jax import sampling
from polar_jax.data import encoding
from polar_jax.io import models, tokenizers
from polar_jax.rft import rewards, rollout, step
from polar_jax.scoring import reward_token_id_for, score_rows


def test_assemble_left_pads_the_prompt_so_every_response_starts_at_column_p():
    prompt_bt = np.array([[5, 6, 7, 0], [8, 0, 0, 0]], np.int32)
    response_bn = np.array([[1, 2, 0], [3, 4, 9]], np.int32)
    out = rollout.assemble(jnp.asarray(prompt_bt), jnp.array([3, 1]), jnp.asarray(response_bn), jnp.array([2, 3]))
    np.testing.assert_array_equal(out.tokens_bt, [[0, 5, 6, 7, 1, 2, 0], [0, 0, 0, 8, 3, 4, 9]])
    np.testing.assert_array_equal(out.mask_bt, [[0, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out.response_mask_bn, [[1, 1, 0], [1, 1, 1]])


def test_update_log_probs_equal_the_samplers(tiny):
    model = models.load_model(tiny["policy"])
    tok = tokenizers.load_tokenizer(tiny["policy"])
    ids = [rollout.prompt_ids(tok, p, "{prompt}", 12) for p in ["A function", "Lists and tuples are", "x"]]
    prompt_bt, lengths_b = rollout.pad_prompts(ids, 12)
    cfg = sampling.SamplingConfig(temperature=1.0, max_new_tokens=6)
    params = jax.tree.map(jnp.asarray, model.params)
    gen = sampling.generate(model.cfg, params, prompt_bt, lengths_b, cfg, jax.random.key(3))
    batch = rollout.assemble(jnp.asarray(prompt_bt), jnp.asarray(lengths_b), gen.tokens_bn, gen.lengths_b)

    @jax.jit
    def logprobs(params, batch):
        logits_bnv = step.response_logits(model.cfg, params, batch.tokens_bt, batch.mask_bt, 6)
        return step.token_logprobs(logits_bnv, batch.response_bn) * batch.response_mask_bn

    logp_bn = logprobs(params, batch)
    np.testing.assert_allclose(logp_bn, gen.logprobs_bn, atol=2e-5)
    assert float(jnp.min(gen.logprobs_bn)) < -1.0  # real, non-trivial log-probs were compared


def official_strip(text: str) -> str:
    """POLAR's reward_func.extract_thinking_content, as its README states it (the remainder)."""
    match = re.search(r"<think>(.*?)</think>(.*)", text, re.DOTALL)
    return match.group(2).strip() if match else text


@pytest.mark.parametrize(
    "text,want",
    [
        ("plain answer ", "plain answer "),  # no tags: unchanged, not even stripped
        ("  spaced  ", "  spaced  "),
        ("<think>hmm\nlet me see</think>\n\nBeijing.  ", "Beijing."),  # the remainder, whitespace stripped
        ("Beijing. <think>cut off mid-thought", "Beijing. <think>cut off mid-thought"),  # unclosed: unchanged
        ("reasoning the template opened</think> Beijing.", "reasoning the template opened</think> Beijing."),
        ("a <think>x</think> b <think>y</think> c", "b <think>y</think> c"),  # first pair; later spans remain
        ("<think>x</think>y</think>z", "y</think>z"),  # the first </think> closes the span
        ("<think>only thoughts</think>  \n", ""),  # empty remainder
        ("pre <think>\nmulti\nline\n</think>\tans\n", "ans"),  # text before the span is dropped too
    ],
)
def test_strip_think_is_the_official_rule(text, want):
    assert rewards.strip_think(text) == want == official_strip(text)
    assert rewards.strip_think(text, "none") == text


def test_strip_think_all_spans_is_a_named_option():
    assert rewards.strip_think("plain answer ", "all_spans") == "plain answer "
    assert rewards.strip_think("a <think>x</think> b <think>y</think> c", "all_spans") == "a  b  c"
    assert rewards.strip_think("reasoning the template opened</think> Beijing.", "all_spans") == "Beijing."
    assert rewards.strip_think("Beijing. <think>cut off mid-thought", "all_spans") == "Beijing."
    with pytest.raises(ValueError, match="reward.strip_think='yes'; choose one of official, all_spans, none"):
        rewards.strip_think("x", "yes")


def test_rollout_scores_equal_the_score_command_path(tiny):
    rm = models.load_model(tiny["reward"])
    tok = tokenizers.load_tokenizer(tiny["reward"])
    enc = encoding.EncodingConfig(max_length=128, max_response_length=32)
    reward_model = rewards.RewardModel(rm.cfg, rm.params, tok, reward_token_id_for(rm, tok, enc), enc, batch_size=4)
    prompts = ["A function", [{"role": "user", "content": "Lists"}, {"role": "user", "content": "and"}], "Loops"]
    refs = ["returns a value.", "tuples are sequences.", "repeat a block."]
    outs = ["<think>plan</think>returns a value.", "are sequences", "repeat"]
    got = reward_model.score(prompts, refs, outs)
    rows = [{"prompt": p, "reference": r, "output": rewards.strip_think(o)} for p, r, o in zip(prompts, refs, outs)]
    np.testing.assert_allclose(got, score_rows(rm, tok, rows, enc, batch_size=4, progress=False), rtol=1e-6)
    assert len(set(np.round(got, 6))) == 3  # three different scores, not a constant


def test_policy_samples_write_held_out_references_once(tiny, tmp_path):
    from polar_jax.rft import data, references
    from polar_jax.rft.defaults import base_config

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("".join(f"Prompt number {i} about lists\n" for i in range(10)))
    config = base_config()
    config.data.update(prompts=str(prompts_file), heldout_every=5, train_prompts=8, eval_prompts=8)
    config.target.update(checkpoint=tiny["target"], max_prompt_tokens=16, max_new_tokens=6, top_k=0, top_p=1.0)
    config.eval.batch_size = 8
    model, tok = references.load_target(config)
    target = references.TargetPolicy(config.target, model.cfg, model.params, tok)
    files = references.ensure_reference_data(config, tmp_path / "run", target, tok)
    train, heldout = data.read_jsonl(files["train"]), data.read_jsonl(files["eval"])
    assert [e.prompt for e in heldout] == ["Prompt number 4 about lists", "Prompt number 9 about lists"]
    assert len(train) == 8 and all(e.reference.strip() for e in train + heldout)
    before = files["train"].read_text()
    references.ensure_reference_data(config, tmp_path / "run", None, tok)  # found on disk: nothing sampled
    assert files["train"].read_text() == before
    # The target judges other policies' responses: its own samples are likelier to it than uniformly random
    # tokens (whose expected -log p is log V + KL(uniform || p) >= log V >= the entropy of its samples).
    # Word-reversed samples were the contrast before; with a random one-layer target they are as likely.
    samples = rollout.Samples([e.reference for e in train], [False] * 8, [6] * 8)
    random_ids = np.random.default_rng(0).integers(3, len(tok), (8, 6))  # after the 3 special tokens
    noise = rollout.Samples([tok.decode(ids.tolist()) for ids in random_ids], [False] * 8, [6] * 8)
    prompts = [e.prompt for e in train]
    assert target.loglik(prompts, samples, 8) > target.loglik(prompts, noise, 8)
