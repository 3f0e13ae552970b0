"""Judges that cannot judge, through the whole flow (smoke profile, in process, the session's Prefect and MLflow
servers): each run ends with an error naming the judge (its entry point or its directory), nothing is registered and
the champion is unchanged. A judge model that is not safe to load is refused before any training; a Python judge
that fails is caught where it is first called (watching PPO, or at evaluation).

The runs share the session's smoke project root, so the stages before the judge's first call are trained once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.evaluation.judges import JudgeError
from components.models.builders import UnsafeModelError
from tests.flow_helpers import TRAINING_TASKS, latest_flow_run, registry_state, seed_champion

pytestmark = pytest.mark.faults


@pytest.fixture
def root(smoke_root) -> Path:
    return smoke_root


@pytest.fixture(scope="module")
def registry(mlflow_server):
    seed_champion(mlflow_server)
    return lambda: registry_state(mlflow_server)


def python_judge(function: str, monitor_ppo: bool = True) -> list[str]:
    return [
        "evaluation.judge.kind=python",
        f"evaluation.judge.entry_point=tests.judges:{function}",
        f"evaluation.judge.monitor_ppo={str(monitor_ppo).lower()}",
    ]


def judge_model(directory: Path) -> list[str]:
    return ["evaluation.judge.kind=reward_model", f"evaluation.judge.model_dir={directory}"]


def test_a_python_judge_that_raises_while_watching_ppo_fails_the_run_naming_it(in_process_flow, root, registry):
    before = registry()
    with pytest.raises(JudgeError, match=r"judge tests\.judges:broken raised ConnectionError: the scoring service"):
        in_process_flow(root, python_judge("broken"))
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and "PPO" in tasks and "register" not in tasks
    assert registry() == before


def test_a_python_judge_returning_nan_at_evaluation_fails_the_run_naming_it_and_the_row(
    in_process_flow, root, registry
):
    before = registry()
    with pytest.raises(JudgeError, match=r"judge tests\.judges:not_a_number returned nan for row 1 \(prompt '"):
        in_process_flow(root, python_judge("not_a_number", monitor_ppo=False))
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and "evaluate" in tasks and "gate" not in tasks
    assert registry() == before


def test_a_python_judge_that_never_returns_fails_the_run_at_its_deadline(in_process_flow, root, registry):
    """At evaluation, a judge call that hangs is given up after timeouts.judge_call_seconds (before, the run waited
    forever)."""
    before = registry()
    deadline = r"judge tests\.judges:hangs did not return within 3 s \(timeouts\.judge_call_seconds\)"
    with pytest.raises(JudgeError, match=deadline):
        in_process_flow(root, [*python_judge("hangs", monitor_ppo=False), "timeouts.judge_call_seconds=3"])
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and "evaluate" in tasks and "gate" not in tasks
    assert registry() == before


def test_a_hung_ppo_step_fails_the_run_at_its_progress_deadline(in_process_flow, root, registry):
    """PPO in the flow's own process stops reporting iterations (its step hangs, here in the judge watching it, whose
    own deadline is far off): it is stopped after timeouts.progress_seconds, and the run fails naming it."""
    from flows.execution.deadlines import StageTimeout

    before = registry()
    overrides = [*python_judge("hangs"), "timeouts.judge_call_seconds=100000", "timeouts.progress_seconds=5"]
    with pytest.raises(StageTimeout, match=r"ppo: no progress for 5 s \(timeouts\.progress_seconds\); stopped"):
        in_process_flow(root, overrides)
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and "PPO" in tasks and "register" not in tasks
    assert registry() == before


@pytest.mark.parametrize("defect", ["remote code", "pickle weights"])
def test_an_unsafe_judge_model_directory_is_refused_before_any_training(
    in_process_flow, root, registry, tmp_path, defect
):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    judge_dir = tmp_path / "judge"
    model = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=8, n_head=2, num_labels=1))
    model.save_pretrained(judge_dir)
    if defect == "pickle weights":  # transformers 5 always writes safetensors: a pickle-only directory by hand
        import torch

        (judge_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), judge_dir / "pytorch_model.bin")
    else:
        config = json.loads((judge_dir / "config.json").read_text())
        config["auto_map"] = {"AutoModelForSequenceClassification": "judge_code.Judge"}
        (judge_dir / "config.json").write_text(json.dumps(config))
    before = registry()
    with pytest.raises((JudgeError, UnsafeModelError)) as refused:
        in_process_flow(root, judge_model(judge_dir))
    assert str(judge_dir) in str(refused.value), refused.value
    _, tasks, _ = latest_flow_run()
    assert not tasks & TRAINING_TASKS, tasks
    assert registry() == before
