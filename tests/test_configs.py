"""Every shipped config loads, describes a model the library can build, and takes overrides
with type checks."""

import pathlib

import pytest

from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError
from polar_jax.models.config import ModelConfig

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SHIPPED = [
    "base.py",
    "pretrain_tiny.py",
    "sft_tiny.py",
    "polar_1_8b.py",
    "polar_1_8b.py:sft",
    "polar_7b.py",
    "polar_7b.py:sft",
]
SIZES = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")


@pytest.mark.parametrize("name", SHIPPED)
def test_config_loads_and_has_every_base_key(name):
    config = load_config(f"{CONFIGS / name}")
    base = load_config(CONFIGS / "base.py")
    assert set(config.keys()) == set(base.keys())
    for section in ("model", "data", "optim", "mesh"):
        assert set(config[section].keys()) == set(base[section].keys()), section
    if name != "base.py":  # base leaves sizes to each experiment (or to its checkpoint)
        ModelConfig(
            **{k: config.model[k] for k in SIZES}, heads=("reward",), dtype=config.model.dtype, remat=config.model.remat
        )


def test_replicas_carry_the_papers_numbers():
    assert load_config(CONFIGS / "polar_1_8b.py").optim.lr == 1.4e-5
    assert load_config(f"{CONFIGS / 'polar_1_8b.py'}:sft").optim.lr == 1e-5
    assert load_config(CONFIGS / "polar_7b.py").optim.lr == 1.67e-5
    assert load_config(f"{CONFIGS / 'polar_7b.py'}:sft").optim.lr == 2e-5
    seven = load_config(CONFIGS / "polar_7b.py")
    assert (seven.model.d_model, seven.model.num_layers, seven.model.num_kv_heads) == (4096, 32, 8)
    assert seven.optim.b2 == 0.95 and seven.optim.weight_decay == 0.0 and seven.optim.final_lr_fraction == 0.1


def test_a_size_left_open_takes_an_override():
    config = load_config(CONFIGS / "base.py", ["--config.model.d_model=256"])
    assert config.model.d_model == 256 and config.model.num_layers is None


def test_overrides_are_typed_and_named():
    config = load_config(CONFIGS / "pretrain_tiny.py", ["--config.optim.lr=1", "--config.model.dtype=bfloat16"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float) and config.model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"no field config.optim.lrr; did you mean config.optim.lr\?"):
        load_config(CONFIGS / "pretrain_tiny.py", ["--config.optim.lrr=1"])
    with pytest.raises(ConfigError, match="config.steps expects an integer, got a string 'many'"):
        load_config(CONFIGS / "pretrain_tiny.py", ["--config.steps=many"])


@pytest.mark.parametrize("name", ["polar_1_8b.py", "polar_1_8b.py:sft", "polar_7b.py", "polar_7b.py:sft"])
def test_replicas_start_the_reward_head_at_zeros_as_xtuner_does(name):
    assert load_config(f"{CONFIGS / name}").model.reward_head_init == "zeros"
    assert load_config(CONFIGS / "base.py").model.reward_head_init == "normal"  # the replicas chose it
