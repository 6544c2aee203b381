"""`polar_preferences`: a TFDS dataset of tokenised POLAR triplets, built and read without TensorFlow.

Local JSONL triplet files (one list per split) and a tokenizer become an ArrayRecord TFDS
dataset; each example holds the chosen and rejected ids (int32, the same ids `prepare` writes),
the four texts (a message list is stored flattened, as the model reads it, before truncation),
the row's meta as JSON text, and its "FILE:LINE" source:

    cfg = PolarPreferencesConfig(name="mine", splits={"train": ["a.jsonl"], "validation": ["b.jsonl"]},
                                 tokenizer="tok_dir_or.gguf", add_special_tokens=True)
    builder = PolarPreferences(config=cfg, data_dir="/data/tfds")
    builder.download_and_prepare(file_format="array_record")   # build_polar_preferences() does both
    train = builder.as_data_source()["train"]                   # random access, numpy, no TF

Reading back later needs neither the config nor this class:
`tfds.builder_from_directory(builder.data_dir).as_data_source()`. TFDS without TensorFlow can
write and read ArrayRecord (not TFRecord, whose writer is TensorFlow's) and `as_data_source` works;
`as_dataset` (a tf.data pipeline) needs TensorFlow. Examples keep input order
(`disable_shuffling`, integer keys), and `info.metadata` carries what encoding.json carries in
`prepare` (reward token id, vocab size, added tokens, the EncodingConfig).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from polar_jax.data import encoding, prepare, schema

TEXT_PARTS = ("prompt", "reference", "chosen", "rejected")


@dataclasses.dataclass(eq=False)
class PolarPreferencesConfig(tfds.core.BuilderConfig):
    """Which files make which split, the tokenizer, and the encoding (an EncodingConfig dict)."""

    splits: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    tokenizer: str = ""
    encoding: Mapping = dataclasses.field(default_factory=dict)
    add_special_tokens: bool = False
    skip_invalid: bool = False
    workers: int = 1


class PolarPreferences(tfds.core.GeneratorBasedBuilder):
    """Tokenised POLAR preference triplets from local JSONL files (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Chosen / rejected ids in the official POLAR encoding, texts, meta."}
    BUILDER_CONFIG_CLASS = PolarPreferencesConfig

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """None: this builder has no checksums file to find (it downloads nothing)."""
        # TFDS uses the code path only to find a checksums file of downloads; this builder
        # downloads nothing. TFDS 4.9.10 computes it with `importlib_resources`, which it
        # declares only for Python < 3.9 (tensorflow/datasets#11212), so the default fails.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        features = {
            "chosen_ids": ids,
            "rejected_ids": ids,
            "meta": tfds.features.Text(),
            "source": tfds.features.Text(),
        }
        features.update({part: tfds.features.Text() for part in TEXT_PARTS})
        # builder=self: the builder is not in a TFDS-registered dataset package, so DatasetInfo
        # cannot find its identity (name, version, config) any other way.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,  # keep input order: integer keys, written sorted
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        if not isinstance(cfg, PolarPreferencesConfig) or not cfg.splits or not cfg.tokenizer:
            raise ValueError("polar_preferences needs a PolarPreferencesConfig with splits and a tokenizer")
        enc_cfg = encoding.EncodingConfig.from_dict(dict(cfg.encoding))
        for files in cfg.splits.values():  # validate first: a bad row fails before the tokenizer loads
            for _ in prepare.iter_rows(files, cfg.skip_invalid, None):
                pass
        encoder = prepare.load_encoder(cfg.tokenizer, enc_cfg, cfg.add_special_tokens)
        self.info.metadata.update(encoder.info())
        self.info.metadata["skipped"] = {}
        return {split: self._generate_examples(split, list(files), encoder) for split, files in cfg.splits.items()}

    def _generate_examples(self, split: str, files: list[str], encoder: prepare.Encoder):
        cfg = self.builder_config
        report = schema.SkipReport()
        rows = prepare.iter_rows(files, cfg.skip_invalid, report)
        for index, (row, enc) in enumerate(prepare.encode_rows(rows, encoder, cfg.workers)):
            example = {part: encoding.flatten(row.data[part]) for part in TEXT_PARTS}
            example.update(
                chosen_ids=enc.chosen,
                rejected_ids=enc.rejected,
                meta=json.dumps(row.data.get("meta", {}), ensure_ascii=False, sort_keys=True),
                source=row.source,
            )
            yield index, example
        self.info.metadata["skipped"][split] = report.to_dict()


def build_polar_preferences(
    data_dir: str | os.PathLike,
    splits: Mapping[str, Sequence[str | os.PathLike]],
    tokenizer: str | os.PathLike,
    cfg: encoding.EncodingConfig = encoding.EncodingConfig(),
    *,
    name: str = "default",
    add_special_tokens: bool = False,
    skip_invalid: bool = False,
    workers: int = 1,
) -> PolarPreferences:
    """Build the dataset under `data_dir` (ArrayRecord files) and return its builder."""
    config = PolarPreferencesConfig(
        name=name,
        splits={split: [os.fspath(f) for f in files] for split, files in splits.items()},
        tokenizer=os.fspath(tokenizer),
        encoding=cfg.to_dict(),
        add_special_tokens=add_special_tokens,
        skip_invalid=skip_invalid,
        workers=workers,
    )
    builder = PolarPreferences(config=config, data_dir=os.fspath(data_dir))
    builder.download_and_prepare(file_format="array_record")
    return builder
