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
SMALL = [
    "--config.budget.value=20",
    "--config.layers=(1, 2, 3, 4, 5)",
    "--config.family.aspect_ratio=16",
    "--config.family.head_dim=16",
    "--config.family.mlp_multiple=16",
    "--config.train.optim.lr=1e-3",
    "--config.evals_per_run=6",
    "--config.logs_per_run=40",
    "--config.train.data.seq_len=256",
]


def small_sweep(*overrides):
    return load_config(CPU, [*SMALL, *overrides])


class FakeTrain:
    """Writes metrics.jsonl as the trainer does: L(N, step) = 2 N^-0.1 (1 + 1/sqrt(step)), times
    `factor(num_layers, seed)` (default 1); 50 x seed more tokens a step than seed 0."""

    def __init__(self, fail=(), interrupt=(), factor=None):
        self.calls, self.fail, self.interrupt = [], set(fail), set(interrupt)
        self.factor = factor or (lambda layers, seed: 1.0)

    def __call__(self, config, workdir, progress):
        name = pathlib.Path(workdir).name
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"out of memory in {name}")
        if name in self.interrupt:
            return types.SimpleNamespace(stopped_by="signal")
        n = sweep.ModelConfig(**{k: config.model[k] for k in sweep.SIZE_FIELDS}, heads=("reward",)).num_params(
            include_embedding=False
        )
        with open(pathlib.Path(workdir) / "metrics.jsonl", "w") as f:
            for step in range(1, config.steps + 1):
                if step % config.log_every == 0 or step == config.steps:
                    # alternate around the mean: the sweep must average, not take one row
                    tokens = TOKENS_PER_STEP + 50.0 * config.seed + (100.0 if step // config.log_every % 2 else -100.0)
                    f.write(json.dumps({"step": step, "loss": 0.5, "tokens": tokens}) + "\n")
                if step % config.eval_every == 0 or step == config.steps:
                    loss = 2.0 * n**EXPONENT * (1 + step**-0.5) * self.factor(config.model.num_layers, config.seed)
                    f.write(json.dumps({"step": step, "eval_loss": loss, "eval_accuracy": 0.8}) + "\n")
        return types.SimpleNamespace(stopped_by="done")


def test_plan_applies_the_rule_budget_and_cadence(tmp_path):
    plans = sweep.plan(small_sweep(), tmp_path)
    assert [p.name for p in plans] == ["3.4K", "27K", "83K", "201K", "398K"]
    assert [(p.config.model.num_layers, p.config.model.d_model) for p in plans] == [
        (1, 16),
        (2, 32),
        (3, 48),
        (4, 64),
        (5, 80),
    ]
    for p in plans:
        c = p.config
        assert (c.steps, c.eval_every, c.log_every, c.checkpoint_every) == (20, 3, 1, 10)
        assert c.model.vocab_size == 128 and c.model.init == "scratch" and c.optim.lr == 1e-3
        assert p.workdir == tmp_path / "runs" / p.name


def test_default_seeds_keep_the_old_run_names_and_seed(tmp_path):
    family = load_config(ROOT / "configs/scaling/family.py", ["--config.train.model.vocab_size=32768"])
    for config in (small_sweep(), load_config(CPU), family):
        plans = sweep.plan(config, tmp_path, check=False)
        assert all(p.name == p.size and p.seed == 0 and p.config.seed == 0 for p in plans)
    assert [p.name for p in sweep.plan(load_config(CPU), tmp_path)] == ["3.4K", "27K", "83K", "201K", "398K"]


def test_seeds_give_one_run_per_size_and_seed(tmp_path):
    plans = sweep.plan(small_sweep("--config.layers=(2, 3)", "--config.seeds=(0, 1, 2)"), tmp_path)
    assert [(p.name, p.size, p.seed, p.config.seed) for p in plans] == [
        ("27K-s0", "27K", 0, 0),
        ("27K-s1", "27K", 1, 1),
        ("27K-s2", "27K", 2, 2),
        ("83K-s0", "83K", 0, 0),
        ("83K-s1", "83K", 1, 1),
        ("83K-s2", "83K", 2, 2),
    ]
    assert plans[4].workdir == tmp_path / "runs" / "83K-s1"
    # One other seed, alone, is named too: its results are not those of the default sweep.
    alone = sweep.plan(small_sweep("--config.layers=(2,)", "--config.seeds=(3,)"), tmp_path)
    assert [(p.name, p.config.seed) for p in alone] == [("27K-s3", 3)]
    for bad in ("()", "(1, 1)", "(-1,)"):
        with pytest.raises(sweep.SweepError, match="seeds="):
            sweep.plan(small_sweep(f"--config.seeds={bad}"), tmp_path)


# Per-seed loss factors that average to 1 over seeds 0, 1, 2 for every size, but tilt each
# seed's own losses differently with depth: no single seed is a power law, the mean is.
def _tilted(layers, seed):
    return {0: 1 - 0.04 * layers, 1: 1.0, 2: 1 + 0.04 * layers}[seed]


def test_the_fit_uses_each_sizes_mean_over_seeds(tmp_path):
    plans = sweep.plan(small_sweep("--config.seeds=(0, 1, 2)"), tmp_path)
    assert len(plans) == 15
    assert set(sweep.run_local(plans, FakeTrain(factor=_tilted), progress=False).values()) == {"finished"}
    rows, curves = sweep.collect(plans)
    fit = sweep.analyse(rows, curves)
    sweep.write_results(tmp_path, rows, curves, fit)

    # Every run is in scaling.csv, with its size and seed.
    table = list(csv.DictReader((tmp_path / "scaling.csv").open()))
    assert [(r["name"], r["size"], r["seed"]) for r in table[:3]] == [
        ("3.4K-s0", "3.4K", "0"),
        ("3.4K-s1", "3.4K", "1"),
        ("3.4K-s2", "3.4K", "2"),
    ]
    assert len(table) == 15 and {r["status"] for r in table} == {"finished"}

    saved = json.loads((tmp_path / "fit.json").read_text())
    law = saved["loss_vs_params"]
    assert law["n"] == 5 and law["b"] == pytest.approx(EXPONENT, abs=1e-9) and law["r2"] == pytest.approx(1.0, abs=1e-9)
    one_seed = sweep.fitting.fit_power_law(
        [float(r["params_non_embedding"]) for r in table if r["seed"] == "2"],
        [float(r["eval_loss"]) for r in table if r["seed"] == "2"],
    )
    assert one_seed.b > EXPONENT + 0.01  # a seed alone gives another exponent: the mean is what is fitted

    big = saved["sizes"][3]
    n, final = 201_344, 2.0 * 201_344**EXPONENT * (1 + 20**-0.5)
    assert (big["size"], big["params"], big["seeds"], big["runs"]) == (
        "201K",
        n,
        [0, 1, 2],
        ["201K-s0", "201K-s1", "201K-s2"],
    )
    np.testing.assert_allclose(big["eval_losses"], [final * 0.84, final, final * 1.16], rtol=1e-6)
    assert big["eval_loss"] == pytest.approx(final, rel=1e-6)
    assert big["eval_loss_std"] == pytest.approx(final * 0.16, rel=1e-6)
    # Mean compute: the seeds saw 3000, 3050 and 3100 tokens a step.
    fpt = train_flops_per_token(plans[9].model_cfg, 256)
    assert big["compute_pfs_days"] == pytest.approx(fpt * 3050.0 * 20 / 8.64e19)
    assert saved["loss_vs_compute"]["n"] == 5
    # The frontier runs over the sizes' mean curves.
    assert [p["step"] for p in big["curve"]] == [3, 6, 9, 12, 15, 18, 20]
    assert big["curve"][1]["eval_loss"] == pytest.approx(2.0 * n**EXPONENT * (1 + 6**-0.5), rel=1e-6)
    assert {p["size"] for p in saved["frontier"]["points"]} <= {m["size"] for m in saved["sizes"]}
    assert "201K  3" not in sweep.summary(rows, fit) and " 201K     3 " in sweep.summary(rows, fit)

    # A failed seed: its size's mean is over the other two.
    (tmp_path / "runs" / "3.4K-s2" / "metrics.jsonl").unlink()
    rows, curves = sweep.collect(plans)
    small = sweep.analyse(rows, curves)["sizes"][0]
    assert small["seeds"] == [0, 1] and small["eval_loss"] == pytest.approx(
        2.0 * 3392**EXPONENT * (1 + 20**-0.5) * (0.96 + 1.0) / 2, rel=1e-6
    )


def test_mean_curve_averages_the_steps_every_seed_evaluated():
    a = [{"step": s, "eval_loss": 1.0 * s, "compute_pfs_days": 2.0 * s, "params": 5} for s in (1, 2, 3)]
    b = [{"step": s, "eval_loss": 3.0 * s, "compute_pfs_days": 4.0 * s, "params": 5} for s in (2, 3, 4)]
    assert sweep.mean_curve([a, b]) == [
        {
            "step": 2,
            "eval_loss": 4.0,
            "eval_accuracy": None,
            "compute_flops": None,
            "compute_pfs_days": 6.0,
            "params": 5.0,
        },
        {
            "step": 3,
            "eval_loss": 6.0,
            "eval_accuracy": None,
            "compute_flops": None,
            "compute_pfs_days": 9.0,
            "params": 5.0,
        },
    ]


def _fake_prepared(root: pathlib.Path) -> pathlib.Path:
    for split in ("train", "heldout_prompts", "heldout_policies"):
        (root / split).mkdir(parents=True)
        (root / split / "encoding.json").write_text(json.dumps({"vocab_size": 2000}))
    return root


def test_eval_split_picks_the_validation_directories(tmp_path):
    root = _fake_prepared(tmp_path / "prepared")
    demo = ROOT / "configs/scaling/cpu_demo.py"
    for split, expected in (
        ("heldout_prompts", [root / "heldout_prompts"]),
        ("heldout_policies", [root / "heldout_policies"]),
        ("heldout_prompts, heldout_policies", [root / "heldout_prompts", root / "heldout_policies"]),
    ):
        plans = sweep.plan(
            load_config(demo, [f"--config.data_dir={root}", f"--config.eval_split={split}"]), tmp_path / "w"
        )
        data = plans[0].config.data
        assert data.train == str(root / "train") and data.eval == ",".join(map(str, expected))
        assert plans[0].config.model.vocab_size == 2048
    # The base default stays the held-out prompts.
    plans = sweep.plan(small_sweep(f"--config.data_dir={root}"), tmp_path / "w2")
    assert plans[0].config.data.eval == str(root / "heldout_prompts")
    with pytest.raises(sweep.SweepError, match="heldout_typo"):
        sweep.plan(load_config(demo, [f"--config.data_dir={root}", "--config.eval_split=heldout_typo"]), tmp_path / "w")


def test_results_with_seeds_are_valid_pngs(tmp_path):
    plans = sweep.plan(small_sweep("--config.layers=(1, 2, 3)", "--config.seeds=(0, 1)"), tmp_path)
    sweep.run_local(plans, FakeTrain(fail={"27K-s1"}, factor=lambda layers, seed: 1 + 0.1 * seed), progress=False)
    rows, curves = sweep.collect(plans)
    fit = sweep.analyse(rows, curves)
    assert [len(m["runs"]) for m in fit["sizes"]] == [2, 1, 2]
    pngs = [p for p in sweep.write_results(tmp_path, rows, curves, fit) if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {"loss_vs_params.png", "loss_vs_compute.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_takes_a_size_name_for_all_its_seeds(tmp_path, monkeypatch, capsys):
    from polar_jax.train import trainer

    train = FakeTrain()
    monkeypatch.setattr(trainer, "train", train)
    rc = main(
        [
            "scaling",
            "--config",
            str(CPU),
            "--workdir",
            str(tmp_path),
            "--only",
            "27K,83K-s0",
            "--no-progress",
            *SMALL,
            "--config.seeds=(0, 1)",
        ]
    )
    assert rc == 1 and train.calls == ["27K-s0", "27K-s1", "83K-s0"]  # the rest pending
    assert main(["scaling", "--config", str(CPU), "--workdir", str(tmp_path), "--only", "9K", *SMALL]) == 2


def test_token_budget_and_paper_batch_rule_set_steps_and_rows(tmp_path):
    config = small_sweep(
        "--config.budget.kind=tokens_per_param",
        "--config.budget.value=10",
        "--config.batch.rule=paper",
        "--config.batch.pairs_per_row=2",
        "--config.batch.multiple=8",
    )
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
        "3.4K": "finished",
        "27K": "finished",
        "83K": "failed",
        "201K": "finished",
        "398K": "finished",
    }
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
        2.0 * 201_344**EXPONENT * (1 + 20**-0.5)
    )
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
    rc = main(
        [
            "scaling",
            "--config",
            str(CPU),
            "--workdir",
            str(tmp_path),
            "--launch",
            "pod",
            "--tpu",
            "v5p-64",
            "--zone",
            "us-east5-a",
            *SMALL,
        ]
    )
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
    config = small_sweep(
        "--config.layers=(1, 2)",
        "--config.budget.value=4",
        "--config.evals_per_run=2",
        "--config.family.aspect_ratio=16",
        "--config.family.head_dim=8",
        "--config.train.data.batch_size=8",
        "--config.train.eval_batches=1",
        "--config.train.data.synthetic_eval_examples=16",
    )
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
