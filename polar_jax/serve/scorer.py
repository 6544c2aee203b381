"""The model side of `serve`: request items -> checked token ids -> rewards, in a few fixed shapes.

A `ServeModel` is a reward model placed on the local devices with its tokenizer and encoding.
Texts (the sglang / vLLM / lmdeploy / OpenRLHF protocols) arrive built by the client and end in
the reward token's text; they are tokenised exactly as `score` tokenises its own texts: the text
without that suffix with the tokenizer's special tokens (BOS), then the reward token's id
(`encoding.encode`). Rows (the native protocol) are encoded by `encoding.encode` itself.

Rows queue by width (`make_buckets`: one `Bucket` per width, its rows the most a batch of that width
holds); a batch runs in the smallest compiled row count that holds it (`row_counts`: the batch
shards x powers of 4 up to the bucket's rows, so a lone request does not pay for a full batch).
`warm_up` compiles every (rows, width) shape, so nothing compiles while serving.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading

import jax
import numpy as np

from polar_jax import parallel, scoring
from polar_jax.data import encoding, schema
from polar_jax.io import models, tokenizers
from polar_jax.models import transformer as T

log = logging.getLogger(__name__)

SMALLEST_WIDTH = 64
MAX_BUCKET_ROWS = 256


class BadInput(ValueError):
    """An item the server cannot score (HTTP 400): the message names the field and the item's index."""


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One compiled forward shape: `rows` sequences of at most `width` tokens."""

    rows: int
    width: int


def make_buckets(max_tokens: int, max_batch_tokens: int, row_multiple: int = 1) -> tuple[Bucket, ...]:
    """Widths: `SMALLEST_WIDTH` x 1, 1.5, 2, 3, 4, 6, ... (powers of two and the midpoints between them:
    at most a third of a row is padding) up to the first >= `max_tokens`; rows: as many as
    `max_batch_tokens` allows at that width (at most `MAX_BUCKET_ROWS`), a multiple of `row_multiple`
    (the devices the batch is split over) and at least one such multiple."""
    if max_tokens < 1 or max_batch_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens}, max_batch_tokens={max_batch_tokens}: both must be >= 1")
    buckets, width = [], SMALLEST_WIDTH
    while True:
        rows = min(MAX_BUCKET_ROWS, max_batch_tokens // width) // row_multiple * row_multiple
        buckets.append(Bucket(max(row_multiple, rows), width))
        if width >= max_tokens:
            return tuple(buckets)
        width = width * 3 // 2 if width & (width - 1) == 0 else width * 4 // 3  # 64, 96, 128, 192, 256, ...


def row_counts(bucket: Bucket, row_multiple: int = 1) -> tuple[int, ...]:
    """The row counts compiled for `bucket`'s width: `row_multiple` x 4^i below `bucket.rows`, then it."""
    counts, n = [], row_multiple
    while n < bucket.rows:
        counts.append(n)
        n *= 4
    return (*counts, bucket.rows)


def bucket_index(buckets: tuple[Bucket, ...], length: int) -> int:
    """The narrowest bucket that holds `length` tokens."""
    for i, bucket in enumerate(buckets):
        if length <= bucket.width:
            return i
    raise ValueError(f"{length} tokens: wider than the widest bucket ({buckets[-1].width})")


@dataclasses.dataclass
class ServeModel:
    """A reward model ready to serve: weights on `mesh`, tokenizer, reward id, encoding, buckets."""

    cfg: object
    params: dict
    tokenizer: object
    reward_token_id: int
    encoding: encoding.EncodingConfig
    mesh: jax.sharding.Mesh
    buckets: tuple[Bucket, ...]
    max_tokens: int  # longer items are refused (400)
    name: str  # what /v1/models lists and sglang's "model" names: the model directory's last part
    row_multiple: int = 1  # the devices a batch is split over

    def __post_init__(self):
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads

    def text_ids(self, texts: list[str], field: str) -> list[np.ndarray]:
        """Token ids of client-built texts; `BadInput` for a text without the reward token at its end
        or longer than `max_tokens` (named `field[i]`)."""
        suffix = self.encoding.reward_token
        for i, text in enumerate(texts):
            if not text.endswith(suffix):
                raise BadInput(
                    f"{field}[{i}] does not end with the reward token {suffix!r} (length {len(text)} characters): "
                    "build it with the official client's encode (polar.RewardModelClient), or send rows to /score"
                )
        with self._tokenizer_lock:
            ids = self.tokenizer([t[: len(t) - len(suffix)] for t in texts], add_special_tokens=True)["input_ids"]
        return self._checked([np.asarray([*x, self.reward_token_id], np.int32) for x in ids], field)

    def row_ids(self, rows: list, field: str = "rows") -> list[np.ndarray]:
        """Token ids of `{prompt, reference, output[, wrapper]}` rows, encoded as `score` encodes them."""
        checked = []
        for i, row in enumerate(rows):
            try:
                checked.append(schema.validate_row(row, "score", source=f"{field}[{i}]"))
            except schema.DataError as e:
                raise BadInput(f"{e.location}: {e.detail}") from None
        with self._tokenizer_lock:
            ids = [
                encoding.encode(
                    self.tokenizer, r["prompt"], r["reference"], r["output"], self.encoding, self.reward_token_id,
                    r.get("wrapper"),
                ).ids
                for r in checked
            ]  # fmt: skip
        return self._checked(ids, field)

    def _checked(self, ids: list[np.ndarray], field: str) -> list[np.ndarray]:
        for i, x in enumerate(ids):
            if len(x) > self.max_tokens:
                raise BadInput(
                    f"{field}[{i}] has {len(x)} tokens, more than the server's maximum {self.max_tokens} "
                    "(--max-length; the client's max_length cuts prompts to fit)"
                )
            if int(x.max()) >= self.cfg.vocab_size:
                raise BadInput(
                    f"{field}[{i}] has token id {int(x.max())} >= the model's vocab size {self.cfg.vocab_size}"
                )
        return ids

    def shape_for(self, bucket: Bucket, n: int) -> Bucket:
        """The compiled shape a batch of `n` rows of `bucket`'s width runs in."""
        return Bucket(next(r for r in row_counts(bucket, self.row_multiple) if r >= n), bucket.width)

    def score_batch(self, bucket: Bucket, ids: list[np.ndarray]) -> np.ndarray:
        """float32 rewards of up to `bucket.rows` sequences, each at most `bucket.width` tokens, in
        the smallest compiled shape that holds them (`shape_for`)."""
        shape = self.shape_for(bucket, len(ids))
        tokens_bt = np.zeros((shape.rows, shape.width), np.int32)
        lengths_b = np.ones(shape.rows, np.int32)  # padding rows: one token, their reward dropped
        for row, x in enumerate(ids):
            tokens_bt[row, : len(x)], lengths_b[row] = x, len(x)
        with parallel.use_rules(self.mesh):
            rewards_b = scoring.last_token_rewards(
                self.cfg,
                self.params,
                jax.device_put(tokens_bt, parallel.batch_sharding(self.mesh)),
                jax.device_put(lengths_b, parallel.batch_sharding(self.mesh, ndim=1)),
            )
        return np.asarray(rewards_b, np.float32)[: len(ids)]

    def warm_up(self) -> None:
        """Compile every shape: each bucket's width at each of its row counts (a pass on one-token rows)."""
        one = np.asarray([self.reward_token_id], np.int32)
        for bucket in self.buckets:
            for rows in row_counts(bucket, self.row_multiple):
                self.score_batch(bucket, [one] * rows)
            log.info("compiled width %d at rows %s", bucket.width, row_counts(bucket, self.row_multiple))


def load(
    model_dir: str,
    tokenizer_src: str | None = None,
    enc_cfg: encoding.EncodingConfig | None = None,
    max_batch_tokens: int = 16384,
    max_tokens: int | None = None,
    mesh_axes: dict[str, int] | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> ServeModel:
    """Load any reward model `score` accepts and place it on the local devices: the batch over
    `data` (and `fsdp`), weights sharded by their logical axes (`parallel.RULES`). `max_tokens`
    defaults to the encoding's `max_length`."""
    models.check_heads(model_dir, "reward", "serve")
    enc_cfg = enc_cfg or encoding.EncodingConfig()
    tokenizer = tokenizers.load_tokenizer(tokenizer_src or model_dir, trust_remote_code)
    model = models.load_model(model_dir, dtype=dtype)
    mesh = parallel.make_mesh(mesh_axes or {"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    max_tokens = max_tokens or enc_cfg.max_length
    return ServeModel(
        cfg=model.cfg,
        params=parallel.place(model.params, T.logical_axes(model.cfg), mesh),
        tokenizer=tokenizer,
        reward_token_id=scoring.reward_token_id_for(model, tokenizer, enc_cfg),
        encoding=enc_cfg,
        mesh=mesh,
        buckets=make_buckets(max_tokens, max_batch_tokens, batch_shards),
        max_tokens=max_tokens,
        name=pathlib.Path(model_dir).resolve().name,
        row_multiple=batch_shards,
    )
