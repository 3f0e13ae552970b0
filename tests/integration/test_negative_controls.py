"""Negative controls the gate must refuse, each run through the whole flow against real Prefect and MLflow servers.

Beside the shuffled-label reward model of tests/pipeline_runs.py (refused by the reward model accuracy floor):
  - PPO with kl_coef 0, run long enough to hack the reward model: selection ships its early snapshot by labels, and
    "no over-optimisation" refuses the run (issue 35's kl-free run);
  - a reward ensemble whose members disagree: refused by "reward ensemble members agree";
  - an evaluation set that shares its prompts with training: refused before any training by the data contract
    ("no eval prompt among the training prompts"); the gate's own "held-out prompts unseen in training" rule
    counts the same overlap on what the stages trained on, in case data reach it some other way.
Each control is one of the session's `tiny` pipeline runs (tests/pipeline_runs.py), made at once with the others on
one project root, so the stages it shares with them (SFT, comparisons, baselines) are computed once and only what the
control changes is trained. Every rule but
the one under test is opened as wide as the config allows, so the refusal is that rule's alone (the kl-free run may
also fail its KL budget).
"""

import re
import subprocess

import pytest
from mlflow import MlflowClient

from tests.flow_helpers import stage_runs
from tests.pipeline_runs import PROMOTED, parent_run_id

pytestmark = pytest.mark.integration

MODEL = "rlhf-policy"


def decision_of(done: subprocess.CompletedProcess) -> dict[str, bool]:
    """Each rule's verdict as the run printed it: {"[mode] rule" or "rule": passed}."""
    rules = {}
    for line in done.stdout.split("decision: ")[1].splitlines()[1:]:
        line = line.strip()
        if not line.startswith(("PASS ", "FAIL ")):
            break
        rules[line[5:].split(":")[0]] = line.startswith("PASS")
    return rules


@pytest.fixture(scope="module")
def controls(pipeline_runs):
    """The controls' runs, the versions the promoted runs registered (champion must be one of them), the client."""
    client = MlflowClient(pipeline_runs.mlflow_uri)
    promoted = {
        version.version
        for version in client.search_model_versions(f"name='{MODEL}'")
        if version.run_id in {parent_run_id(pipeline_runs.done[name]) for name in PROMOTED}
    }
    return pipeline_runs.done, promoted, client


def test_ppo_without_a_kl_penalty_ships_its_early_snapshot_by_labels_and_is_refused_as_over_optimised(controls):
    """Issue 35's kl-free run: gold peaks within the first few iterations and falls while the RM climbs. Selection's
    first log-spaced candidate is early, and the labels ship it; the over-optimisation rule reads the whole run and
    refuses it (a greedy snapshot can also be over the KL budget of 10: that rule may fail too, nothing else may)."""
    done, promoted, client = controls
    out = done["hacked"].stdout
    assert "decision: reject" in out
    rules = decision_of(done["hacked"])
    assert {rule for rule, passed in rules.items() if not passed} <= {
        "no over-optimisation",
        "[sample] KL within budget",
        "[greedy] KL within budget",
    }, out[-4000:]
    assert not rules["no over-optimisation"], out[-4000:]
    reason = next(line for line in out.splitlines() if "no over-optimisation:" in line)
    assert "the run went on past the peak while the RM rose" in reason
    ppo = stage_runs(client, client.get_run(parent_run_id(done["hacked"])))["ppo"]
    candidates = {k: v for k, v in ppo.data.metrics.items() if k.startswith("selection.win_rate.iteration_")}
    assert sorted(candidates) == ["selection.win_rate.iteration_39", "selection.win_rate.iteration_5"]
    assert ppo.data.metrics["selection.chosen_iteration"] == 5  # the early one: the labels' pick, and gold's
    assert candidates["selection.win_rate.iteration_5"] == max(candidates.values())
    assert client.get_model_version_by_alias(MODEL, "champion").version in promoted  # never promoted


def test_a_reward_ensemble_whose_members_disagree_is_refused(controls):
    done, promoted, client = controls
    assert "decision: reject" in done["disagreeing"].stdout
    rules = decision_of(done["disagreeing"])
    assert {rule for rule, passed in rules.items() if not passed} == {"reward ensemble members agree"}, rules
    assert client.get_model_version_by_alias(MODEL, "champion").version in promoted


def test_an_evaluation_set_that_shares_prompts_with_training_is_refused_before_training(
    in_process_flow, mlflow_server, tmp_path
):
    """Every held-out prompt is also a demonstration prompt: the data contract refuses the run before any stage
    trains, naming the file and the rule; nothing reaches the registry."""
    from components.adapters.data_stages import DataValidationFailed
    from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, file_name, read_jsonl
    from components.io import write_jsonl
    from tests.conftest import new_repo
    from tests.data_files import write_good_dir
    from tests.flow_helpers import (
        TRAINING_TASKS,
        flow_overrides,
        latest_flow_run,
        registry_state,
        seed_champion,
    )

    seed_champion(mlflow_server)
    before = registry_state(mlflow_server)
    data_dir = write_good_dir(tmp_path / "data")
    trained_on = sorted(
        {row.data["prompt"] for row in read_jsonl(data_dir / file_name(DEMONSTRATIONS), DEMONSTRATIONS)}
    )
    write_jsonl(data_dir / file_name(EVAL_PROMPTS), [{"prompt": p} for p in trained_on[:4]])
    root = new_repo(tmp_path / "project")
    with pytest.raises(DataValidationFailed) as refused:
        in_process_flow(root, flow_overrides(data_dir))
    assert file_name(DEMONSTRATIONS) in str(refused.value) and "no eval prompt among the training prompts" in str(
        refused.value
    )
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and not tasks & TRAINING_TASKS
    assert registry_state(mlflow_server) == before


def test_the_prefect_run_list_tells_rejected_runs_from_promoted_ones(pipeline_runs):
    """Each run's flow run ends Completed, named by the gate: "Promoted" or "Rejected", the rules that failed in its
    message (before, every run read "Completed" in the run list)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: pipeline_runs.prefect_api}), get_client(sync_client=True) as client:
        for name, done in pipeline_runs.done.items():
            flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]+)", done.stdout).group(1)
            state = client.read_flow_run(flow_run_id).state
            assert state.is_completed(), (name, state)
            if name in PROMOTED:
                assert (state.name, state.message) == ("Promoted", "gate: promote"), (name, state)
            else:
                failed = [rule for rule, passed in decision_of(done).items() if not passed]
                assert state.name == "Rejected" and state.message.startswith("gate: reject ("), (name, state)
                assert all(rule.split("] ")[-1] in state.message for rule in failed), (name, state.message, failed)
