"""`compile --stage rft` with LoRA on the policy (policy.lora): the PPO update compiles for a small
v5p slice with the adapters as the actor's state and the frozen base as an argument, and reports
an optimiser state of exactly the adapters' two AdamW moments, far smaller than full fine-tuning's;
the iteration's other phases compile with the merged policy as the engine's parameters."""

import json

import pytest

from polar_jax.__main__ import main
from polar_jax.models import lora as L
from tests.aot.test_rft_stage import POLICY, TOPOLOGY, needs_libtpu, rft_config  # noqa: F401 (a fixture)

RANK = 8
GROUP = ["--config.algorithm.estimator=group"]  # no critic: the actor's state alone
LORA = [f"--config.policy.lora.rank={RANK}", "--config.policy.lora.alpha=16"]


def _report(config_file, tmp_path, capsys, overrides, name) -> tuple[dict, str]:
    out = tmp_path / f"{name}.json"
    args = ["compile", "--config", config_file, "--topology", TOPOLOGY, "--stage", "rft", "--json", str(out)]
    assert main(args + overrides) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


@needs_libtpu
def test_lora_compiles_and_reports_the_smaller_optimiser_state(rft_config, tmp_path, capsys):  # noqa: F811
    full, _ = _report(rft_config, tmp_path, capsys, GROUP + ["--update-only"], "full")  # the update's figures
    lora, printed = _report(rft_config, tmp_path, capsys, GROUP + LORA, "lora")
    print(printed)
    adapters = L.num_adapter_params(POLICY, L.LoraConfig(rank=RANK))
    assert lora["fits"] and lora["num_params"] == adapters < POLICY.num_params() / 10
    # float32 AdamW moments, replicated on the data mesh: 2 x 4 bytes per trained parameter
    assert full["optimizer_bytes"] == pytest.approx(8 * POLICY.num_params(), abs=1024)
    assert lora["optimizer_bytes"] == pytest.approx(8 * adapters, abs=1024)
    assert lora["state_bytes"] == pytest.approx(12 * adapters, abs=1024)
    # the frozen base is an argument of the step and stands in for the reference policy: not resident again
    assert lora["resident_bytes"] == full["resident_bytes"] - 4 * POLICY.num_params()
    assert lora["argument_bytes"] < full["argument_bytes"]
    assert "actor LoRA adapters" in printed and f"rank {RANK}" in printed and "optimiser state" in printed
    # the rest of the iteration: the engine reads a merged copy, the adapters' state and the frozen base stay beside it
    phases = {p["name"]: p for p in lora["phases"]}
    assert list(phases) == ["rollout prefill", "rollout decode", "scoring", "experience", "update"]
    assert all(p["total_bytes"] > 0 for p in lora["phases"]) and lora["peak_phase"] in phases
    assert (
        "frozen base" in phases["rollout decode"]["resident"] and "actor state" in phases["rollout decode"]["resident"]
    )
    assert "merged policy" in phases["scoring"]["resident"] and "merged policy" in phases["experience"]["resident"]
