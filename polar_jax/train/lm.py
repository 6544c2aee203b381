"""Next-token language-model training: the loss, a jitted AdamW step, and a small loop that
trains on random windows of a token stream and saves Hugging Face checkpoints on the way.

The loop exists for the demo's policy pool (small LMs whose intermediate checkpoints are
different policies, as in the paper). RFT does not use this loss: its policy is trained with
the PPO losses of `rft/losses.py` (on per-token log-probs); it shares only `numpy_init_params`
(the random models of `bench/rft.py` and the RFT tests).

    saved = train_lm(cfg, ids_n, "runs/lm", steps=400, save_at=(50, 400), batch_size=16,
                     seq_len=64, lr=3e-3, seed=0, tokenizer_dir="runs/tokenizer")
    saved[50]  # runs/lm/step-50: config.json, model.safetensors, tokenizer files
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polar_jax.io import atomic, hf, tokenizers
from polar_jax.io.model import Model
from polar_jax.models import transformer as T
from polar_jax.models.config import ModelConfig
from polar_jax.train.optim import OptimConfig, make_optimizer

TRAINING_FILE = "training.json"  # written beside each checkpoint: how it was made


def lm_loss_sums(cfg: ModelConfig, params, tokens_bt, positions_bt, segment_ids_bt):
    """(summed next-token NLL, number of targets), float32. Token t predicts t + 1 only when
    both are real (segment id != 0) and in the same segment: padding and boundaries never count.
    Arguments in `transformer.forward`'s order (tokens, positions, segment ids)."""
    logits_btv = T.forward(cfg, params, tokens_bt, positions_bt, segment_ids_bt).logits_btv
    logits_btv = logits_btv[:, :-1].astype(jnp.float32)
    targets_bt = tokens_bt[:, 1:]
    seg_bt = segment_ids_bt[:, :-1]
    mask_bt = (seg_bt != 0) & (segment_ids_bt[:, 1:] == seg_bt)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    nll_bt = jax.nn.logsumexp(logits_btv, axis=-1) - target_logit_bt
    return jnp.sum(jnp.where(mask_bt, nll_bt, 0.0)), jnp.sum(mask_bt).astype(jnp.float32)


def lm_loss(cfg: ModelConfig, params, tokens_bt, positions_bt, segment_ids_bt):
    """Mean next-token cross-entropy over the real targets of a batch (0 when there are none)."""
    loss_sum, count = lm_loss_sums(cfg, params, tokens_bt, positions_bt, segment_ids_bt)
    return loss_sum / jnp.maximum(count, 1.0)


def make_lm_step(cfg: ModelConfig, optimizer: optax.GradientTransformation):
    """A jitted `(params, opt_state, tokens_bt, positions_bt, segment_ids_bt) -> (params,
    opt_state, loss)`: one optimiser update on `lm_loss`."""

    def step(params, opt_state, tokens_bt, positions_bt, segment_ids_bt):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(cfg, p, tokens_bt, positions_bt, segment_ids_bt))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step)


def numpy_init_params(cfg: ModelConfig, seed: int) -> dict:
    """Parameters drawn as `init_params` draws them (normal(init_std) weights, unit norm
    scales, zero biases), but with numpy: on CPU, compiling `init_params` costs seconds."""
    shapes = jax.eval_shape(lambda key: T.init_params(cfg, key), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bq", "bk", "bv"):
            return np.zeros(leaf.shape, leaf.dtype)
        return (rng.standard_normal(leaf.shape, np.float32) * cfg.init_std).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def lm_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """AdamW (0.9, 0.95), clip 1.0, 5% warm-up then cosine to 0.1 x lr over `steps`."""
    return make_optimizer(OptimConfig(lr=lr, warmup_fraction=0.05), steps)


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(cfg: ModelConfig, lr: float, steps: int):
    # Runs of the same shape (the demo's seeds) share one compiled step.
    optimizer = lm_optimizer(lr, steps)
    return optimizer, make_lm_step(cfg, optimizer)


class LMStep(NamedTuple):
    """One point of `lm_training`: parameters after `step` updates and that update's loss."""

    step: int
    params: dict
    loss: jax.Array  # float32 scalar, still on device (reading it waits for the step)


def lm_training(
    cfg: ModelConfig,
    ids_n,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    stop_after: int | None = None,
) -> Iterator[LMStep]:
    """Train from `numpy_init_params(cfg, seed)` on windows of `seq_len` tokens of the 1-D stream
    `ids_n`, drawn by `np.random.default_rng(seed)`; yields after every update (deterministic).

    `steps` sets the LR schedule's length; training stops after `stop_after` (default `steps`)."""
    ids_n = np.asarray(ids_n, np.int32)
    if ids_n.ndim != 1 or len(ids_n) < seq_len:
        raise ValueError(
            f"ids must be a 1-D token stream of at least seq_len={seq_len} tokens; got shape {ids_n.shape}"
        )
    if int(ids_n.max()) >= cfg.vocab_size:
        raise ValueError(f"token id {int(ids_n.max())} >= the model's vocab_size={cfg.vocab_size}")
    optimizer, step_fn = _optimizer_and_step(cfg, float(lr), int(steps))
    params = numpy_init_params(cfg, seed)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    offsets_t = np.arange(seq_len)
    positions_bt = np.broadcast_to(offsets_t, (batch_size, seq_len)).astype(np.int32)
    segment_ids_bt = np.ones((batch_size, seq_len), np.int32)
    for step in range(1, (stop_after or steps) + 1):
        starts_b = rng.integers(0, len(ids_n) - seq_len + 1, size=batch_size)
        tokens_bt = ids_n[starts_b[:, None] + offsets_t]
        params, opt_state, loss = step_fn(params, opt_state, tokens_bt, positions_bt, segment_ids_bt)
        yield LMStep(step, params, loss)


def save_lm(
    cfg: ModelConfig,
    params,
    out_dir: str | pathlib.Path,
    *,
    tokenizer_dir=None,
    hf_config: dict | None = None,
    info: dict | None = None,
) -> pathlib.Path:
    """Write an HF Llama causal-LM directory (weights, tokenizer files, `training.json`)
    atomically: built under a temporary name, then renamed to `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    params = jax.tree.map(np.asarray, params)
    # overwrite=False: an existing non-empty out_dir is an error, as a plain rename would make it.
    with atomic.directory(out_dir, overwrite=False) as tmp:
        hf.save_hf(Model(cfg.replace(heads=("lm",)), params, "llama", dict(hf_config or {})), tmp, head="lm")
        if tokenizer_dir is not None:
            tokenizers.copy_tokenizer(tokenizer_dir, tmp)
        (tmp / TRAINING_FILE).write_text(json.dumps(info or {}, indent=2, sort_keys=True) + "\n")
    return out_dir


def _token_ids(tokenizer_dir) -> dict:
    """bos / eos / pad ids for config.json, from the tokenizer (absent ones left out)."""
    if tokenizer_dir is None:
        return {}
    tok = tokenizers.load_tokenizer(tokenizer_dir)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def train_lm(
    cfg: ModelConfig,
    ids,
    out_dir: str | pathlib.Path,
    *,
    steps: int | None = None,
    save_at: tuple[int, ...],
    batch_size: int,
    seq_len: int,
    lr: float,
    seed: int,
    tokenizer_dir: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict[int, pathlib.Path]:
    """Train an LM (`lm_training`) and save `out_dir/step-<n>` for each n in `save_at`;
    returns {n: dir}. A rerun whose directories all exist returns them without training.

    `steps` is the LR schedule's length (default max(save_at)); training stops at the last save.
    """
    if "lm" not in cfg.heads:
        raise ValueError(f"the model config has heads {cfg.heads}; an LM needs 'lm'")
    save_at = sorted({int(n) for n in save_at})
    steps = steps or max(save_at, default=0)
    if not save_at or save_at[0] < 1 or save_at[-1] > steps:
        raise ValueError(f"save_at={save_at} must be steps in 1..steps={steps}")
    out_dir = pathlib.Path(out_dir)
    dirs = {n: out_dir / f"step-{n}" for n in save_at}
    if all(d.is_dir() for d in dirs.values()):
        return dirs
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = {**_token_ids(tokenizer_dir), "max_position_embeddings": seq_len}
    settings = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed, tokens_in_stream=len(ids))
    from tqdm.auto import tqdm

    last = max(n for n, d in dirs.items() if not d.is_dir())  # a partial rerun stops at its last missing save
    with tqdm(total=last, desc=f"LM {out_dir.name} seed {seed}", disable=not progress, leave=False) as bar:
        for point in lm_training(
            cfg, ids, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed, stop_after=last
        ):
            bar.update(1)
            if point.step % 10 == 0 or point.step in dirs:
                bar.set_postfix(loss=f"{float(point.loss):.3f}")
            if point.step in dirs and not dirs[point.step].is_dir():
                # `loss` is that step's batch loss (noisy): a rough marker of the checkpoint's quality.
                info = dict(settings, step=point.step, loss=float(point.loss), model=cfg.to_dict())
                save_lm(
                    cfg, point.params, dirs[point.step], tokenizer_dir=tokenizer_dir, hf_config=hf_config, info=info
                )
    return dirs
