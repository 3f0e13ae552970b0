"""The scheduled deployment on a real Prefect server: registered on a process work pool, its
schedule creates scheduled runs, a worker executes a triggered run of the `smoke` pipeline, and a
run with bad data ends Failed with the validation artifact and no training task started."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.servers import BIN, prefect_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "rlhf-pipeline/nightly-smoke"
TRAINING_TASKS = ("SFT", "collect comparisons", "reward model", "PPO", "evaluate", "gate", "register")


@pytest.fixture(scope="module")
def server(prefect_server, tmp_path_factory):
    api, home = prefect_server
    root = tmp_path_factory.mktemp("project")
    for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    env = {**os.environ, **prefect_env(home, api), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the runs track into the project's own store
    done = subprocess.run([sys.executable, "-m", "flows.deploy", "apply", "--profile", "smoke", "--root", str(root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deployment: {DEPLOYMENT} on work pool rlhf-process" in done.stdout
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "rlhf-process", "--type", "process"],
                              cwd=REPO, env=env, stdout=open(root.parent / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    with temporary_settings({PREFECT_API_URL: api}):
        yield {"api": api, "root": root, "env": env}
    os.killpg(worker.pid, 15)
    worker.wait(timeout=60)


def run_deployment(parameters: dict | None = None, timeout: float = 900):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run.id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            time.sleep(3)
    raise TimeoutError(f"flow run {flow_run.id} still {flow_run.state.name} after {timeout} s")


def task_runs(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def artifacts(flow_run_id):
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}


def test_the_schedule_creates_scheduled_runs(server):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 2 * * *"
        assert deployment.work_pool_name == "rlhf-process"
        deadline = time.monotonic() + 120
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            scheduled = [r for r in runs if r.state and r.state.is_scheduled() and r.expected_start_time.hour == 2]
            time.sleep(2)
    assert scheduled, "the cron schedule created no scheduled runs"


def test_a_worker_runs_the_deployment_through_every_stage(server):
    flow_run = run_deployment()
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.name.startswith("smoke-data-")  # renamed once the data hash is known
    runs = task_runs(flow_run.id)
    names = {r.name.split("-")[0] if not r.name.startswith("baseline") else r.name for r in runs}
    assert set(TRAINING_TASKS) <= names and {"baseline chosen", "baseline combined", "baseline dpo"} <= names
    assert all(r.state.is_completed() for r in runs)
    found = artifacts(flow_run.id)
    assert {"data-validation", "evaluation", "gate", "pipeline-report", "pipeline-metrics"} <= set(found)
    assert "decision:" in found["pipeline-report"].data and "## MLflow" in found["pipeline-report"].data
    assert (server["root"] / "artifacts/models/ppo/model.safetensors").is_file()


def test_bad_data_fails_the_run_before_any_training(server, tmp_path):
    data_dvc = (server["root"] / "data.dvc").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "d.jsonl").write_text(json.dumps({"prompt": "say hi", "response": "hi there, friend."}) + "\n")
    (bad / "p.jsonl").write_text('{"prompt": "say hi", "chosen": 5}\n')
    (bad / "e.jsonl").write_text(json.dumps({"prompt": "say bye"}) + "\n")
    overrides = [
        "data.source=files",
        f"data.files={{demonstrations: {bad / 'd.jsonl'}, preferences: {bad / 'p.jsonl'}, eval_prompts: {bad / 'e.jsonl'}}}",
        "validation.check_vocabulary=false",
    ]
    flow_run = run_deployment({"overrides": overrides})
    assert flow_run.state.is_failed(), flow_run.state
    found = artifacts(flow_run.id)
    assert "Data validation FAILED" in found["data-validation"].data
    started = {r.name.split("-")[0] for r in task_runs(flow_run.id)}
    assert not started & set(TRAINING_TASKS)
    assert (server["root"] / "data.dvc").read_text() == data_dvc  # the data version did not move
