"""Labelling rounds through the real flow on the session's Prefect and MLflow servers: each round a subflow, each
round's comparisons, reward model, PPO and iterative DPO an MLflow run tagged by round; the single round's label
budget shared out; round 2's PPO continuing round 1's policy and its RM trained on both rounds' labels.

The run shares the session's smoke project root (SFT is reused) and registers a model of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort

from flows.labelling.human_judging import KEY
from flows.labelling.human_labelling import HumanLabellingError
from tests.flow_helpers import stage_runs
from tests.human_rounds import N_PROMPTS, PEOPLE, REGISTERED, ROUNDS, RoundLabeller, longer_side

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rounds_run(in_process_flow, mlflow_server, smoke_root):
    """(the pipeline's Prefect flow run, its subflow runs by name with their task names, its MLflow stage runs by
    name, its run record)."""
    in_process_flow(smoke_root, ROUNDS)
    with get_client(sync_client=True) as client:
        [pipeline] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["rlhf-pipeline"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline.id]))
        )
        subflows = {
            run.name: (
                run,
                sorted(
                    t.name
                    for t in client.read_task_runs(
                        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id]))
                    )
                ),
            )
            for run in children
        }
    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name='{REGISTERED}'")
    parent = client.get_run(version.run_id)
    record = json.loads((Path(parent.data.tags["run_dir"]) / "run.json").read_text(encoding="utf-8"))
    return pipeline, subflows, stage_runs(client, parent), record


def test_each_round_is_a_subflow_of_the_pipelines_run(rounds_run):
    pipeline, subflows, _, _ = rounds_run
    assert pipeline.state.is_completed(), pipeline.state
    assert sorted(subflows) == ["round 1", "round 2"]
    for name, (run, _) in subflows.items():
        assert run.state.is_completed(), (name, run.state)
    assert "iterative DPO round 1" in subflows["round 1"][1]
    # round 1 labels SFT samples once for both tracks; round 2 labels each track's own policy
    assert sum(t.startswith("collect comparisons") for t in subflows["round 1"][1]) == 1
    assert sum(t.startswith("collect comparisons") for t in subflows["round 2"][1]) == 2
    assert {"reward model", "PPO"} <= {t.rsplit("-", 1)[0] for t in subflows["round 2"][1]}


def test_each_rounds_stages_are_mlflow_runs_tagged_by_round(rounds_run):
    _, _, stages, _ = rounds_run
    for r in (1, 2):
        for stage in ("comparisons", "reward_model", "ppo", "baseline_dpo"):
            run = stages[f"round {r} {stage}"]
            assert run.data.tags["round"] == str(r) and run.data.tags["stage"] == stage
            assert run.info.status == "FINISHED"
    assert "round 2 comparisons_dpo" in stages and "round 1 comparisons_dpo" not in stages
    # the baselines that are not iterative train once, on every label of PPO's rounds
    assert {"baseline_chosen", "baseline_top_ranked", "baseline_combined"} <= set(stages)
    assert not any(name.startswith("round") and "chosen" in name for name in stages)


def test_the_rounds_share_the_single_rounds_label_budget_and_ppos_iterations(rounds_run):
    _, _, stages, _ = rounds_run
    prompts = [stages[f"round {r} comparisons"].data.metrics["prompts"] for r in (1, 2)]
    assert prompts == [N_PROMPTS / 2, N_PROMPTS / 2]
    assert stages["round 2 comparisons_dpo"].data.metrics["prompts"] == N_PROMPTS / 2
    # restarting from SFT (the default), round 2's PPO trains both rounds' shares
    assert [stages[f"round {r} ppo"].data.params["iterations"] for r in (1, 2)] == ["2", "4"]


def first_kl(client: MlflowClient, stages: dict, r: int) -> float:
    """The KL from SFT of round r's PPO's first rollouts: exactly 0 only where the policy starts at SFT (a sampled
    estimate, so of either sign otherwise)."""
    return client.get_metric_history(stages[f"round {r} ppo"].info.run_id, "kl")[0].value


def test_round_two_restarts_from_sft_and_its_rm_learns_from_both_rounds_labels(rounds_run, mlflow_server):
    _, _, stages, _ = rounds_run
    client = MlflowClient(mlflow_server)
    assert first_kl(client, stages, 1) == pytest.approx(0.0, abs=1e-6), "round 1 starts at SFT, its KL reference"
    assert first_kl(client, stages, 2) == pytest.approx(0.0, abs=1e-6), "round 2 restarts from SFT"
    rows = {}
    for r in (1, 2):
        path = client.download_artifacts(stages[f"round {r} comparisons"].info.run_id, "comparisons/preferences.jsonl")
        with open(path, encoding="utf-8") as lines:
            rows[r] = [json.loads(line) for line in lines]
    assert {row["round"] for row in rows[1]} == {1} and {row["round"] for row in rows[2]} == {2}
    assert min(row["group"] for row in rows[2]) > max(row["group"] for row in rows[1])
    trained_on = stages["round 2 reward_model"].data.metrics["train_pairs"]
    held_out = stages["round 2 reward_model"].data.metrics["valid_pairs"]
    assert trained_on + held_out == len(rows[1]) + len(rows[2])


def test_the_run_record_names_every_rounds_stage_outputs(rounds_run):
    _, _, _, record = rounds_run
    assert record["status"] == "completed" and len(record["labelling_rounds"]) == 2
    for made in record["labelling_rounds"]:
        assert {"comparisons", "comparisons_dpo", "reward_model", "ppo", "dpo"} == set(made)
        assert all(Path(stage["directory"]).is_dir() for stage in made.values())
    assert record["stages"]["ppo"]["key"] == record["labelling_rounds"][1]["ppo"]["key"]
    assert record["labelling_rounds"][0]["comparisons"] == record["labelling_rounds"][0]["comparisons_dpo"]


def test_people_label_each_round_while_its_subflow_waits_and_their_labels_train_it(
    in_process_flow, prefect_server, mlflow_server, smoke_root, tmp_path
):
    labeller = RoundLabeller(prefect_server[0], smoke_root, longer_side, tmp_path, rounds=2)
    labeller.start()
    in_process_flow(smoke_root, PEOPLE)
    labeller.join(timeout=60)
    assert labeller.error is None, labeller.error
    assert [run.name for run, _ in labeller.answered] == ["round 1", "round 2"], "each round's subflow paused"
    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions("name='people-rounds-policy'")
    parent = client.get_run(version.run_id)
    stages = stage_runs(client, parent)
    for r, (_, labels) in enumerate(labeller.answered, start=1):
        answers = [json.loads(line) for line in labels.read_text().splitlines()]
        keys = {
            json.loads(line)["pair_id"]: json.loads(line)
            for line in (Path(parent.data.tags["run_dir"]) / f"labelling-round-{r}" / KEY).read_text().splitlines()
        }
        # every answer that is not a tie is one preference row of its track, the chosen side the longer response
        decided = [a for a in answers if a["choice"] != "tie"]
        tracks = {"ppo": "comparisons", "dpo": "comparisons_dpo"} if r == 2 else {"ppo": "comparisons"}
        for track, stage in tracks.items():
            path = client.download_artifacts(stages[f"round {r} {stage}"].info.run_id, "comparisons/preferences.jsonl")
            rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
            expected = [a for a in decided if keys[a["pair_id"]]["track"] == track]
            assert len(rows) == len(expected) > 0, (r, track)
            assert {row["source"] for row in rows} == {"human"}
            assert all(len(row["chosen"].split()) > len(row["rejected"].split()) for row in rows)
    assert {"round 1 reward_model", "round 2 ppo", "round 2 baseline_dpo"} <= set(stages)
    # continuing, round 2's PPO starts at round 1's policy and trains its own share of the iterations
    assert abs(first_kl(client, stages, 2)) > 1e-6 and first_kl(client, stages, 1) == pytest.approx(0.0, abs=1e-6)
    assert [stages[f"round {r} ppo"].data.params["iterations"] for r in (1, 2)] == ["2", "2"]


def someone_elses(keys: list[dict]) -> list[dict]:
    return [{"pair_id": f"not-{key['pair_id']}", "choice": "A"} for key in keys]


@pytest.mark.faults
def test_labels_for_other_pairs_stop_the_round_naming_the_file_and_nothing_trains_on_them(
    in_process_flow, prefect_server, mlflow_server, smoke_root, tmp_path
):
    labeller = RoundLabeller(prefect_server[0], smoke_root, someone_elses, tmp_path, rounds=1)
    labeller.start()
    overrides = [*PEOPLE[:-1], "tracking.registered_model=refused-rounds-policy"]
    with pytest.raises(HumanLabellingError) as refused:
        in_process_flow(smoke_root, overrides)
    labeller.join(timeout=60)
    assert labeller.error is None, labeller.error
    message = str(refused.value)
    assert f"{tmp_path / 'round-1.jsonl'}: every pair_id is one of this run's pairs" in message, message
    assert "nothing was trained on it" in message
    assert not MlflowClient(mlflow_server).search_model_versions("name='refused-rounds-policy'")
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("rlhf-pipeline").experiment_id
    [parent] = client.search_runs([experiment], "params.`tracking.registered_model` = 'refused-rounds-policy'")
    assert parent.info.status == "FAILED"
    stages = stage_runs(client, parent).values()
    assert not [run for run in stages if run.data.tags.get("round")], "no stage of the round ran"
