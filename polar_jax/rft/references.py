"""The target policy: the policy a run moves toward (`config.target`). Its samples can be the
references (`data.kind = "policy_samples"`), and its log-likelihood of the trained policy's
samples is an evaluation measure that does not go through the reward model.

References sampled here: prompts from a corpus (or a prompts file), each answered once by the
target, written to WORKDIR/data/train.jsonl and WORKDIR/data/eval.jsonl in the RFT JSONL
format (with provenance in `meta`). Held-out prompts come from held-out documents (every
`heldout_every`-th), so evaluation never sees a training prompt's text. This is the paper's
setting in miniature: the references come from a policy other than the one trained.
"""

from __future__ import annotations

import functools
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from polar_jax import sampling as sampling_lib
from polar_jax.data.encoding import Text
from polar_jax.io import gguf, models, storage, tokenizers
from polar_jax.rft import data as data_lib
from polar_jax.rft import rollout, step
from polar_jax.synth import prompts as prompts_lib
from polar_jax.synth.pool import stop_ids_for

log = logging.getLogger(__name__)

SPLITS = ("train", "eval")
SMOLLM2 = "smollm2"  # the checkpoint name of the packaged SmolLM2-135M-Instruct (as in synth pools)


def checkpoint_path(checkpoint: str) -> pathlib.Path:
    """A target checkpoint's path ("smollm2" names the packaged SmolLM2-135M-Instruct GGUF)."""
    return gguf.smollm2_gguf_path() if checkpoint == SMOLLM2 else pathlib.Path(checkpoint)


class TargetPolicy:
    """A policy as the synth pools describe one: weights, prompt template (with an optional
    system prompt), stop strings and sampling settings (`config.target`)."""

    def __init__(self, spec, cfg, params, tokenizer, put=None):
        self.spec, self.cfg, self.params, self.tokenizer = spec, cfg, params, tokenizer
        self.put = put or (lambda x: x)
        stop_ids = stop_ids_for(tokenizer, tuple(spec.stop), "target.stop")  # EOS first, then the stop strings
        # What ends a response in the target's own format: its first stop string (a chat turn's end), else EOS.
        self.end_id = stop_ids[len(stop_ids) - len(spec.stop)] if spec.stop else (stop_ids or [None])[0]
        self.sampling = sampling_lib.SamplingConfig(
            temperature=spec.temperature,
            top_k=spec.top_k,
            top_p=spec.top_p,
            max_new_tokens=spec.max_new_tokens,
            stop_ids=tuple(stop_ids),
            loop_max_ngram=spec.loop_max_ngram,
            loop_repeats=4,
        )

    def prompt_ids(self, prompt: Text) -> list[int]:
        """How the target sees a prompt: its template (and system prompt), its last tokens kept."""
        return rollout.prompt_ids(
            self.tokenizer, prompt, self.spec.template, self.spec.max_prompt_tokens, system=self.spec.system
        )

    def sample(self, prompts: list[Text], key, batch_size: int) -> rollout.Samples:
        """One sampled response per prompt (the references of `policy_samples`)."""
        return rollout.sample_texts(
            self.cfg,
            self.params,
            self.tokenizer,
            prompts,
            self.sampling,
            key,
            template=self.spec.template,
            prompt_width=self.spec.max_prompt_tokens,
            batch_size=batch_size,
            put=self.put,
            system=self.spec.system,
        )

    def loglik(self, prompts: list[Text], samples: rollout.Samples, batch_size: int) -> float:
        """Mean per-token log-likelihood under the target of other policies' responses: each
        re-tokenised with the target's tokenizer (a response that stopped gets the target's end
        token) and read after the prompt as the target sees it."""
        ends = [self.end_id] if self.end_id is not None else []
        responses = [
            self.tokenizer.encode(text, add_special_tokens=False) + (ends if stopped else [])
            for text, stopped in zip(samples.texts, samples.stopped)
        ]
        n = max(8, -(-max(len(r) for r in responses) // 8) * 8)
        width = self.spec.max_prompt_tokens
        total, count = 0.0, 0
        for start in range(0, len(prompts), batch_size):
            chunk = list(range(start, min(start + batch_size, len(prompts))))
            ids = [self.prompt_ids(prompts[i]) for i in chunk]
            prompt_bt, prompt_lengths_b = rollout.pad_prompts(ids + [ids[0]] * (batch_size - len(ids)), width)
            response_bn, lengths_b = np.zeros((batch_size, n), np.int32), np.zeros(batch_size, np.int32)
            for row, i in enumerate(chunk):
                response_bn[row, : len(responses[i])], lengths_b[row] = responses[i], len(responses[i])
            logp_b, count_b = response_loglik(
                self.cfg, self.params, *map(self.put, (prompt_bt, prompt_lengths_b, response_bn, lengths_b))
            )
            total += float(np.sum(np.asarray(logp_b)[: len(chunk)]))
            count += int(np.sum(np.asarray(count_b)[: len(chunk)]))
        return total / max(count, 1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def response_loglik(cfg, params, prompt_bt, prompt_lengths_b, response_bn, lengths_b):
    """Summed log-likelihood [B] of each right-padded response after its right-padded prompt,
    and its token count [B]."""
    batch = rollout.assemble(prompt_bt, prompt_lengths_b, response_bn, lengths_b)
    logits_bnv = step.response_logits(cfg, params, batch.tokens_bt, batch.mask_bt, response_bn.shape[1])
    logp_bn = step.token_logprobs(logits_bnv, batch.response_bn) * batch.response_mask_bn
    return jnp.sum(logp_bn, axis=1), jnp.sum(batch.response_mask_bn, axis=1)


def load_target(config):
    """(model, tokenizer) of `config.target`, or None when it names no checkpoint."""
    checkpoint = config.target.checkpoint
    if not checkpoint:
        return None
    path = checkpoint_path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"target.checkpoint {checkpoint!r} not found" + (f"; {config.setup_hint}" if config.setup_hint else "")
        )
    dtype = config.policy.dtype if jax.default_backend() != "cpu" else "float32"
    return models.load_model(path, dtype=dtype), tokenizers.load_tokenizer(
        path, config.target.get("trust_remote_code", False), "--config.target.trust_remote_code=true"
    )


# ------------------------------------------------------------------------------ policy_samples


def paths(workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Where the sampled rows go."""
    return {split: storage.path(workdir) / "data" / f"{split}.jsonl" for split in SPLITS}


def _prompts(d, tokenizer, seed: int) -> dict[str, list[str]]:
    """Training and held-out prompt texts."""
    counts = {"train": d.train_prompts, "eval": d.eval_prompts}
    if d.prompts == "pydoc":
        from polar_jax.synth import corpus

        documents = corpus.corpus_documents()
        train_docs, heldout_docs = prompts_lib.split_documents(documents, d.heldout_every)
        out = {}
        for i, (split, docs) in enumerate((("train", train_docs), ("eval", heldout_docs))):
            source = prompts_lib.PromptSource(
                documents,
                tokenizer,
                doc_indices=docs,
                min_tokens=d.prompt_tokens[0],
                max_tokens=d.prompt_tokens[1],
                seed=seed + i,
            )
            out[split] = [source.prompt(j).text for j in range(counts[split])]
        return out
    texts = [p.text for p in prompts_lib.read_instructions(d.prompts)]
    train, heldout = prompts_lib.split_documents(texts, d.heldout_every)
    return {
        "train": [texts[i] for i in train][: counts["train"]],
        "eval": [texts[i] for i in heldout][: counts["eval"]],
    }


def ensure_reference_data(
    config, workdir: str | pathlib.Path, target: TargetPolicy | None, counting_tokenizer
) -> dict[str, pathlib.Path]:
    """Write (once) the training and held-out `{prompt, reference}` rows; returns their paths.

    Prompt lengths are counted with `counting_tokenizer` (the policy's). Deterministic in
    `config.seed`; a rerun finds the files and samples nothing.
    """
    out = paths(workdir)
    if all(p.exists() for p in out.values()):
        return out
    if target is None:
        raise ValueError("data.kind=policy_samples needs target.checkpoint (the LM whose samples are references)")
    d = config.data
    prompts = _prompts(d, counting_tokenizer, config.seed)
    key = jax.random.key(config.seed + 1000)
    for i, split in enumerate(SPLITS):
        if out[split].exists():
            continue
        samples = target.sample(prompts[split], jax.random.fold_in(key, i), config.eval.batch_size)
        # An empty sample (the target stopped at once) is no reference: such prompts are left out, and counted.
        kept = [j for j, text in enumerate(samples.texts) if text.strip()]
        examples = [data_lib.Example(prompts[split][j], samples.texts[j], "") for j in kept]
        meta = [{"target": str(config.target.checkpoint), "prompt_source": d.prompts, "index": j} for j in kept]
        data_lib.write_jsonl(examples, out[split], meta)
        log.info(
            "sampled %d %s references from %s -> %s (%d empty samples left out)",
            len(examples),
            split,
            config.target.checkpoint,
            out[split],
            len(samples.texts) - len(kept),
        )
    return out
