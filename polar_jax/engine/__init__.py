"""Continuous batching: a fixed set of decode slots refilled with waiting prompts as rows finish.

    from polar_jax.engine import Engine
    gen = Engine(cfg, sampling, slots=8, max_prompt_tokens=512).generate(params, prompt_ids, keys)

`steps.py` holds the pure compiled steps (prefill into slots, decode, harvest); `scheduler.py`
the host loop that drives them. Outputs equal `sampling.generate`'s for the same prompts and keys.
"""

from polar_jax.engine.scheduler import Engine, EngineStats, width_buckets

__all__ = ["Engine", "EngineStats", "width_buckets"]
