"""Running the main job and the flow the way the fault, outage and negative-control tests do, and reading what
the servers recorded of it (the registry, the latest flow run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import FlowRunSort

from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES, file_name
from tests.conftest import new_repo

REPO = Path(__file__).resolve().parents[1]
MODEL = "rlhf-policy"
TRAINING_TASKS = {"SFT", "collect comparisons", "reward model", "PPO", "evaluate", "gate", "register"}


def new_project(base: Path) -> Path:
    return new_repo(base / "project")


def main_command(root: Path, overrides=()) -> list[str]:
    args = [sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--root", str(root)]
    for item in overrides:
        args += ["--set", item]
    return args


def main_env(tmp_path: Path, prefect_api: str, env=None) -> dict[str, str]:
    """The environment of a main-job run against the session's Prefect server
    (the project's own MLflow store unless ``env`` names one)."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**base, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": prefect_api, **(env or {})}


def run_main(
    root: Path, tmp_path: Path, prefect_api: str, overrides=(), env=None, timeout=600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        main_command(root, overrides),
        cwd=REPO,
        env=main_env(tmp_path, prefect_api, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def seed_champion(uri: str) -> str:
    """The registry as a nightly run finds it: version 1 of the policy holds `champion`."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("seed") or client.get_experiment(client.create_experiment("seed"))
    run = client.create_run(experiment.experiment_id)
    client.log_text(run.info.run_id, "a previous champion", "policy/README.txt")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{MODEL}'"):
        client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/policy", run.info.run_id).version
    client.set_registered_model_alias(MODEL, "champion", version)
    return version


def registry_state(uri: str) -> tuple[list[str], str]:
    client = MlflowClient(uri)
    versions = sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'"))
    return versions, client.get_model_version_by_alias(MODEL, "champion").version


def flow_overrides(data_dir: Path) -> list[str]:
    files = {name: str(data_dir / file_name(name)) for name in (DEMONSTRATIONS, PREFERENCES, EVAL_PROMPTS)}
    return [
        "data.source=files",
        f"data.files={json.dumps(files)}",
        "validation.min_response_words=3",
        "validation.max_response_words=12",
        "validation.max_prompt_words=10",
        "validation.demonstrations_rows={min: 4, max: 1000}",
        "validation.preferences_rows={min: 4, max: 1000}",
        "validation.eval_prompts_rows={min: 2, max: 1000}",
        "evaluation.judge.kind=python",
        "evaluation.judge.entry_point=tests.judges:words_of_praise",
    ]


def latest_flow_run():
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    return flow_run, {t.name.split("-")[0] for t in tasks}, {a.key: a for a in found}


def stage_runs(client: MlflowClient, parent) -> dict[str, object]:
    """The stage runs nested under a pipeline run (its MLflow parent run), by run name."""
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=500
    )
    runs = {run.info.run_name: run for run in children}
    assert len(runs) == len(children), f"two stage runs share a name: {sorted(r.info.run_name for r in children)}"
    return runs
