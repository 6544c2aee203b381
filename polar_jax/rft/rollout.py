"""Rollouts: prompts -> the policy's sampled responses, laid out for the update.

A rollout row is [prompt | response] in one array of P + N tokens: the prompt LEFT-padded to
P (so every response starts at column P), the response right-padded to N. `mask_bt` is 1 on
real tokens; positions restart at 0 at each row's first real token (`padded_inputs`), so
the update sees exactly the token positions the sampler used.

    ids = [prompt_ids(tok, p, "{prompt}", 256) for p in prompts]
    prompt_bt, lengths_b = pad_prompts(ids, 256)
    batch = rollout(cfg, params, prompt_bt, lengths_b, sampling, key)   # one jitted batch
    engine = Engine(cfg, sampling, slots=8, max_prompt_tokens=256)
    batch = engine_rollout(engine, params, ids, row_keys(key, len(ids)), 256)   # continuous batching
    texts = response_texts(tok, batch.response_bn, batch.response_lengths_b, sampling.stop_ids)

Both give the same rows for the same prompts and per-row keys (`sampling.row_keys`): the
engine (`polar_jax.engine`) refills its slots as rollouts finish instead of waiting for the
batch's longest.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polar_jax import sampling as sampling_lib
from polar_jax.data.encoding import Text, flatten
from polar_jax.engine import Engine
from polar_jax.models.config import ModelConfig


class Rollout(NamedTuple):
    """A batch of sampled responses, [B, ...] each."""

    tokens_bt: jax.Array  # int32 [B, P + N]: left-padded prompt, then the response
    mask_bt: jax.Array  # int32 [B, P + N]: 1 on real tokens
    response_bn: jax.Array  # int32 [B, N]: the response alone (0 after its end)
    response_mask_bn: jax.Array  # float32 [B, N]: 1 on real response tokens (a stop token included)
    response_lengths_b: jax.Array  # int32 [B]


def uses_chat_template(tokenizer, prompt: Text, chat_template: bool) -> bool:
    """Whether `prompt_ids` applies the tokenizer's chat template to this prompt."""
    return chat_template and isinstance(prompt, list) and getattr(tokenizer, "chat_template", None) is not None


def full_prompt_ids(tokenizer, prompt: Text, template: str, system: str = "", chat_template: bool = False) -> list[int]:
    """A policy's view of a prompt, uncut. A message list with `chat_template` (and a tokenizer
    that has one): the chat template with the generation prompt, tokenised without adding special
    tokens (verl's RLHFDataset). Otherwise flattened (contents joined by "\\n"), put into
    `template` ("{prompt}", optionally "{system}") and tokenised with the special tokens."""
    if uses_chat_template(tokenizer, prompt, chat_template):
        try:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        except ImportError as e:  # transformers renders templates with jinja2, an optional dependency
            raise ImportError(
                f"policy.chat_template=True puts message-list prompts through the policy tokenizer's "
                f"chat template, which needs jinja2 ({e}); install it (pip install jinja2) or set "
                "--config.policy.chat_template=False to flatten them"
            ) from e
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(template.format(prompt=flatten(prompt), system=system))["input_ids"]
    if not ids:
        raise ValueError(f"prompt {flatten(prompt)[:80]!r} tokenises to nothing")
    return ids


def prompt_ids(
    tokenizer, prompt: Text, template: str, max_tokens: int, system: str = "", chat_template: bool = False
) -> list[int]:
    """`full_prompt_ids` with its last `max_tokens` kept (the RFT data were filtered to fit before)."""
    return full_prompt_ids(tokenizer, prompt, template, system, chat_template)[-max_tokens:]


def pad_prompts(ids: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int32 [B, width] prompts and their lengths [B] (the sampler's input)."""
    prompt_bt = np.zeros((len(ids), width), np.int32)
    for row, row_ids in enumerate(ids):
        if len(row_ids) > width:
            raise ValueError(f"prompt {row} has {len(row_ids)} tokens > width {width}")
        prompt_bt[row, : len(row_ids)] = row_ids
    return prompt_bt, np.array([len(x) for x in ids], np.int32)


def assemble(prompt_bt, prompt_lengths_b, response_bn, response_lengths_b) -> Rollout:
    """Right-padded prompts and responses -> [left-padded prompt | response] rows."""
    width = prompt_bt.shape[1]
    shift_b = width - prompt_lengths_b
    source_bt = jnp.arange(width)[None] - shift_b[:, None]  # where each column's token comes from
    prompt_mask_bt = source_bt >= 0
    left_bt = jnp.where(prompt_mask_bt, jnp.take_along_axis(prompt_bt, jnp.maximum(source_bt, 0), axis=1), 0)
    response_mask_bn = jnp.arange(response_bn.shape[1])[None] < response_lengths_b[:, None]
    tokens_bt = jnp.concatenate([left_bt, response_bn], axis=1).astype(jnp.int32)
    mask_bt = jnp.concatenate([prompt_mask_bt, response_mask_bn], axis=1).astype(jnp.int32)
    return Rollout(
        tokens_bt,
        mask_bt,
        response_bn.astype(jnp.int32),
        response_mask_bn.astype(jnp.float32),
        response_lengths_b.astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"))
def rollout(
    cfg: ModelConfig, params, prompt_bt, prompt_lengths_b, sampling: sampling_lib.SamplingConfig, rng
) -> Rollout:
    """Sample one response per right-padded prompt and lay the rows out for the update."""
    gen = sampling_lib.generate(cfg, params, prompt_bt, prompt_lengths_b, sampling, rng)
    return assemble(prompt_bt, prompt_lengths_b, gen.tokens_bn, gen.lengths_b)


def engine_rollout(engine: Engine, params, ids: list[list[int]], keys_b, width: int, put=None) -> Rollout:
    """Rollouts of prompts `ids` (token lists, `width` at most) through `engine`, request b
    drawing with keys_b[b]: the rows `rollout` makes for the same prompts and keys, laid out
    by `assemble` (each array through `put`, e.g. onto the mesh, when given)."""
    gen = engine.generate(params, ids, keys_b)
    prompt_bt, lengths_b = pad_prompts(ids, width)
    batch = assemble(prompt_bt, lengths_b, gen.tokens_bn, gen.lengths_b)
    return batch if put is None else Rollout(*map(put, batch))


def params_mesh(params):
    """The mesh parameters are laid out on (their first `NamedSharding`'s, when it has the
    engine's data and fsdp axes), or None (host arrays, one device)."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            mesh = sharding.mesh
            return mesh if {"data", "fsdp"} <= set(mesh.axis_names) else None
    return None


def response_texts(tokenizer, response_bn, lengths_b, stop_ids=()) -> list[str]:
    """Decoded responses: stop tokens and special tokens removed."""
    response_bn, lengths_b = np.asarray(response_bn), np.asarray(lengths_b)
    stop = set(int(i) for i in stop_ids)
    return [
        tokenizer.decode([t for t in row[:n].tolist() if t not in stop], skip_special_tokens=True)
        for row, n in zip(response_bn, lengths_b)
    ]


class Samples(NamedTuple):
    """Decoded samples of a list of prompts."""

    texts: list[str]  # stop tokens and special tokens removed
    stopped: list[bool]  # the response ended with a stop token (rather than at max_new_tokens)
    lengths: list[int]  # tokens per response (a stop token included)


def sample_texts(
    cfg: ModelConfig,
    params,
    tokenizer,
    prompts: list[Text],
    sampling: sampling_lib.SamplingConfig,
    key,
    *,
    template: str,
    prompt_width: int,
    batch_size: int,
    put=None,
    system: str = "",
    chat_template: bool = False,
    mesh=None,
) -> Samples:
    """One sampled response per prompt, through a continuous-batching engine of `batch_size`
    slots: prompt r draws with fold_in(key, r), so its sample depends on its prompt and the key
    only (never on the batch it shares). Prompts as `prompt_ids` makes them (`prompt_width`
    tokens at most). mesh: the engine's (default: the mesh the parameters are laid out on, if
    any). put: accepted for older callers and unused (the engine places its own batches)."""
    del put
    if not prompts:
        return Samples([], [], [])
    ids = [prompt_ids(tokenizer, p, template, prompt_width, system, chat_template) for p in prompts]
    engine = Engine(cfg, sampling, batch_size, prompt_width, mesh=mesh if mesh is not None else params_mesh(params))
    gen = engine.generate(params, ids, key)
    response_bn, n_b = gen.tokens_bn, gen.lengths_b
    stopped = [bool(n) and int(row[n - 1]) in sampling.stop_ids for row, n in zip(response_bn, n_b)]
    return Samples(response_texts(tokenizer, response_bn, n_b, sampling.stop_ids), stopped, [int(n) for n in n_b])
