"""The `Model` every loader in `polar_jax.io` returns (`models.load_model`, `hf.load_hf`, `polar_format.load_polar`).

Its own module so that the format modules and the one door (`io.models`) share it without an import cycle.
"""

from __future__ import annotations

import dataclasses

from polar_jax.models.config import ModelConfig


@dataclasses.dataclass
class Model:
    """A decoder with its weights and the checkpoint metadata that travels with them."""

    cfg: ModelConfig
    params: dict
    family: str
    hf_config: dict  # the source config.json (token ids, reward_token_id, auto_map, ...)
