"""Synthesis resumes by content: another spelling of the policy paths, or a copied output and
policies, resumes; changed weights are refused; old path-based synth.json files are recognised
or refused with what to do."""

import json
import os
import shutil

import pytest

from polar_jax.io import content_id
from polar_jax.synth import resume
from polar_jax.synth import synthesize as S
from polar_jax.synth.pool import PolicyPool, PolicySpec
from polar_jax.synth.prompts import PromptSource
from tests.synth.test_synthesize import DOCS, _tiny_lm

PLAN = S.SynthPlan(num_triplets=4, shard_size=2, seed=5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory holding two tiny policies under policies/lm0 and policies/lm1."""
    root = tmp_path_factory.mktemp("work")
    for i in range(2):
        _tiny_lm(root / "policies" / f"lm{i}", seed=i)
    return root


def _run(lm_dirs, out, monkeypatch=None, kill_at=None):
    """Synthesise PLAN from policies at `lm_dirs` (a fresh pool: a new process) into `out`;
    with `monkeypatch`, shard `kill_at` raises KeyboardInterrupt (None: any shard made fails)."""
    pool = PolicyPool(
        [PolicySpec(f"p{i}", str(d), max_new_tokens=4) for i, d in enumerate(lm_dirs)], batch_size=4, prompt_bucket=16
    )
    prompts = PromptSource(DOCS, pool.tokenizer("p0"), min_tokens=2, max_tokens=6, seed=PLAN.seed)
    if monkeypatch is None:
        return S.synthesize(pool, prompts, PLAN, out, progress=False)
    real = S.make_shard

    def make_shard(pool, prompts, plan, shard):
        if kill_at is None:
            raise AssertionError(f"shard {shard} synthesised again")
        if shard == kill_at:
            raise KeyboardInterrupt
        return real(pool, prompts, plan, shard)

    with monkeypatch.context() as m:
        m.setattr(S, "make_shard", make_shard)
        return S.synthesize(pool, prompts, PLAN, out, progress=False)


def _rows(out):
    """Every row, without the checkpoint spelling its shard was written with."""
    rows = [json.loads(line) for f in sorted(out.glob("triplets-*.jsonl")) for line in f.read_text().splitlines()]
    for row in rows:
        for settings in row["meta"]["policies"].values():
            settings.pop("checkpoint")
    return rows


def test_resumes_under_relative_absolute_and_symlinked_spellings(work, tmp_path, monkeypatch):
    whole = _run([work / "policies/lm0", work / "policies/lm1"], tmp_path / "whole")
    root = tmp_path / "run"
    shutil.copytree(work / "policies", root / "policies")
    monkeypatch.chdir(root)
    with pytest.raises(KeyboardInterrupt):  # killed after shard 0, policies and output spelled relative
        _run(["policies/lm0", "policies/lm1"], "out", monkeypatch, kill_at=1)
    summary = _run([root / "policies/lm0", root / "policies/lm1"], root / "out")  # absolute
    assert summary["resumed_shards"] == 1 and summary["triplets"] == whole["triplets"]
    assert _rows(root / "out") == _rows(tmp_path / "whole")  # the same triplets as an uninterrupted run
    link = tmp_path / "link"
    link.symlink_to(root)
    done = _run([link / "policies/lm0", link / "policies/lm1"], link / "out", monkeypatch)  # nothing left to do
    assert done["resumed_shards"] == PLAN.num_shards == 2


def test_copied_output_and_policies_resume_elsewhere(work, tmp_path, monkeypatch):
    first = tmp_path / "first"
    shutil.copytree(work / "policies", first / "policies")
    lms = [first / "policies/lm0", first / "policies/lm1"]
    with pytest.raises(KeyboardInterrupt):
        _run(lms, first / "out", monkeypatch, kill_at=1)
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)  # cp -r: new modification times, another path
    shutil.rmtree(first)
    summary = _run([moved / "policies/lm0", moved / "policies/lm1"], moved / "out")
    assert summary["resumed_shards"] == 1 and len(list((moved / "out").glob("triplets-*.jsonl"))) == 2
    stored = json.loads((moved / "out" / "synth.json").read_text())
    assert stored["as_given"]["checkpoints"]["p0"] == str(lms[0])  # provenance of the first run, not compared


def test_a_policy_whose_weights_changed_is_refused(work, tmp_path):
    copy = tmp_path / "policies"
    shutil.copytree(work / "policies", copy)
    _run([copy / "lm0", copy / "lm1"], tmp_path / "out")
    _tiny_lm(copy / "lm1", seed=7)  # same shapes and files, other weights
    with pytest.raises(resume.SynthResumeError, match=r"other settings .*policies\.p1\.checkpoint \(its files"):
        _run([copy / "lm0", copy / "lm1"], tmp_path / "out")


def _to_old_format(synth_json, checkpoints: dict):
    """Rewrite a synth.json as the path-based format before content fingerprints."""
    fp = json.loads(synth_json.read_text())
    for key in ("version", "as_given"):
        fp.pop(key, None)
    for key in ("instructions_sha256", "tokenizer_sha256"):
        fp["prompts"].pop(key, None)
    for policy in fp["policies"]:
        policy["checkpoint"] = checkpoints[policy["name"]]
    synth_json.write_text(json.dumps(fp, indent=1))


def test_old_path_based_synth_json_is_recognised_by_content_and_upgraded(work, tmp_path, monkeypatch):
    copy = tmp_path / "policies"
    shutil.copytree(work / "policies", copy)
    lms = [copy / "lm0", copy / "lm1"]
    with pytest.raises(KeyboardInterrupt):
        _run(lms, tmp_path / "out", monkeypatch, kill_at=1)
    _to_old_format(tmp_path / "out" / "synth.json", {"p0": "policies/lm0", "p1": "policies/lm1"})
    monkeypatch.chdir(tmp_path)  # the old run's relative spellings are found from here
    assert _run(lms, tmp_path / "out")["resumed_shards"] == 1  # given absolute
    assert json.loads((tmp_path / "out" / "synth.json").read_text())["version"] == resume.VERSION


def test_old_synth_json_whose_checkpoints_cannot_be_checked_is_refused_with_what_to_do(work, tmp_path, monkeypatch):
    lms = [work / "policies/lm0", work / "policies/lm1"]
    _run(lms, tmp_path / "out")
    synth_json = tmp_path / "out" / "synth.json"
    _to_old_format(synth_json, {"p0": "elsewhere/lm0", "p1": str(lms[1])})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(resume.SynthResumeError, match=r"older polar_jax .*policy p0 was 'elsewhere/lm0'.*Resume once"):
        _run(lms, tmp_path / "out")
    _to_old_format(synth_json, {"p0": str(lms[1]), "p1": str(lms[1])})  # found, but other weights
    with pytest.raises(resume.SynthResumeError, match=r"policies\.p0\.checkpoint"):
        _run(lms, tmp_path / "out")
    fp = json.loads(synth_json.read_text())
    fp["plan"]["seed"] = 6
    synth_json.write_text(json.dumps(fp))
    with pytest.raises(resume.SynthResumeError, match=r"plan\.seed differ"):
        _run(lms, tmp_path / "out")


def test_content_identity_ignores_spelling_and_copies_but_not_bytes(work, tmp_path):
    lm0 = work / "policies" / "lm0"
    shutil.copytree(lm0, tmp_path / "lm0")
    (tmp_path / "link").symlink_to(tmp_path / "lm0")
    ids = [content_id.identity(p) for p in (lm0, tmp_path / "lm0", tmp_path / "link", os.path.relpath(lm0))]
    assert all(i == ids[0] for i in ids) and ids[0]["kind"] == "dir" and ids[0]["files"] >= 3
    weights = tmp_path / "lm0" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    assert content_id.identity(tmp_path / "lm0")["sha256"] != ids[0]["sha256"]  # the cache sees the change
    assert content_id.identity(weights)["bytes"] == len(data)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        content_id.identity(tmp_path / "nowhere")
