"""run.json: the fields hold real values, fingerprints follow the bytes, a resume warns on changed inputs."""

import importlib.metadata
import json
import logging
import pathlib
import platform
import subprocess

import jax
import ml_collections
import pytest

from polar_jax import run_manifest as M

REPO = pathlib.Path(M.__file__).resolve().parent.parent


def _config():
    c = ml_collections.ConfigDict()
    c.seed = 7
    c.data = ml_collections.ConfigDict({"train": "x", "shuffle_seed": 3})
    c.rft = ml_collections.ConfigDict({"rollout": {"seed": 11}, "lr": 1e-3})
    return c


def _shards(root: pathlib.Path) -> pathlib.Path:
    root.mkdir()
    for i in range(3):
        (root / f"train-{i:05d}.array_record").write_bytes(bytes(range(256)) * (i + 1))
    (root / ".train-00003.tmp").write_bytes(b"half-written")
    return root


def test_fields_hold_the_real_values(tmp_path):
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    m = M.write(
        tmp_path,
        _config(),
        {"data.train": str(_shards(tmp_path / "d")), "model.init": "scratch"},
        argv=["polar-jax", "train", "--workdir", str(tmp_path)],
        mesh=mesh,
    )
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(m)) and on_disk["previous"] == []
    assert m["argv"] == ["polar-jax", "train", "--workdir", str(tmp_path)]
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers"):
        assert m["versions"][name] == importlib.metadata.version(name)
    assert m["versions"]["python"] == platform.python_version() and "libtpu" in m["versions"]
    assert m["platform"] == jax.default_backend() == "cpu"
    assert m["devices"] == {"kind": jax.devices()[0].device_kind, "count": jax.device_count(), "processes": 1}
    assert m["devices"]["count"] == 8
    assert m["mesh"] == {"data": 2, "fsdp": 4}
    assert "--xla_force_host_platform_device_count=8" in m["xla_flags"]
    assert m["seeds"] == {"seed": 7, "data.shuffle_seed": 3, "rft.rollout.seed": 11}
    assert m["inputs"]["model.init"] == "scratch"
    data = m["inputs"]["data.train"]
    assert data["files"] == 3 and data["bytes"] == 256 * 6  # the hidden temporary file is skipped
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert m["code"]["git_commit"] == head.stdout.strip() and isinstance(m["code"]["git_dirty"], bool)
    else:
        assert set(m["code"]) == {"package_version"}


def test_code_version_falls_back_to_the_package_version_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no git executable
    assert set(M.code_version()) == {"package_version"}


def test_fingerprint_follows_one_byte_of_a_shard(tmp_path):
    root = _shards(tmp_path / "d")
    shard = root / "train-00001.array_record"
    before_dir, before_file = M.fingerprint(str(root)), M.fingerprint(str(shard))
    assert before_file["size"] == 512 and len(before_file["sha256"]) == 64
    assert M.fingerprint(str(root)) == before_dir and M.fingerprint(str(shard)) == before_file
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    assert M.fingerprint(str(shard))["sha256"] != before_file["sha256"]
    assert M.fingerprint(str(shard))["size"] == before_file["size"]
    assert M.fingerprint(str(root))["sha256"] != before_dir["sha256"]
    assert M.fingerprint([str(shard), "smollm2"])[1] == "smollm2"
    assert M.fingerprint(str(tmp_path / "missing")) == str(tmp_path / "missing") and M.fingerprint(None) is None


def test_large_files_hash_head_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "LARGE_FILE", 1000)
    monkeypatch.setattr(M, "EDGE", 100)
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(2000))
    before = M.fingerprint(str(f))
    assert before["partial"] is True and before["size"] == 2000 and "mtime_ns" in before
    data = bytearray(2000)
    data[1950] = 1  # in the tail
    f.write_bytes(bytes(data))
    assert M.fingerprint(str(f))["sha256"] != before["sha256"]


def test_resume_after_a_changed_shard_warns_and_keeps_the_earlier_manifest(tmp_path, caplog):
    root = _shards(tmp_path / "d")
    inputs = {"data.train": str(root), "model.init": "scratch"}
    first = M.write(tmp_path / "w", _config(), inputs, argv=["first"])
    with caplog.at_level(logging.WARNING, logger="polar_jax.run_manifest"):
        M.write(tmp_path / "w", _config(), inputs, argv=["second"])
    assert caplog.records == []  # nothing changed: nothing said
    shard = root / "train-00002.array_record"
    shard.write_bytes(b"\x01" + shard.read_bytes()[1:])
    with caplog.at_level(logging.WARNING, logger="polar_jax.run_manifest"):
        third = M.write(tmp_path / "w", _config(), inputs, argv=["third"])
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"input data.train changed since the run started: {root}"]
    on_disk = json.loads((tmp_path / "w" / "run.json").read_text())
    assert on_disk["argv"] == ["third"] and [p["argv"] for p in on_disk["previous"]] == [["first"], ["second"]]
    assert on_disk["previous"][0]["inputs"] == json.loads(json.dumps(first["inputs"]))
    assert third["inputs"]["data.train"] != first["inputs"]["data.train"]
    assert not list((tmp_path / "w").glob(".*tmp"))  # the temporary file was renamed


def test_resume_with_another_code_version_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(M, "code_version", lambda: {"git_commit": "a" * 40, "git_dirty": False})
    M.write(tmp_path, None, {})
    monkeypatch.setattr(M, "code_version", lambda: {"git_commit": "b" * 40, "git_dirty": True})
    with caplog.at_level(logging.WARNING, logger="polar_jax.run_manifest"):
        M.write(tmp_path, None, {})
    assert [r.getMessage() for r in caplog.records] == [
        "resuming with another code version: aaaaaaaaaaaa -> bbbbbbbbbbbb (dirty)"
    ]


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    m = M.write(tmp_path, _config(), {"data.train": str(_shards(tmp_path / "d"))})
    assert m["seeds"]["seed"] == 7 and not (tmp_path / "run.json").exists()
    assert m["inputs"] == {"data.train": str(tmp_path / "d")}  # not read: only process 0 hashes


class _Pool:
    """Two scripted policies; policy "a" reads its checkpoint from a real file."""

    batch_size, prompt_bucket = 4, 16

    def __init__(self, checkpoint: str):
        from polar_jax.synth.pool import PolicySpec

        self.names = ["a", "b"]
        self.specs = {"a": PolicySpec("a", checkpoint), "b": PolicySpec("b", "smollm2")}

    def checkpoint_path(self, name):
        return pathlib.Path(self.specs[name].checkpoint if name == "a" else self.specs["a"].checkpoint + ".b")

    def sample(self, name, prompts, key):
        from polar_jax.synth.pool import Sample

        return [Sample(f"{name}:{p}", 3, False) for p in prompts]


def test_synth_writes_run_json_and_refuses_a_changed_checkpoint(tmp_path):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    from polar_jax.synth import synthesize as S
    from polar_jax.synth.prompts import PromptSource
    from polar_jax.synth.resume import SynthResumeError

    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    ckpt = tmp_path / "a.gguf"
    ckpt.write_bytes(b"weights v1")
    pathlib.Path(str(ckpt) + ".b").write_bytes(b"policy b")
    prompts = PromptSource(["a document with some words in it. " * 4], tokenizer, min_tokens=2, max_tokens=5, seed=5)
    plan = S.SynthPlan(num_triplets=4, shard_size=2, seed=9)
    out = tmp_path / "synth"
    S.synthesize(_Pool(str(ckpt)), prompts, plan, out, progress=False)
    m = json.loads((out / "run.json").read_text())
    assert m["seeds"] == {"plan.seed": 9, "prompts.seed": 5}
    assert m["inputs"]["policy.a"] == {"kind": "file", "bytes": 10, "sha256": M.fingerprint(str(ckpt))["sha256"]}
    assert m["inputs"]["policy.b"]["bytes"] == len(b"policy b")  # by content too (its checkpoint_path)
    assert m["inputs"]["prompts.documents"].startswith("sha256:") and m["devices"]["count"] == jax.device_count()
    assert m["versions"]["jax"] == importlib.metadata.version("jax") and m["previous"] == []
    ckpt.write_bytes(b"weights v2")  # the same path, other weights: synthesis refuses to mix them (issue 15)
    with pytest.raises(SynthResumeError, match=r"policies.a.checkpoint"):
        S.synthesize(_Pool(str(ckpt)), prompts, plan, out, progress=False)
    assert json.loads((out / "run.json").read_text())["previous"] == []


def test_each_scaling_run_dir_gets_a_run_json(tmp_path):
    import types

    from polar_jax.config_loading import load_config
    from polar_jax.scaling import sweep

    config = load_config(
        REPO / "configs" / "scaling" / "cpu_synthetic.py",
        [
            "--config.budget.value=4",
            "--config.layers=(1, 2)",
            "--config.family.aspect_ratio=16",
            "--config.family.head_dim=16",
            "--config.train.data.seq_len=256",
        ],
    )
    plans = sweep.plan(config, tmp_path)

    def fake_train(c, workdir, progress):  # a trainer that writes no manifest itself
        (pathlib.Path(workdir) / "metrics.jsonl").write_text(json.dumps({"step": c.steps, "eval_loss": 1.0}) + "\n")
        return types.SimpleNamespace(stopped_by="done")

    assert sweep.run_local(plans, fake_train, progress=False) == {p.name: "finished" for p in plans}
    for p in plans:
        m = json.loads((p.workdir / "run.json").read_text())
        assert m["seeds"]["seed"] == p.config.seed and m["inputs"]["model.init"] == p.config.model.init
        assert m["inputs"]["data.train"] == [] and m["devices"]["count"] == jax.device_count()


def test_train_inputs_split_comma_separated_sources():
    c = ml_collections.ConfigDict({"data": {"train": "a,b", "eval": "c"}, "model": {"init": "smollm2"}})
    assert M.train_inputs(c) == {"data.train": ["a", "b"], "data.eval": ["c"], "model.init": "smollm2"}


def test_train_writes_run_json_and_a_resume_after_a_changed_shard_warns(tmp_path, caplog):
    import numpy as np

    from polar_jax.config_loading import load_config
    from polar_jax.data import records, sources
    from polar_jax.train import trainer

    def shard(directory, seed):
        rng = np.random.default_rng(seed)
        directory.mkdir(parents=True, exist_ok=True)
        sources.write_array_record(
            directory / sources.shard_name(0, 1),
            [records.encode_record(rng.integers(1, 128, 40), rng.integers(1, 128, 40)) for _ in range(32)],
        )

    data = tmp_path / "data"
    shard(data, seed=0)
    cfg = load_config(
        REPO / "configs" / "pretrain_tiny.py",
        [
            "--config.steps=2",
            "--config.log_every=1",
            "--config.eval_every=0",
            "--config.checkpoint_every=2",
            "--config.data.batch_size=8",
            "--config.model.d_model=32",
            "--config.model.mlp_dim=64",
            "--config.data.seq_len=256",
            "--config.data.max_pairs_per_row=2",
            "--config.data.kind=array_record",
            f"--config.data.train={data}",
            f"--config.data.eval={data}",
        ],
    )
    trainer.train(cfg, tmp_path / "run", progress=False)
    m = json.loads((tmp_path / "run" / "run.json").read_text())
    assert m["previous"] == [] and m["versions"]["flax"] == importlib.metadata.version("flax")
    assert m["devices"]["count"] == jax.device_count() and m["seeds"]["seed"] == cfg.seed and m["platform"] == "cpu"
    assert m["mesh"] and np.prod(list(m["mesh"].values())) == jax.device_count()
    assert m["inputs"]["data.train"] == [M.fingerprint(str(data))] and m["inputs"]["model.init"] == "scratch"
    shard(data, seed=1)  # the data shard changes under the run
    with caplog.at_level(logging.WARNING, logger="polar_jax.run_manifest"):
        trainer.train(cfg, tmp_path / "run", progress=False)  # the same command again: a resume
    warnings = [r.getMessage() for r in caplog.records if r.name == "polar_jax.run_manifest"]
    assert any(w.startswith("input data.train changed since the run started") for w in warnings), warnings
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["previous"]) == 1


def test_api_keys_on_the_command_line_are_redacted():
    argv = ["rft", "--config.reward.api_key=K1", "--config.reward.api_key", "K2", "serve", "--api-key", "K3", "--x=1"]
    got = M._redacted_argv(argv)
    assert not {"K1", "K2", "K3"} & set("".join(got).replace("=", " ").split())
    assert got[:2] == ["rft", "--config.reward.api_key=<redacted>"] and got[-1] == "--x=1"
