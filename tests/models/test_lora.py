"""LoRA over the parameter pytree (`models/lora.py`) and its PEFT directory (`io/peft.py`): the exact
trainable count, zero-initialised adapters = the base bit for bit, merge = W + alpha / r x A @ B
(numpy), adapter axes derived from the weights' (and sharded by the same rules), the merged HF
export and the PEFT adapters agree with each other, the adapter directory round trip."""

import json
import math

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from polar_jax import parallel
from polar_jax.io import hf, hf_names, peft
from polar_jax.io.model import Model
from polar_jax.models import families
from polar_jax.models import lora as L
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.train.lm import numpy_init_params

CFG = ModelConfig(
    vocab_size=96, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48, qkv_bias=True
)
RANK = 4


def random_adapters(cfg, lora, seed=1):
    """Adapters with B non-zero too (fresh ones have B = 0), as numpy."""
    rng = np.random.default_rng(seed)
    fresh = L.init_adapters(cfg, lora, jax.random.key(seed))
    return jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), fresh)


def test_trainable_count_is_rank_times_in_plus_out_per_target_and_layer():
    d, h, k, e, f, layers = CFG.d_model, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim, CFG.mlp_dim, CFG.num_layers
    in_out = {"wq": (d, h * e), "wk": (d, k * e), "wv": (d, k * e), "wo": (h * e, d)}
    in_out.update(w_gate=(d, f), w_up=(d, f), w_down=(f, d))
    for targets in (L.ALL_TARGETS, ("wq", "wv"), ("w_down",)):
        lora = L.LoraConfig(rank=RANK, targets=targets)
        expected = sum(layers * RANK * (in_out[t][0] + in_out[t][1]) for t in targets)
        adapters = L.init_adapters(CFG, lora, jax.random.key(0))
        assert L.num_adapter_params(CFG, lora) == expected
        assert sum(x.size for x in jax.tree.leaves(adapters)) == expected
        assert L.targets_of(adapters) == targets
    assert L.num_adapter_params(CFG, L.LoraConfig(rank=RANK)) == 3 * 4 * (
        64 + 48 + 48 + 64 + 80 + 80 + 80
    )  # layers x r x (in + out)


def test_fresh_adapters_give_the_base_model_bit_for_bit():
    base = numpy_init_params(CFG, 0)
    lora = L.LoraConfig(rank=RANK, alpha=32.0)
    adapters = L.init_adapters(CFG, lora, jax.random.key(3))
    a = np.asarray(adapters["layers"]["attn"]["wq"]["lora_a"])
    bound = 1 / math.sqrt(CFG.d_model)
    assert 0 < np.abs(a).max() <= bound and np.std(a) > bound / 3  # A random (PEFT's bound), B zeros
    assert all(not np.any(np.asarray(f["lora_b"])) for _, f in L._adapter_items(adapters))
    tokens = np.asarray(jax.random.randint(jax.random.key(4), (2, 12), 1, CFG.vocab_size))
    positions, segment_ids = T.padded_inputs(np.ones((2, 12)))
    plain = T.forward(CFG, base, tokens, positions, segment_ids).logits_btv
    adapted = T.forward(CFG, L.merged(adapters, base, lora), tokens, positions, segment_ids).logits_btv
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(plain))


def test_merge_is_w_plus_scaling_a_at_b_and_leaves_the_rest_as_they_are():
    base = numpy_init_params(CFG, 0)
    lora = L.LoraConfig(rank=RANK, alpha=8.0, targets=("wq", "wo", "w_down"))
    adapters = random_adapters(CFG, lora)
    out = jax.jit(L.merge, static_argnames="scaling")(base, adapters, lora.scaling)
    for target in ("wq", "wo", "w_down"):
        path = T.PROJECTIONS[target][0]
        a, b = (L.get_at(adapters, path)[k] for k in ("lora_a", "lora_b"))
        n_in = T.PROJECTIONS[target][1]
        in_letters, out_letters = "ijk"[:n_in], "xyz"[: b.ndim - 2]
        delta = np.einsum(f"l{in_letters}r,lr{out_letters}->l{in_letters}{out_letters}", a, b)
        np.testing.assert_allclose(
            np.asarray(L.get_at(out, path)), L.get_at(base, path) + 2.0 * delta, rtol=1e-6, atol=1e-7
        )
    for path in ("layers/attn/wk", "layers/attn/bq", "embedding", "final_norm/scale"):
        np.testing.assert_array_equal(np.asarray(L.get_at(out, path)), L.get_at(base, path))


def test_adapter_axes_come_from_the_weights_and_shard_by_the_same_rules():
    lora = L.LoraConfig(rank=RANK)
    axes = L.adapter_axes(CFG, lora)
    weights = T.logical_axes(CFG)
    for target, (path, n_in) in T.PROJECTIONS.items():
        w = tuple(L.get_at(weights, path))
        got = L.get_at(axes, path)
        assert tuple(got["lora_a"]) == (w[0], *w[1 : 1 + n_in], T.LORA)
        assert tuple(got["lora_b"]) == (w[0], T.LORA, *w[1 + n_in :])
    # the input-axis counts agree with the HF table's layouts (the other declaration of in / out)
    layouts = {r.param: r.layout for r in hf_names.TABLES["llama"] if isinstance(r, hf_names.Rule)}
    assert all(len(layouts[path].in_dims) == n_in for path, n_in in T.PROJECTIONS.values())
    mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    specs = jax.tree.map(
        lambda s: s.spec,
        parallel.logical_to_sharding(L.adapter_axes(CFG, lora), mesh),
        is_leaf=lambda x: hasattr(x, "spec"),
    )
    assert tuple(specs["layers"]["attn"]["wq"]["lora_a"]) == (None, "fsdp", None)  # embed -> fsdp, rank replicated
    assert tuple(specs["layers"]["attn"]["wq"]["lora_b"]) == (None, None, "tensor", None)  # heads -> tensor
    assert tuple(specs["layers"]["mlp"]["w_down"]["lora_a"]) == (None, "tensor", None)
    assert tuple(specs["layers"]["mlp"]["w_down"]["lora_b"]) == (None, None, "fsdp")


def test_merged_hf_export_equals_base_plus_ba_and_the_peft_directory_says_the_same(tmp_path):
    cfg = CFG.replace(qkv_bias=False)
    base = numpy_init_params(cfg, 0)
    lora = L.LoraConfig(rank=RANK, alpha=12.0)
    adapters = random_adapters(cfg, lora)
    merged = jax.tree.map(np.asarray, L.merged(adapters, base, lora))
    hf_config = families.hf_config_for(cfg, "llama", "lm")
    hf.save_hf(Model(cfg, base, "llama", hf_config), tmp_path / "base")
    hf.save_hf(Model(cfg, merged, "llama", hf_config), tmp_path / "merged")
    peft.save_adapters(cfg, "llama", adapters, lora, tmp_path / "adapters", base_model="base")

    loaded = hf.load_hf(tmp_path / "merged")
    np.testing.assert_allclose(loaded.params["layers"]["attn"]["wo"], merged["layers"]["attn"]["wo"], rtol=0, atol=0)
    config = json.loads((tmp_path / "adapters" / peft.CONFIG_FILE).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", RANK, 12.0)
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # PEFT's rule on the HF tensors: W + lora_alpha / r x lora_B @ lora_A is the merged export's weight
    base_t, merged_t = (
        load_file(tmp_path / "base" / "model.safetensors"),
        load_file(tmp_path / "merged" / "model.safetensors"),
    )
    lora_t = load_file(tmp_path / "adapters" / peft.WEIGHTS_FILE)
    assert len(lora_t) == 2 * len(lora.targets) * cfg.num_layers
    for i in range(cfg.num_layers):
        for module in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"):
            name = f"model.layers.{i}.{module}"
            a, b = lora_t[f"base_model.model.{name}.lora_A.weight"], lora_t[f"base_model.model.{name}.lora_B.weight"]
            assert a.shape[0] == RANK and b.shape[1] == RANK
            np.testing.assert_allclose(
                base_t[f"{name}.weight"] + 3.0 * b @ a, merged_t[f"{name}.weight"], rtol=1e-5, atol=1e-6
            )
    back, back_lora = peft.load_adapters(cfg, "llama", tmp_path / "adapters")
    assert back_lora == lora
    jax.tree.map(np.testing.assert_array_equal, back, adapters)


def test_bad_targets_and_fused_qkv_exports_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="lora.targets: 'q_proj' is not a projection of the decoder; choose from wq"):
        L.LoraConfig(rank=2, targets=("q_proj",))
    with pytest.raises(ValueError, match="lora.rank=0"):
        L.LoraConfig(rank=0)
    lora = L.LoraConfig(rank=2, targets=("wq", "wo"))
    with pytest.raises(peft.AdapterError, match="fused 'model.layers.{i}.attention.wqkv.weight'"):
        peft.save_adapters(CFG, "internlm2", L.init_adapters(CFG, lora, jax.random.key(0)), lora, tmp_path)
    only_wo = L.LoraConfig(rank=2, targets=("wo",))  # InternLM2's unfused projections are written
    peft.save_adapters(CFG, "internlm2", L.init_adapters(CFG, only_wo, jax.random.key(0)), only_wo, tmp_path / "wo")
    assert json.loads((tmp_path / "wo" / peft.CONFIG_FILE).read_text())["target_modules"] == ["wo"]
