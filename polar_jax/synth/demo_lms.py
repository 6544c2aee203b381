"""The demo's home-grown policies: small Llama-shaped LMs trained here, in seconds, on the
built-in English corpus (`synth.corpus`: the documentation topics of `help()` that ship with
Python), with a byte-level BPE tokenizer trained on the same text.

Different seeds and intermediate checkpoints give different policies, as the paper used a
model's intermediate checkpoints: an early one writes word salad, a late one locally
English-like text.

    tok_dir = train_tokenizer(corpus_documents(), 2048, "runs/demo/tokenizer")
    dirs = train_demo_lm(DemoLMSpec(seed=0), tok_dir, "runs/demo/lm-seed0")
    dirs[50], dirs[600]  # HF directories: `polar_jax.io.models.load_model(dirs[600])`
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from polar_jax.io import tokenizers
from polar_jax.models.config import ModelConfig
from polar_jax.synth.corpus import corpus_documents
from polar_jax.train import lm

EOS_TOKEN = "<|endoftext|>"  # end of document; also the padding token
# POLAR's text: prompt + "\n" + reference + "<|reward|>" + prompt + "\n" + candidate + reward token; the official
# client (InternLM/POLAR reward_func.py) writes the reward token as the literal text "[UNUSED_TOKEN_130]".
SPLIT_TOKEN = "<|reward|>"  # POLAR's reward-split text
REWARD_TOKEN = "[UNUSED_TOKEN_130]"  # POLAR's reward token
SPECIAL_TOKENS = (EOS_TOKEN, SPLIT_TOKEN, REWARD_TOKEN)  # ids 0, 1, 2
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Train a byte-level BPE tokenizer (any text encodes, no unknowns; deterministic) with
    `SPECIAL_TOKENS` as ids 0..2 and save it as an HF tokenizer directory. Skipped when
    `out_dir` already holds one."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from polar_jax.io import atomic

    out_dir = pathlib.Path(out_dir)
    if all((out_dir / name).exists() for name in _TOKENIZER_FILES):
        return out_dir
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[SPLIT_TOKEN, REWARD_TOKEN],
    )
    # An existing out_dir (incomplete leftovers of an interrupted run) is replaced.
    with atomic.directory(out_dir) as tmp:
        hf_tokenizer.save_pretrained(str(tmp))
        # transformers 5 names its own class here; older readers (vLLM images) know this one.
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def corpus_ids(tokenizer, texts: list[str]) -> np.ndarray:
    """One int32 stream [N]: each text's ids followed by the EOS id (documents never merge)."""
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    ids_n: list[int] = []
    for text in texts:
        ids_n += tokenizer.encode(text, add_special_tokens=False) + [eos]
    return np.asarray(ids_n, np.int32)


@dataclasses.dataclass(frozen=True)
class DemoLMSpec:
    """One demo LM run: architecture, data windows, schedule and which steps become policies.

    The defaults cost about 27 CPU-seconds, compile included (21 when a run of the same
    shape already compiled the step): 44-52 s wall on 2 cores shared with other jobs. At step
    50 it writes word salad, at 600 locally English-like text (batch loss about 6.4 and 4.4).
    Trained on 64-token windows: text past 64 tokens (prompt + continuation) degrades.
    """

    seed: int = 0
    save_at: tuple[int, ...] = (50, 600)
    steps: int | None = None  # LR schedule length; default max(save_at)
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 5e-3
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    mlp_dim: int = 256

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The Llama-shaped config (float32, tied embeddings) for a tokenizer of `vocab_size`
        tokens, rounded up to a multiple of 64."""
        return ModelConfig(
            vocab_size=-(-vocab_size // 64) * 64,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.d_model // self.num_heads,
            mlp_dim=self.mlp_dim,
            tie_embeddings=True,
            heads=("lm",),
            dtype="float32",
            scan_unroll=self.num_layers,  # an unrolled stack compiles and runs faster on CPU
        )


def train_demo_lm(
    spec: DemoLMSpec,
    tokenizer_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    texts: list[str] | None = None,
    progress: bool = True,
) -> dict[int, pathlib.Path]:
    """Train `spec` on the tokenised corpus (default `corpus_documents()`); returns
    {step: HF directory `out_dir/step-<step>`}. Finished runs are not retrained."""
    out_dir = pathlib.Path(out_dir)
    dirs = {n: out_dir / f"step-{n}" for n in sorted(set(spec.save_at))}
    if all(d.is_dir() for d in dirs.values()):
        return dirs
    tokenizer = tokenizers.load_tokenizer(tokenizer_dir)
    ids_n = corpus_ids(tokenizer, corpus_documents() if texts is None else texts)
    return lm.train_lm(
        spec.model_config(len(tokenizer)),
        ids_n,
        out_dir,
        steps=spec.steps,
        save_at=spec.save_at,
        batch_size=spec.batch_size,
        seq_len=spec.seq_len,
        lr=spec.lr,
        seed=spec.seed,
        tokenizer_dir=tokenizer_dir,
        progress=progress,
    )
