"""The command line as a new user meets it: every user error is one line on stderr,
`polar-jax CMD: error: ...`, exit status 2, no traceback (with -v, the traceback too); configs
are checked key by key before any work starts; help shows defaults; old flag spellings work."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from polar_jax import __main__ as cli_module
from polar_jax import config_checks
from polar_jax.__main__ import main
from polar_jax.bench.rft_algorithms import CONFIGS as RFT_ALGORITHM_CONFIGS
from polar_jax.config_loading import load_config
from polar_jax.errors import ConfigError, UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCORE_MODEL = ROOT / "tests/fixtures/score"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")  # our logging format


def error_line(capsys, command: str) -> str:
    """The one error line on stderr (log records of the run before it aside); asserts its shape."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"polar-jax {command}: error: "), err
    return lines[0]


def _jsonl(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ one user error per command


def test_convert_a_missing_model_is_one_line(capsys, tmp_path):
    assert main(["convert", "--model", "/nonexistent/model", "--output", str(tmp_path / "o"), "--format", "hf"]) == 2
    assert "/nonexistent/model: not a model" in error_line(capsys, "convert")


def test_convert_old_spellings_still_work(capsys, tmp_path):
    out = tmp_path / "polar"
    assert (
        main(["convert", "--from", str(ROOT / "tests/fixtures/hf/qwen2_reward"), "--to", str(out), "--format", "polar"])
        == 0
    )
    assert (out / "polar_model.json").exists()


def test_generate_a_missing_model_is_one_line(capsys):
    assert main(["generate", "--model", "/nonexistent/lm"]) == 2
    assert "/nonexistent/lm: not a model" in error_line(capsys, "generate")


def test_prepare_a_missing_input_is_one_line(capsys, tmp_path):
    assert (
        main(
            [
                "prepare",
                "--input",
                str(tmp_path / "none.jsonl"),
                "--tokenizer",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "none.jsonl does not exist" in error_line(capsys, "prepare")


def test_score_a_bad_row_is_one_line_with_its_file_and_line(capsys, tmp_path):
    rows = _jsonl(
        tmp_path / "rows.jsonl",
        [{"prompt": "p", "reference": "r", "output": "o"}, {"prompt": "p", "reference": "r", "output": 3}],
    )
    assert main(["score", "--model", str(SCORE_MODEL), "--input", str(rows), "--output", str(tmp_path / "o")]) == 2
    assert f"{rows}:2: field 'output'" in error_line(capsys, "score")
    assert not (tmp_path / "o").exists()


def test_score_a_missing_model_is_one_line(capsys, tmp_path):
    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "reference": "r", "output": "o"}])
    assert main(["score", "--model", "/nonexistent", "--input", str(rows), "--output", str(tmp_path / "o")]) == 2
    assert "/nonexistent: not a model" in error_line(capsys, "score")


def test_evaluate_a_missing_file_is_one_line_with_either_spelling(capsys, tmp_path):
    for flag in ("--input", "--data"):
        assert main(["evaluate", "--model", str(SCORE_MODEL), flag, str(tmp_path / "none.jsonl")]) == 2
        assert error_line(capsys, "evaluate").endswith("none.jsonl: no such file or directory")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--workdir", "gs://bucket/demo"],
        ["score", "--model", "m", "--input", "a.jsonl", "gs://bucket/b.jsonl", "--output", "o.jsonl"],
        ["scaling", "--config", "configs/scaling/cpu_demo.py", "--workdir", "gs://bucket/sweep"],
    ],
)
def test_a_bucket_path_where_a_command_takes_local_paths_is_refused_before_any_work(
    argv, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    flag = "--input" if argv[0] == "score" else "--workdir"
    assert f"{flag} gs://bucket/" in err and f"{argv[0]} reads and writes local paths only" in err
    assert list(tmp_path.iterdir()) == []  # no local directory named "gs:"


def test_demo_an_unknown_field_is_one_line(capsys):
    assert main(["demo", "--set", "rm_stepz=5"]) == 2
    line = error_line(capsys, "demo")
    assert "--set 'rm_stepz=5'" in line and "rm_steps" in line


def test_demo_recipe_paper_with_set_changes_on_top(monkeypatch, tmp_path):
    from polar_jax import demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda workdir, cfg, progress: seen.update(cfg=cfg) or {})
    monkeypatch.setattr(demo, "format_results", lambda results: "")
    assert main(["demo", "--workdir", str(tmp_path), "--recipe", "paper", "--set", "rm_steps=7"]) == 0
    assert seen["cfg"] == demo.dataclasses.replace(demo.PAPER_RECIPE, rm_steps=7)
    assert seen["cfg"].rm_init == "lm0-step1200" and seen["cfg"].max_new_tokens == 48


def test_train_a_missing_config_file_is_one_line(capsys, tmp_path):
    assert main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)]) == 2
    assert "nope.py does not exist" in error_line(capsys, "train")


def test_synth_old_out_spelling_reaches_the_config_check(capsys, tmp_path):
    assert (
        main(["synth", "--config", "configs/synth_smollm2.py", "--out", str(tmp_path), "--config.num_triplets=0"]) == 2
    )
    assert "config.num_triplets=0 (set by --config.num_triplets=0): must be an integer >= 1" in error_line(
        capsys, "synth"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_synth_a_bad_policy_field_names_its_index(capsys, tmp_path):
    # Policies are a list in the config file; check them by the table of each entry.
    config = load_config(ROOT / "configs/synth_smollm2.py")
    config.policies[1]["top_p"] = 0.0
    with pytest.raises(ConfigError, match=r"config.policies\[1\].top_p=0.0 \(in x.py\): must be a number in \(0, 1\]"):
        config_checks.check(config, "synth", source="x.py")


def test_rft_a_missing_model_is_one_line(capsys, tmp_path):
    assert (
        main(
            [
                "rft",
                "--config",
                "configs/rft_demo.py",
                "--workdir",
                str(tmp_path / "w"),
                "--config.policy.init=/nonexistent/policy",
                "--config.reward.model=/nonexistent/rm",
            ]
        )
        == 2
    )
    assert "/nonexistent/policy" in error_line(capsys, "rft")


def test_scaling_an_unknown_run_is_one_line(capsys, tmp_path):
    assert (
        main(["scaling", "--config", "configs/scaling/cpu_synthetic.py", "--workdir", str(tmp_path), "--only", "9K"])
        == 2
    )
    assert "--only 9K: no such run or size" in error_line(capsys, "scaling")


def test_compile_a_bad_value_is_refused_before_compiling(capsys):
    assert main(["compile", "--config", "configs/pretrain_tiny.py", "--topology", "v5p-8", "--config.optim.lr=-1"]) == 2
    assert "config.optim.lr=-1.0 (set by --config.optim.lr=-1): must be a number > 0" in error_line(capsys, "compile")


# ------------------------------------------------------------------ argparse, -v, real bugs


def test_argparse_errors_are_one_line_exit_2(capsys):
    assert main(["score", "--model", "x"]) == 2
    assert "the following arguments are required: --input, --output" in error_line(capsys, "score")
    assert main(["train", "--config", "c.py", "--workdir", "w", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in error_line(capsys, "train")
    assert main(["score", "--model", "m", "--input", "i", "--output", "o", "--config.steps=3"]) == 2
    assert "score reads no config" in error_line(capsys, "score")
    assert main(["scor"]) == 2
    assert "invalid choice: 'scor'" in capsys.readouterr().err


def test_verbose_shows_the_traceback_before_the_line(capsys, tmp_path):
    args = ["convert", "--model", "/nonexistent/model", "--output", str(tmp_path / "o"), "--format", "hf"]
    for argv in (["-v", *args], [*args, "-v"]):  # before or after the command
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "FileNotFoundError" in err
        assert err.rstrip().splitlines()[-1].startswith("polar-jax convert: error: /nonexistent/model: not a model")


def test_a_bug_keeps_its_traceback(monkeypatch):
    from polar_jax.commands import demo

    def broken(args):
        return {}["missing"]  # a KeyError in our code is a bug, not a user error

    monkeypatch.setattr(demo, "run", broken)
    with pytest.raises(KeyError):
        main(["demo"])


def test_which_exceptions_are_user_errors(tmp_path):
    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the point is to classify it
            return e
        raise AssertionError("did not raise")

    import fractions

    from polar_jax.config_loading import apply_override

    assert cli_module.is_user_error(UserError("x"))
    assert cli_module.is_user_error(raised(lambda: open(tmp_path / "none")))
    assert cli_module.is_user_error(raised(lambda: json.loads("{bad")))
    assert cli_module.is_user_error(raised(lambda: apply_override(load_config(ROOT / "configs/base.py"), "x")))
    assert not cli_module.is_user_error(raised(lambda: fractions.Fraction("abc")))  # a library's ValueError
    assert not cli_module.is_user_error(raised(lambda: [][0]))
    assert not cli_module.is_user_error(raised(lambda: None + 1))


def test_the_pytorch_notice_is_gone(tmp_path):
    """A fresh process that loads a tokenizer (transformers, no torch) prints only its error line."""
    from polar_jax.io import gguf

    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "reference": "r", "chosen": "c", "rejected": "d"}])
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
    argv = [
        "prepare",
        "--input",
        str(rows),
        "--tokenizer",
        str(gguf.smollm2_gguf_path()),
        "--output",
        str(tmp_path / "out"),
        "--workers",
        "1",
    ]
    code = (
        f"import sys; from polar_jax.__main__ import main; rc = main({argv!r}); "
        "print('transformers' in sys.modules); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout.strip() == "True"  # transformers was imported, and said nothing
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("polar-jax prepare: error: tokenizer "), proc.stderr
    assert "no token '[UNUSED_TOKEN_130]'" in lines[0] and "PyTorch" not in proc.stderr


# ------------------------------------------------------------------ config checks


def test_override_errors_name_the_key_and_the_expected_type(capsys, tmp_path):
    base = ["train", "--config", "configs/pretrain_tiny.py", "--workdir", str(tmp_path / "w")]
    assert main([*base, "--config.optim.lr=abc"]) == 2
    assert error_line(capsys, "train").endswith(
        "override '--config.optim.lr=abc': config.optim.lr expects a number, got a string 'abc'"
    )
    assert main([*base, "--config.optim.lrr=1"]) == 2
    assert "no field config.optim.lrr; did you mean config.optim.lr?" in error_line(capsys, "train")
    assert main([*base, "--config.optimm.lr=1"]) == 2
    assert "no field config.optimm; did you mean config.optim?" in error_line(capsys, "train")
    assert main([*base, "--config.steps"]) == 2
    assert "expected --config.KEY=VALUE (or --config.KEY VALUE)" in error_line(capsys, "train")
    assert not (tmp_path / "w").exists()


def test_config_key_space_value_is_joined(capsys, tmp_path):
    assert cli_module.join_config_values(["--config.steps", "3", "--config", "c.py", "--config.mesh.data", "-1"]) == [
        "--config.steps=3",
        "--config",
        "c.py",
        "--config.mesh.data=-1",
    ]
    assert (
        main(["train", "--config", "configs/pretrain_tiny.py", "--workdir", str(tmp_path), "--config.steps", "-5"]) == 2
    )
    assert "config.steps=-5 (set by --config.steps=-5): must be an integer >= 1" in error_line(capsys, "train")


RANGE_CASES = [  # (command, config, override, the rule the message states)
    ("train", "configs/pretrain_tiny.py", "steps=-5", "must be an integer >= 1"),
    ("train", "configs/pretrain_tiny.py", "steps=0", "must be an integer >= 1"),
    ("train", "configs/pretrain_tiny.py", "log_every=-1", "must be an integer >= 0 (0 = never)"),
    ("train", "configs/pretrain_tiny.py", "checkpoint_every=-1", "must be an integer >= 0 (0 = never)"),
    ("train", "configs/pretrain_tiny.py", "checkpoint_minutes=0", "must be a number > 0"),
    ("train", "configs/pretrain_tiny.py", "optim.lr=0", "must be a number > 0"),
    ("train", "configs/pretrain_tiny.py", "optim.b2=1.0", "must be a number in [0, 1)"),
    ("train", "configs/pretrain_tiny.py", "optim.warmup_fraction=1.5", "must be a number in [0, 1]"),
    ("train", "configs/pretrain_tiny.py", "data.batch_size=0", "must be an integer >= 1"),
    ("train", "configs/pretrain_tiny.py", "data.mode=packd", "must be one of 'packed', 'padded'"),
    ("train", "configs/pretrain_tiny.py", "mesh.data=0", "must be an integer >= 1 or -1 (-1 takes the rest)"),
    ("train", "configs/pretrain_tiny.py", "model.remat=some", "must be one of 'none', 'full', 'dots', 'dots_no_batch'"),
    ("train", "configs/pretrain_tiny.py", "accum_steps=0", "must be an integer >= 1"),
    ("rft", "configs/rft_demo.py", "iterations=-1", "must be an integer >= 1"),
    ("rft", "configs/rft_demo.py", "checkpoint_every=-2", "must be an integer >= 0 (0 = never)"),
    ("rft", "configs/rft_demo.py", "log_every=-1", "must be an integer >= 0 (0 = never)"),
    ("rft", "configs/rft_demo.py", "actor_optim.lr=-1e-6", "must be a number > 0"),
    ("rft", "configs/rft_demo.py", "rollout.top_p=0", "must be a number in (0, 1]"),
    (
        "rft",
        "configs/rft_demo.py",
        "algorithm.estimator=ppo",
        "must be one of 'gae', 'group', 'grpo', 'rloo', 'reinforce_pp'",
    ),
    ("rft", "configs/rft_demo.py", "algorithm.clip_ratio_c=1", "must be a number > 1"),
    ("synth", "configs/synth_smollm2.py", "shard_size=0", "must be an integer >= 1"),
    ("synth", "configs/synth_smollm2.py", "prompts.split=test", "must be one of 'train', 'heldout', 'all'"),
    ("synth", "configs/synth_smollm2.py", "prompts.instruction_fraction=2", "must be a number in [0, 1]"),
    ("scaling", "configs/scaling/cpu_synthetic.py", "budget.fill=2", "must be a number in (0, 1]"),
    ("scaling", "configs/scaling/cpu_synthetic.py", "evals_per_run=0", "must be an integer >= 1"),
    ("scaling", "configs/scaling/cpu_synthetic.py", "train.optim.lr=0", "must be a number > 0"),
    ("scaling", "configs/scaling/cpu_synthetic.py", "layers=(2, 0)", "must be a list of an integer >= 1"),
]


@pytest.mark.parametrize("command, config, override, rule", RANGE_CASES, ids=[f"{c[0]}-{c[2]}" for c in RANGE_CASES])
def test_each_range_check_is_one_line_exit_2(command, config, override, rule, capsys, tmp_path):
    out_flag = "--output" if command == "synth" else "--workdir"
    assert main([command, "--config", config, out_flag, str(tmp_path / "w"), f"--config.{override}"]) == 2
    key = override.partition("=")[0]
    line = error_line(capsys, command)
    assert re.search(
        rf"config\.{re.escape(key)}=\S.* \(set by --config\.{re.escape(override)}\): {re.escape(rule)}$", line
    ), line
    assert not (tmp_path / "w").exists()  # refused before any work


def test_a_bad_value_in_the_config_file_names_the_file(tmp_path):
    config = load_config(ROOT / "configs/pretrain_tiny.py")
    config.eval_batches = 0
    with pytest.raises(ConfigError, match=r"config.eval_batches=0 \(in configs/x.py\): must be an integer >= 1"):
        config_checks.check(config, "train", source="configs/x.py")
    config.eval_batches, config.extra_key = 1, 3
    with pytest.raises(ConfigError, match="config.extra_key .* is not a known key"):
        config_checks.check(config, "train", source="configs/x.py")


@pytest.mark.parametrize("kind", ["train", "rft"])
def test_every_default_has_a_rule_and_passes_it(kind):
    import importlib

    defaults = importlib.import_module(config_checks.DEFAULTS[kind]).base_config()
    assert sorted(config_checks.flatten(defaults)) == sorted(config_checks.TABLES[kind])
    config_checks.check(defaults, kind)


def test_the_policy_table_covers_the_policy_spec():
    import dataclasses

    from polar_jax.synth.pool import PolicySpec

    assert sorted(config_checks.POLICY) == sorted(f.name for f in dataclasses.fields(PolicySpec))


@pytest.mark.parametrize(
    "path, kind",
    [
        ("configs/pretrain_tiny.py", "train"),
        ("configs/sft_tiny.py", "train"),
        ("configs/polar_7b.py", "train"),
        ("configs/polar_7b.py:sft", "train"),
        ("configs/polar_1_8b.py", "train"),
        ("configs/rft_demo.py", "rft"),
        *((path, "rft") for path in RFT_ALGORITHM_CONFIGS.values() if path != "configs/rft_demo.py"),
        ("configs/rft_demo_salad.py", "rft"),
        ("configs/synth_smollm2.py", "synth"),
        ("configs/scaling/cpu_demo.py", "scaling"),
        ("configs/scaling/cpu_synthetic.py", "scaling"),
        ("configs/scaling/family.py", "scaling"),
    ],
)
def test_shipped_configs_pass_their_checks(path, kind):
    load_config(ROOT / path, check=kind)


def test_zero_means_never_for_log_and_checkpoint_cadence(tmp_path):
    from polar_jax.train import trainer

    overrides = [
        "--config.steps=3",
        "--config.log_every=0",
        "--config.checkpoint_every=0",
        "--config.eval_every=0",
        "--config.data.synthetic_train_examples=64",
        "--config.checkpoint_minutes=1000.0",
    ]
    config = load_config(ROOT / "configs/pretrain_tiny.py", overrides, check="train")
    result = trainer.train(config, tmp_path, progress=False)
    assert (result.step, result.stopped_by) == (3, "done")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3]  # only the last step is logged
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]


# ------------------------------------------------------------------ help


def test_help_shows_defaults_examples_and_config_usage(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[--config.KEY=VALUE ...]" in out.split("\n\n")[0]  # in the usage
    assert "    python -m polar_jax train --config configs/pretrain_tiny.py --workdir DIR" in out  # as written
    assert main(["generate", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-new-tokens MAX_NEW_TOKENS tokens generated per prompt at most (default: 32)" in out
    assert "--seed SEED sampling seed (default: 0)" in out


@pytest.mark.parametrize("command", list(cli_module.COMMANDS))
def test_every_flag_has_help(command):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"polar_jax.commands.{cli_module.COMMANDS[command][0]}").add_arguments(parser)
    missing = [a.option_strings for a in parser._actions if not a.help]
    assert missing == []


def test_score_a_model_without_a_tokenizer_is_one_line_and_convert_still_works(capsys, tmp_path):
    rows = _jsonl(tmp_path / "rows.jsonl", [{"prompt": "p", "reference": "r", "output": "o"}])
    assert main(["score", "--model", str(SCORE_MODEL), "--input", str(rows), "--output", str(tmp_path / "o")]) == 2
    assert f"{SCORE_MODEL} holds no tokenizer" in error_line(capsys, "score") and not (tmp_path / "o").exists()
    # generation_config.json alone is not a tokenizer: the export simply has none
    lm = ROOT / "tests/fixtures/hf/llama_untied"
    assert main(["convert", "--model", str(lm), "--output", str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
