"""People as the judge, on the session's Prefect and MLflow servers: the flow run exports blinded pairs and pauses;
a labeller (here a thread, answering through Prefect's API as the UI's Resume form does) gives it a labels file, or
Argilla's export of the run's records, labelled there; the win rates, the gate and the registry follow from the
labels. A labels file for other pairs, and a round nobody answers in time, end the run naming the file or the pairs,
with nothing registered and the champion unchanged.

The runs share the session's smoke project root, so they reuse the stages an earlier smoke run there trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.evaluation.intervals import wilson
from components.evaluation.pairwise import pair_id
from flows.labelling.human_judging import HUMAN_DIR, KEY, PAGE, PAIRS, HumanJudgeError
from tests.flow_helpers import latest_flow_run, stage_runs
from tests.human_rounds import Labeller, argilla_export, human_round, newest_round, ppo_wins

pytestmark = pytest.mark.integration

REGISTERED = "human-judged-policy"
PER_BASELINE = 3
HUMAN = human_round(REGISTERED, PER_BASELINE)


@pytest.fixture
def root(smoke_root) -> Path:
    return smoke_root


def registered(uri: str) -> list[str]:
    return sorted(v.version for v in MlflowClient(uri).search_model_versions(f"name='{REGISTERED}'"))


def another_rounds(keys: list[dict]) -> list[dict]:
    """As many answers, to the pairs of responses this run did not produce."""
    return [
        {"pair_id": pair_id("another-round", k["mode"], k["baseline"], n), "choice": "A"} for n, k in enumerate(keys)
    ]


def test_people_label_the_paused_run_through_prefect_and_their_labels_decide(
    in_process_flow, prefect_server, mlflow_server, root, tmp_path
):
    # the people label in Argilla (the run's own records file, imported), two of them per pair, and the run is resumed
    # with Argilla's export
    labeller = Labeller(prefect_server[0], root, ppo_wins, tmp_path / "argilla-export.json", argilla_export)
    labeller.start()
    in_process_flow(root, HUMAN)
    labeller.join(timeout=60)
    assert labeller.error is None, labeller.error

    flow_run, tasks, artifacts = latest_flow_run()
    assert flow_run.id == labeller.paused_run.id and flow_run.state.is_completed(), flow_run.state
    assert "human labels" in tasks
    assert (newest_round(root) / "labels-from-argilla.jsonl").is_file()
    directory = newest_round(root)
    shown = [json.loads(line) for line in (directory / PAIRS).read_text().splitlines()]
    assert all(set(row) == {"pair_id", "prompt", "A", "B"} for row in shown), "blinded: no policy named"
    assert (directory / PAGE).is_file() and "human-judge" in artifacts
    # PPO won every pair: a win rate of 1 against each of the 6 other policies, Wilson's interval for 3 of 3
    gate = artifacts["gate"].data
    assert "decision: promote" in gate and "human judges win rate vs sft 1.000" in gate, gate
    assert "not measured: PPO's iterations were not scored by the human judges" in gate, gate
    client = MlflowClient(mlflow_server)
    [version] = registered(mlflow_server)
    run = client.get_run(client.get_model_version(REGISTERED, version).run_id)
    judged = stage_runs(client, run)["human-judge"]
    lo, hi = wilson(PER_BASELINE, PER_BASELINE).lo, wilson(PER_BASELINE, PER_BASELINE).hi
    assert judged.data.metrics["sample.ppo_win_rate.dpo.value"] == 1.0
    assert judged.data.metrics["sample.ppo_win_rate.dpo.ci_lo"] == pytest.approx(lo)
    assert judged.data.metrics["sample.ppo_win_rate.dpo.ci_hi"] == pytest.approx(hi)
    assert judged.data.metrics["pairs"] == len(shown) == PER_BASELINE * 6
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == version


@pytest.mark.faults
def test_a_labels_file_for_other_pairs_is_refused_naming_it_and_nothing_is_registered(
    in_process_flow, prefect_server, mlflow_server, root, tmp_path
):
    before = registered(mlflow_server)
    champion = MlflowClient(mlflow_server).get_model_version_by_alias(REGISTERED, "champion").version
    labels = tmp_path / "someone-elses-labels.jsonl"
    labeller = Labeller(prefect_server[0], root, another_rounds, labels)
    labeller.start()
    with pytest.raises(HumanJudgeError) as refused:
        in_process_flow(root, HUMAN)
    labeller.join(timeout=60)
    assert labeller.error is None, labeller.error
    message = str(refused.value)
    assert f"{labels}: every pair_id is one of this run's pairs" in message, message
    assert "nothing was registered" in message
    flow_run, _, _ = latest_flow_run()
    assert flow_run.state.is_failed(), flow_run.state
    assert registered(mlflow_server) == before
    assert MlflowClient(mlflow_server).get_model_version_by_alias(REGISTERED, "champion").version == champion


@pytest.mark.faults
def test_a_round_nobody_answers_in_time_ends_the_run_and_nothing_is_registered(in_process_flow, mlflow_server, root):
    before = registered(mlflow_server)
    with pytest.raises(HumanJudgeError, match=r"nobody answered the pairs in .*pairs\.jsonl within .*timeout_seconds"):
        in_process_flow(root, [*HUMAN, "evaluation.judge.timeout_seconds=2"])
    flow_run, _, _ = latest_flow_run()
    assert flow_run.state.is_failed(), flow_run.state
    assert registered(mlflow_server) == before
    # the same trained policies, the same pairs: labels made after a timeout fit a rerun
    keys = sorted((root / "artifacts" / "runs").glob(f"*/{HUMAN_DIR}/{KEY}"), key=lambda p: p.stat().st_mtime)
    assert sorted(keys[-1].read_text().splitlines()) == sorted(keys[-2].read_text().splitlines())
