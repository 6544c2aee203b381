"""`step.experience_shapes` (the abstract Experience that ahead-of-time lowering uses) matches
what `make_experience` returns for tiny random models, with and without a critic."""

import jax
import pytest

from polar_jax import sampling
from polar_jax.models.config import ModelConfig
from polar_jax.rft import rollout, step
from polar_jax.train.lm import numpy_init_params

PROMPT_LEN, NEW_TOKENS = 4, 3


def tiny_cfg(heads) -> ModelConfig:
    return ModelConfig(
        vocab_size=16,
        d_model=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        heads=heads,
        tie_embeddings="lm" in heads,
    )


@pytest.mark.parametrize("estimator", ["gae", "group"])
def test_experience_shapes_match_make_experience(estimator):
    actor_cfg = tiny_cfg(("lm",))
    critic_cfg = tiny_cfg(("value",)) if estimator == "gae" else None
    ppo = step.PPOConfig(estimator=estimator, group_size=2)
    actor_params = numpy_init_params(actor_cfg, 0)
    critic_params = numpy_init_params(critic_cfg, 1) if critic_cfg else None
    prompt_bt, lengths_b = rollout.pad_prompts([[1, 2], [3, 4, 5], [1], [2, 2, 2, 2]], PROMPT_LEN)
    sampler = sampling.SamplingConfig(temperature=1.0, max_new_tokens=NEW_TOKENS)
    batch = rollout.rollout(actor_cfg, actor_params, prompt_bt, lengths_b, sampler, jax.random.key(0))
    scores_b = batch.response_mask_bn.sum(axis=1)
    exp, _ = step.make_experience(
        actor_params, critic_params, actor_params, batch, scores_b, actor_cfg=actor_cfg, critic_cfg=critic_cfg, ppo=ppo
    )
    got = {k: (v.shape, v.dtype) for k, v in exp._asdict().items()}
    expected = step.experience_shapes(4, batch.tokens_bt.shape[1], NEW_TOKENS)
    assert batch.tokens_bt.shape[1] == PROMPT_LEN + NEW_TOKENS
    assert got == expected
