"""The update pushes the right way: with the group baseline (4 rollouts per prompt, no critic),
a tiny random policy rewarded for writing one token learns to write it."""

import jax
import jax.numpy as jnp
import numpy as np

from polar_jax import parallel, sampling
from polar_jax.models.config import ModelConfig
from polar_jax.rft import rollout, step
from polar_jax.train.lm import numpy_init_params
from polar_jax.train.optim import OptimConfig, make_optimizer
from polar_jax.train.state import create_state

GOOD = 7  # the rewarded token


def test_group_baseline_ppo_raises_a_simple_reward():
    cfg = ModelConfig(
        vocab_size=16,
        d_model=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=64,
        tie_embeddings=True,
    )
    ppo = step.PPOConfig(estimator="group", group_size=4, epochs=2, minibatches=2)
    optim = OptimConfig(lr=3e-3, warmup_fraction=0.0, final_lr_fraction=1.0, weight_decay=0.0)
    iterations = 15
    total = iterations * ppo.epochs * ppo.minibatches
    mesh = parallel.make_mesh({"data": -1})
    sampler = sampling.SamplingConfig(temperature=1.0, max_new_tokens=6)
    prompt_bt, lengths_b = rollout.pad_prompts([[1 + i % 4, 2] for i in range(4) for _ in range(4)], 4)
    with parallel.use_rules(mesh):
        actor = create_state(
            cfg, make_optimizer(optim, total), jax.random.key(0), mesh, params=numpy_init_params(cfg, 0)
        )
        rewards = []
        for i in range(iterations):
            key_sample, key_update = jax.random.split(jax.random.key(i))
            batch = rollout.rollout(cfg, actor.params, prompt_bt, lengths_b, sampler, key_sample)
            scores_b = jnp.mean((batch.response_bn == GOOD).astype(jnp.float32), axis=1)  # no stop token: all 6 kept
            exp, metrics = step.make_experience(
                actor.params, None, None, batch, scores_b, actor_cfg=cfg, critic_cfg=None, ppo=ppo
            )
            actor, _, update = step.ppo_update(
                actor,
                None,
                exp,
                key_update,
                actor_cfg=cfg,
                critic_cfg=None,
                ppo=ppo,
                actor_optim=optim,
                critic_optim=None,
                total_steps=total,
                mesh=mesh,
            )
            rewards.append(float(jnp.mean(scores_b)))
    assert int(actor.step) == total and int(update["skipped"]) == 0
    assert 0.0 < float(update["clip_frac"]) < 1.0
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert first < 0.2 and last > 0.5, rewards  # from about 1/16 of the tokens to most of them (0.05 -> 0.86 here)
