"""Negative controls the gate must refuse, each run through the whole flow against real Prefect and MLflow servers.

Beside the shuffled-label reward model of tests/pipeline_runs.py (refused by the reward model accuracy floor):
  - PPO with kl_coef 0, run long enough to hack the reward model: refused by "KL within budget";
  - a reward ensemble whose members disagree: refused by "reward ensemble members agree";
  - an evaluation set that shares its prompts with training: refused before any training by the data contract
    ("no eval prompt among the training prompts"); the gate's own "held-out prompts unseen in training" rule
    counts the same overlap on what the stages trained on, in case data reach it some other way.
Each control runs the `tiny` profile on the project root of the session's pipeline runs, so the stages it shares
with them (SFT, comparisons, baselines) are reused and only what the control changes is trained. Every rule but
the one under test is opened as wide as the config allows, so the refusal is that rule's alone.
"""

import subprocess

import pytest
from mlflow import MlflowClient

from tests.pipeline_runs import LOOSE_GATE, at_once

pytestmark = pytest.mark.integration

MODEL = "rlhf-policy"
WIDE_OPEN = [*LOOSE_GATE, "gate.min_rm_accuracy=0.0"]
# no KL penalty, a learning rate 5x the tiny profile's and 10x its iterations: the policy runs away from SFT to
# whatever the reward model over-rates; one snapshot, so the policy that ran away is the one the gate sees
HACKED = ["ppo.kl.kl_coef=0.0", "ppo.lr=1.0e-3", "ppo.iterations=40", "selection.candidates=1", "gate.max_kl=20"]
# three members from independent heads, barely trained: their orderings are close to independent coin flips
DISAGREEING = ["reward.ensemble_size=3", "reward.epochs=0.02", "gate.min_rm_member_agreement=0.7"]


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
    client = MlflowClient(pipeline_runs.mlflow_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    # side by side, a core each: they share the finished stages and train only what they change
    done = at_once(pipeline_runs, hacked=[*WIDE_OPEN, *HACKED], disagreeing=[*WIDE_OPEN, *DISAGREEING])
    return done, champion, client


def test_ppo_without_a_kl_penalty_hacks_the_reward_model_and_is_refused_by_the_kl_budget(controls):
    done, champion, client = controls
    assert "decision: reject" in done["hacked"].stdout
    rules = decision_of(done["hacked"])
    assert {rule for rule, passed in rules.items() if not passed} <= {
        "[sample] KL within budget",
        "[greedy] KL within budget",
    }
    assert not rules["[sample] KL within budget"], done["hacked"].stdout[-4000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion  # never promoted


def test_a_reward_ensemble_whose_members_disagree_is_refused(controls):
    done, champion, client = controls
    assert "decision: reject" in done["disagreeing"].stdout
    rules = decision_of(done["disagreeing"])
    assert {rule for rule, passed in rules.items() if not passed} == {"reward ensemble members agree"}, rules
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion


def test_an_evaluation_set_that_shares_prompts_with_training_is_refused_before_training(
    in_process_flow, mlflow_server, tmp_path
):
    """Every held-out prompt is also a demonstration prompt: the data contract refuses the run before any stage
    trains, naming the file and the rule; nothing reaches the registry."""
    from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, file_name, read_jsonl
    from components.io import write_jsonl
    from flows.data_stages import DataValidationFailed
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
