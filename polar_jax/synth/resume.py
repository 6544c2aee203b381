"""Whether an output directory's `synth.json` lets this synthesis run resume there.

The fingerprint (`synthesize.fingerprint`, version `VERSION`) names every input by content:
a policy checkpoint by `io.content_id.identity`, the corpus, instructions and counting
tokenizer by sha256. Its "as_given" part (the checkpoint paths as spelled) is provenance only
and never compared, so a run resumes under another spelling of the same paths or after its
output and policies were copied elsewhere, and is refused, with the differing keys named,
when anything that decides the triplets differs.

A `synth.json` without a version was written before content fingerprints: it names each
checkpoint by its spelling. It is recognised when every other recorded field agrees and each
recorded checkpoint is either spelled as now or still found (from the current directory) with
the same content as this run's; it is then rewritten in the current format. When a recorded
checkpoint is no longer there, its content cannot be checked, and the run is refused with
what to do.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

from polar_jax.errors import UserError
from polar_jax.io import atomic, content_id

log = logging.getLogger(__name__)

VERSION = 3  # 3: samples drawn by the continuous-batching engine, each with a key from its id
PROVENANCE = ("as_given",)  # fingerprint keys that are recorded but never compared
_UNVERSIONED_KEYS = ("plan", "policies", "batch_size", "prompt_bucket", "prompts")  # what the old format held
_START_OVER = "use another output directory, or delete this one to start over"


class SynthResumeError(UserError, ValueError):
    """An output directory holds triplets of another synthesis run."""


def _comparable(fp: dict) -> dict:
    out = {k: v for k, v in fp.items() if k not in PROVENANCE}
    if isinstance(out.get("policies"), list):  # by name: the keys of a difference read "policies.NAME.FIELD"
        out["policies"] = {p.get("name", str(i)): p for i, p in enumerate(out["policies"])}
    return out


def differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values (dicts compared key by key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if key not in old or key not in new:
                out.append(f"{prefix}{key}" + (" (new)" if key not in old else " (gone)"))
            else:
                out += differences(old[key], new[key], f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _refuse(out_dir, manifest, keys: list[str]) -> SynthResumeError:
    named = []
    for key in keys:  # a checkpoint's identity differs as a whole: its files' contents
        head, sep, _ = key.partition(".checkpoint.")
        key = f"{head}.checkpoint (its files' contents)" if sep and head.startswith("policies.") else key
        if key not in named:
            named.append(key)
    keys = named
    return SynthResumeError(
        f"{out_dir} holds triplets synthesised with other settings ({manifest}): {', '.join(keys)} differ; "
        + _START_OVER
    )


def check_or_write(out_dir: pathlib.Path, wanted: dict, write: bool = True) -> None:
    """Write `out_dir/synth.json` for a new run; for an existing one, return if `wanted` may
    resume there (upgrading an old-format file), else raise SynthResumeError saying why.
    `write=False` (the other processes of a multi-process run): the same checks, nothing written."""
    manifest = out_dir / "synth.json"
    new = json.loads(json.dumps(wanted))
    if not manifest.exists():
        if write:
            atomic.write_text(manifest, json.dumps(new, indent=1))
        return
    try:
        stored = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise SynthResumeError(f"{manifest} is unreadable ({e}); {_START_OVER}") from None
    version = stored.get("version") if isinstance(stored, dict) else None
    if version == VERSION:
        keys = differences(_comparable(stored), _comparable(new))
        if keys:
            raise _refuse(out_dir, manifest, keys)
        return
    if version is not None:
        raise SynthResumeError(
            f"{manifest} has fingerprint version {version!r}, this polar_jax writes {VERSION}: it was written by "
            f"another version of polar_jax; resume with that version, or {_START_OVER}"
        )
    _check_unversioned(out_dir, manifest, stored, new)
    if not write:
        return
    atomic.write_text(manifest, json.dumps(new, indent=1))
    log.info("%s: recorded checkpoints by content (was by path); resuming", manifest)


def _check_unversioned(out_dir, manifest, stored: dict, new: dict) -> None:
    """The checks of a pre-content-fingerprint `synth.json` (see the module doc)."""
    missing = [k for k in _UNVERSIONED_KEYS if k not in stored]
    if missing or not isinstance(stored["policies"], list) or not isinstance(stored["prompts"], dict):
        raise SynthResumeError(
            f"{manifest} is not a synthesis fingerprint (no {missing or 'policy list'}); {_START_OVER}"
        )
    old_policies = {p.get("name"): p for p in stored.get("policies", [])}
    given = new["as_given"]["checkpoints"]
    old, now = _comparable(stored), _comparable(new)
    now = {k: v for k, v in now.items() if k in old}  # fields the old format did not record are not compared
    for policies in (old["policies"], now["policies"]):
        for name in list(policies):
            policies[name] = {k: v for k, v in policies[name].items() if k != "checkpoint"}
    now["prompts"] = {k: v for k, v in now["prompts"].items() if k in old["prompts"]}
    keys = differences(old, now)
    if keys:
        raise _refuse(out_dir, manifest, keys)
    for name, spelled in given.items():
        recorded = old_policies[name].get("checkpoint")
        if recorded == spelled:
            continue  # what the old format compared
        if not isinstance(recorded, str) or not os.path.exists(recorded):
            raise SynthResumeError(
                f"{manifest} was written by an older polar_jax that recorded checkpoints by their path spelling; "
                f"policy {name} was {recorded!r}, which is not found from {os.getcwd()}, so this run's {spelled!r} "
                f"cannot be checked against it. Resume once with the policy at {recorded!r} (from the directory that "
                f"run started in), which records checkpoints by content, or {_START_OVER}"
            )
        policy = next(p for p in new["policies"] if p["name"] == name)
        if content_id.identity(recorded) != policy["checkpoint"]:
            raise _refuse(out_dir, manifest, [f"policies.{name}.checkpoint (the files at {recorded} and {spelled})"])
