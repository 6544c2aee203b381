"""The sweep: plans from a config, resumes (finished runs are not rerun, failed ones are
retried), reports failures while fitting the rest, writes scaling.csv / fit.json / PNGs with
the right numbers, prints pod launch commands, and fails fast without its data. Training is
a fake that writes the trainer's metrics.jsonl contract, so these tests take seconds; one
test runs the real trainer on two tiny sizes."""

import csv
import json
import pathlib
import types

import numpy as np
import pytest

from polar_jax.__main__ import main
from polar_jax.config_loading import load_config
from polar_jax.flops import train_flops_per_token
from polar_jax.scaling import sweep

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging():
    """`main` reconfigures the root logger onto pytest's captured stderr; undo that afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
CPU = ROOT / "configs" / "scaling" / "cpu_synthetic.py"
TOKENS_PER_STEP = 3000.0
EXPONENT = -0.1


# Pinned here, so that tuning the shipped config does not move these tests.
SMALL = ["--config.budget.value=20", "--config.layers=(1, 2, 3, 4, 5)", "--config.family.aspect_ratio=16",
         "--config.family.head_dim=16", "--config.family.mlp_multiple=16", "--config.train.optim.lr=1e-3",
         "--config.evals_per_run=6", "--config.logs_per_run=40", "--config.train.data.seq_len=256"]


def small_sweep(*overrides):
    return load_config(CPU, [*SMALL, *overrides])


class FakeTrain:
    """Writes metrics.jsonl as the trainer does: L(N, step) = 2 N^-0.1 (1 + 1/sqrt(step))."""

    def __init__(self, fail=(), interrupt=()):
        self.calls, self.fail, self.interrupt = [], set(fail), set(interrupt)

    def __call__(self, config, workdir, progress):
        name = pathlib.Path(workdir).name
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"out of memory in {name}")
        if name in self.interrupt:
            return types.SimpleNamespace(stopped_by="signal")
        n = sweep.ModelConfig(**{k: config.model[k] for k in sweep.SIZE_FIELDS}, heads=("reward",)).num_params(
            include_embedding=False)
        with open(pathlib.Path(workdir) / "metrics.jsonl", "w") as f:
            for step in range(1, config.steps + 1):
                if step % config.log_every == 0 or step == config.steps:
                    # alternate around the mean: the sweep must average, not take one row
                    tokens = TOKENS_PER_STEP + (100.0 if step // config.log_every % 2 else -100.0)
                    f.write(json.dumps({"step": step, "loss": 0.5, "tokens": tokens}) + "\n")
                if step % config.eval_every == 0 or step == config.steps:
                    loss = 2.0 * n ** EXPONENT * (1 + step ** -0.5)
                    f.write(json.dumps({"step": step, "eval_loss": loss, "eval_accuracy": 0.8}) + "\n")
        return types.SimpleNamespace(stopped_by="done")


def test_plan_applies_the_rule_budget_and_cadence(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    assert [p.name for p in plans] == ["3.4K", "27K", "83K", "201K", "398K"]
    assert [(p.config.model.num_layers, p.config.model.d_model) for p in plans] == [(1, 16), (2, 32), (3, 48), (4, 64), (5, 80)]
    for p in plans:
        c = p.config
        assert (c.steps, c.eval_every, c.log_every, c.checkpoint_every) == (20, 3, 1, 10)
        assert c.model.vocab_size == 128 and c.model.init == "scratch" and c.optim.lr == 1e-3
        assert p.workdir == tmp_path / "runs" / p.name


def test_token_budget_and_paper_batch_rule_set_steps_and_rows(tmp_path):
    config = small_sweep("--config.budget.kind=tokens_per_param", "--config.budget.value=10",
                         "--config.batch.rule=paper", "--config.batch.pairs_per_row=2", "--config.batch.multiple=8")
    for p in sweep.plan(config, tmp_path):
        n = p.model_cfg.num_params(include_embedding=False)
        samples = 31.9032 * (p.model_cfg.num_params() / 1e6) ** 0.06944 * (10 * n / 1e6) ** 0.52997
        rows = p.config.data.batch_size
        assert rows % 8 == 0 and rows >= samples / 2 > rows - 8
        assert p.config.steps == int(np.ceil(10 * n / (rows * 256 * 0.9)))
    with pytest.raises(sweep.SweepError, match="base_tokens_m=0"):
        sweep.plan(small_sweep("--config.lr.rule=paper"), tmp_path)


def test_a_failed_run_is_reported_the_fit_uses_the_rest_and_a_rerun_resumes(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    train = FakeTrain(fail={"83K"})
    assert sweep.run_local(plans, train, progress=False) == {
        "3.4K": "finished", "27K": "finished", "83K": "failed", "201K": "finished", "398K": "finished"}
    rows, curves = sweep.collect(plans)
    fit = sweep.analyse(rows, curves)
    sweep.write_results(tmp_path, rows, curves, fit)

    table = {r["name"]: r for r in csv.DictReader((tmp_path / "scaling.csv").open())}
    assert table["83K"]["status"] == "failed" and "RuntimeError: out of memory in 83K" in table["83K"]["error"]
    assert table["83K"]["eval_loss"] == ""
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["runs"]["finished"] == ["3.4K", "27K", "201K", "398K"]
    assert saved["runs"]["failed"] == [{"name": "83K", "error": "RuntimeError: out of memory in 83K"}]
    # Same steps for every size: the final losses are an exact power law in N.
    assert saved["loss_vs_params"]["b"] == pytest.approx(EXPONENT, abs=1e-9)
    assert saved["loss_vs_params"]["r2"] == pytest.approx(1.0, abs=1e-9) and saved["loss_vs_params"]["n"] == 4
    assert saved["paper"]["loss_vs_params"]["b"] == -0.0425
    assert saved["frontier"]["points"] and set(saved["evaluations"]) == {"3.4K", "27K", "201K", "398K"}

    # Compute of a finished run: FLOPs per token x the mean logged tokens per step x steps.
    big = next(p for p in plans if p.name == "201K")
    row = table["201K"]
    fpt = train_flops_per_token(big.model_cfg, 256)
    assert float(row["tokens_per_step"]) == pytest.approx(TOKENS_PER_STEP)
    assert float(row["compute_flops"]) == pytest.approx(fpt * TOKENS_PER_STEP * 20)
    assert float(row["compute_pfs_days"]) == pytest.approx(fpt * TOKENS_PER_STEP * 20 / 8.64e19)
    assert int(row["params_non_embedding"]) == 201_344 and float(row["eval_loss"]) == pytest.approx(
        2.0 * 201_344 ** EXPONENT * (1 + 20 ** -0.5))
    assert [p["step"] for p in saved["evaluations"]["201K"]] == [3, 6, 9, 12, 15, 18, 20]

    # A rerun trains only the failed run, which now succeeds; the fit then has all five.
    retry = FakeTrain()
    assert set(sweep.run_local(plans, retry, progress=False).values()) == {"finished"}
    assert retry.calls == ["83K"]
    rows, curves = sweep.collect(plans)
    assert [r["status"] for r in rows] == ["finished"] * 5
    assert sweep.analyse(rows, curves)["loss_vs_params"]["n"] == 5


def test_results_are_valid_pngs(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    sweep.run_local(plans, FakeTrain(fail={"27K"}), progress=False)
    rows, curves = sweep.collect(plans)
    paths = sweep.write_results(tmp_path, rows, curves, sweep.analyse(rows, curves))
    pngs = [p for p in paths if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {"loss_vs_params.png", "loss_vs_compute.png"}
    import matplotlib.image

    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(p).shape
        assert width >= 800 and height >= 600


def test_a_run_of_another_config_is_stale_not_rerun(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    sweep.run_local(plans, FakeTrain(), progress=False)
    longer = sweep.plan(small_sweep("--config.budget.value=30"), tmp_path)
    train = FakeTrain()
    assert set(sweep.run_local(longer, train, progress=False).values()) == {"stale"} and train.calls == []
    rows, _ = sweep.collect(longer)
    assert all(r["status"] == "stale" and "steps: 20 there, 30 now" in r["error"] for r in rows)


def test_an_interrupted_run_stops_the_sweep(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    train = FakeTrain(interrupt={"27K"})
    assert sweep.run_local(plans, train, progress=False) == {"3.4K": "finished", "27K": "pending"}
    assert train.calls == ["3.4K", "27K"]


def test_pod_mode_prints_one_launch_command_per_unfinished_run(tmp_path, capsys):
    plans = sweep.plan(small_sweep(), tmp_path)
    sweep.run_local(plans[:1], FakeTrain(), progress=False)
    rc = main(["scaling", "--config", str(CPU), "--workdir", str(tmp_path), "--launch", "pod", "--tpu", "v5p-64",
               "--zone", "us-east5-a", *SMALL])
    assert rc == 1  # four runs pending
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("launch/")]
    assert len(lines) == 4
    run = tmp_path / "runs" / "27K"
    assert lines[0] == (f"launch/tpu_pod.sh v5p-64 us-east5-a configs/scaling/from_json.py:{run}/run_config.json {run}")
    assert (tmp_path / "launch_pod.sh").read_text().count("launch/tpu_pod.sh") == 4
    # The worker's config is exactly the planned one.
    worker = load_config(f"{ROOT / 'configs/scaling/from_json.py'}:{run / 'run_config.json'}")
    assert worker.to_dict() == plans[1].config.to_dict()
    table = list(csv.DictReader((tmp_path / "scaling.csv").open()))
    assert [r["status"] for r in table] == ["finished", "pending", "pending", "pending", "pending"]


def test_cpu_demo_without_the_demo_data_fails_fast_and_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["scaling", "--config", str(ROOT / "configs/scaling/cpu_demo.py"), "--workdir", str(tmp_path / "w")])
    assert rc == 2
    assert "python -m polar_jax demo --workdir runs/demo" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # about 50 s on 2 busy cores: two compiles per run
def test_the_real_trainer_writes_what_the_sweep_reads(tmp_path):
    config = small_sweep("--config.layers=(1, 2)", "--config.budget.value=4", "--config.evals_per_run=2",
                         "--config.family.aspect_ratio=16", "--config.family.head_dim=8",
                         "--config.train.data.batch_size=8",
                         "--config.train.eval_batches=1", "--config.train.data.synthetic_eval_examples=16")
    plans = sweep.plan(config, tmp_path)
    assert sweep.run_local(plans, progress=False) == {p.name: "finished" for p in plans}
    rows, curves = sweep.collect(plans)
    for row, p in zip(rows, plans):
        assert row["status"] == "finished" and 0 < row["eval_loss"] < 2 and 0 < row["tokens_per_step"] <= 8 * 256
        assert [e["step"] for e in curves[p.name]] == [2, 4]
        assert row["params_non_embedding"] == p.model_cfg.num_params(include_embedding=False)
    fit = sweep.analyse(rows, curves)
    assert fit["loss_vs_params"]["n"] == 2
    train = FakeTrain()
    sweep.run_local(plans, train, progress=False)
    assert train.calls == []  # finished: not rerun


def test_the_1m_to_1b_family_config_plans_a_pod_sweep(tmp_path):
    config = load_config(ROOT / "configs/scaling/family.py", ["--config.train.model.vocab_size=32768"])
    plans = sweep.plan(config, tmp_path, check=False)
    assert [p.name for p in plans] == ["1.3M", "3.2M", "11M", "26M", "85M", "202M", "397M", "680M", "1.1B"]
    for p in plans:
        n = p.model_cfg.num_params(include_embedding=False)
        rows, steps = p.config.data.batch_size, p.config.steps
        assert rows % 32 == 0 and p.config.optim.lr == 3e-4 and p.config.data.seq_len == 4096
        # 20 tokens per parameter at 90% fill, to within one step
        assert 20 * n <= steps * rows * 4096 * 0.9 < 20 * n + rows * 4096 * 0.9
    batches = [p.config.data.batch_size for p in plans]
    assert batches == sorted(batches) and batches[0] < batches[-1]  # the paper's fit grows the batch with N and D
