"""The scheduled deployment on a real Prefect server: registered on a process work pool, its
schedule creates scheduled runs, a worker executes a triggered run of the `smoke` pipeline (and
the Prefect server is restarted while that run trains: a fault-table row), and a run with bad data
ends Failed with the validation artifact and no training task started. A run judged by people is suspended while
they label: no process waits for them."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.labelling.human_judging import KEY
from infra.servers import BIN, free_port, prefect_env, prefect_server
from tests.conftest import new_repo
from tests.human_rounds import PEOPLE, argilla_export, human_round, longer_side, newest_round, ppo_wins
from tests.layout import stage_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "rlhf-pipeline/nightly-smoke"
MODEL = "rlhf-policy"
TRAINING_TASKS = ("SFT", "collect comparisons", "reward model", "PPO", "evaluate", "gate", "register")
OUTAGE_SECONDS = 8  # the server is down this long, plus its own start-up
TRAINING_STARTED = ("SFT", "reward model", "PPO")


class RestartableServer:
    """A Prefect server on one fixed port and one database, stopped and started again by a test."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self._running = None

    def start(self) -> None:
        running = prefect_server(self.home, self.port)
        assert running.__enter__() == self.api
        self._running = running

    def stop(self) -> None:
        """SIGTERM to the server's process group; returns once it has exited."""
        running, self._running = self._running, None
        if running is not None:
            running.__exit__(None, None, None)


def stop_tree(process: subprocess.Popen) -> None:
    """The worker and what it started (a flow run runs in a session of its own): SIGTERM, then SIGKILL."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=15)  # a worker that takes longer is killed: nothing of it is asserted after
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:
        child.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    prefect = RestartableServer(home)
    prefect.start()
    root = new_repo(tmp_path_factory.mktemp("project"))
    env = {
        **os.environ,
        **prefect_env(home, prefect.api),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        # the worker allows its deployment's project root and a run's own data files
        # (flows/execution/deployment_safety.py)
        "RLHF_DEPLOYMENT_MAY_SET": "root,data.files",
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the runs track into the project's own store
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.deploy", "apply", "--profile", "smoke", "--root", str(root)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"deployment: {DEPLOYMENT} on work pool rlhf-process" in done.stdout
        log = root.parent / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "rlhf-process", "--type", "process"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            with temporary_settings({PREFECT_API_URL: prefect.api}):
                yield {"prefect": prefect, "root": root, "env": env, "worker_log": log, "worker": worker}
        finally:
            stop_tree(worker)
    finally:
        prefect.stop()


def wait_for(what: str, condition, timeout: float, every: float, log: Path):
    """Poll ``condition`` until it is truthy; an HTTP error (the server still starting) counts as 'not yet'."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except httpx.HTTPError as error:
            last_error = error
        time.sleep(every)
    raise TimeoutError(
        f"{what}: not after {timeout} s (last error: {last_error!r}); worker log:\n{log.read_text()[-6000:]}"
    )


def start_deployment(parameters: dict | None = None):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters or {}).id


def final_state(flow_run_id, log: Path, timeout: float = 900):
    with get_client(sync_client=True) as client:

        def final():
            flow_run = client.read_flow_run(flow_run_id)
            return flow_run if flow_run.state and flow_run.state.is_final() else None

        flow_run = wait_for("the flow run final", final, timeout, 2, log)

        def tasks_final():  # task run states reach the server as events, a moment after the flow's own state
            runs = task_runs(flow_run_id)
            return runs if all(r.state and r.state.is_final() for r in runs) else None

        return flow_run, wait_for("every task run final", tasks_final, 60, 2, log)


def task_runs(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def artifacts(flow_run_id):
    with get_client(sync_client=True) as client:
        return {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
        }


def test_the_schedule_creates_scheduled_runs(server):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 2 * * *"
        assert deployment.work_pool_name == "rlhf-process"
        deadline = time.monotonic() + 120
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
            scheduled = [r for r in runs if r.state and r.state.is_scheduled() and r.expected_start_time.hour == 2]
            time.sleep(2)
    assert scheduled, "the cron schedule created no scheduled runs"


@pytest.mark.faults
def test_a_worker_runs_the_deployment_through_every_stage_across_a_server_restart(server):
    """Fault table: the Prefect server restarts while the run trains. The flow run rides out the
    outage (the client retries its API calls; the events client resends what the server did not
    confirm) and ends Completed, every task Completed, with one registry version."""
    log, prefect = server["worker_log"], server["prefect"]
    flow_run_id = start_deployment()

    def training():
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        if state and state.is_final():
            pytest.fail(
                f"the flow run ended before any training task was seen Running: {state!r}\n{log.read_text()[-6000:]}"
            )
        return (
            state
            and state.is_running()
            and [
                r.name
                for r in task_runs(flow_run_id)
                if r.name.rsplit("-", 1)[0] in TRAINING_STARTED and r.state and r.state.is_running()
            ]
        )

    started = wait_for("a training task Running", training, 300, 0.5, log)
    prefect.stop()
    down = time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    prefect.start()
    outage = time.monotonic() - down
    flow_run, runs = final_state(flow_run_id, log)

    context = f"restarted during {started}; outage {outage:.1f} s; worker log:\n{log.read_text()[-6000:]}"
    assert flow_run.state.is_completed(), f"{flow_run.state!r}\n{context}"
    assert flow_run.run_count == 1  # Prefect did not run it a second time
    assert flow_run.name.startswith("smoke-data-")  # renamed once the data hash is known
    names = {r.name.split("-")[0] if not r.name.startswith("baseline") else r.name for r in runs}
    assert set(TRAINING_TASKS) <= names and {"baseline chosen", "baseline combined", "baseline dpo"} <= names
    assert all(r.state.is_completed() for r in runs), {r.name: r.state.name for r in runs}
    found = artifacts(flow_run_id)
    assert {"data-validation", "evaluation", "gate", "pipeline-report", "pipeline-metrics"} <= set(found)
    assert "decision:" in found["pipeline-report"].data and "## MLflow" in found["pipeline-report"].data
    assert (stage_dir(server["root"], "ppo") / "model.safetensors").is_file()

    registry = MlflowClient(f"sqlite:///{server['root'] / 'mlruns' / 'mlflow.db'}")
    (parent,) = registry.search_runs(
        [registry.get_experiment_by_name("rlhf-pipeline").experiment_id], "tags.mlflow.runName = 'pipeline-smoke'"
    )
    assert parent.info.status == "FINISHED"  # one pipeline run, finished, not a second attempt
    (version,) = registry.search_model_versions(f"name='{MODEL}'")  # no duplicate registry version
    assert version.run_id == parent.info.run_id and version.tags["gate.decision"] == parent.data.tags["gate.decision"]
    assert registry.get_model_version_by_alias(MODEL, "challenger").version == version.version
    # the run list tells a rejected run from a promoted one: the state's name is the decision
    promoted = parent.data.tags["gate.decision"] == "promote"
    assert flow_run.state.name == ("Promoted" if promoted else "Rejected"), flow_run.state
    assert flow_run.state.message.startswith(f"gate: {parent.data.tags['gate.decision']}")


@pytest.mark.faults
def test_a_run_whose_parameters_would_run_code_is_refused_before_any_work(server):
    """Anyone who reaches the server may start a run with parameters: one that names a judge to import and call
    (`os:system`) fails at once, naming the key and how the worker could allow it; no task runs, the data version
    does not move. Before, the worker imported and called it."""
    tracked = server["root"] / "data.dvc"
    data_dvc = tracked.read_text() if tracked.exists() else None
    overrides = ["evaluation.judge.kind=python", "evaluation.judge.entry_point=os:system"]
    flow_run_id = start_deployment({"overrides": overrides})
    with get_client(sync_client=True) as client:

        def final():
            flow_run = client.read_flow_run(flow_run_id)
            return flow_run if flow_run.state and flow_run.state.is_final() else None

        flow_run = wait_for("the flow run final", final, 300, 2, server["worker_log"])
    assert flow_run.state.is_failed(), flow_run.state
    assert task_runs(flow_run_id) == []  # refused before the first task
    message = flow_run.state.message or ""
    log = server["worker_log"].read_text()
    assert "may not set evaluation.judge.entry_point" in message + log, (message, log[-3000:])
    assert "RLHF_DEPLOYMENT_MAY_SET" in message + log
    assert (tracked.read_text() if tracked.exists() else None) == data_dvc


def test_bad_data_fails_the_run_before_any_training(server, tmp_path):
    tracked = server["root"] / "data.dvc"
    data_dvc = tracked.read_text() if tracked.exists() else None  # the run before may have versioned the data
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "d.jsonl").write_text(json.dumps({"prompt": "say hi", "response": "hi there, friend."}) + "\n")
    (bad / "p.jsonl").write_text('{"prompt": "say hi", "chosen": 5}\n')
    (bad / "e.jsonl").write_text(json.dumps({"prompt": "say bye"}) + "\n")
    overrides = [
        "data.source=files",
        (
            f"data.files={{demonstrations: {bad / 'd.jsonl'}, preferences: {bad / 'p.jsonl'}, "
            f"eval_prompts: {bad / 'e.jsonl'}}}"
        ),
        "validation.check_vocabulary=false",
        "evaluation.judge.kind=human",  # user files need a judge; people, as no key that runs code may be set here
    ]
    flow_run, runs = final_state(start_deployment({"overrides": overrides}), server["worker_log"])
    assert flow_run.state.is_failed(), flow_run.state
    found = artifacts(flow_run.id)
    assert "Data validation FAILED" in found["data-validation"].data
    assert not {r.name.split("-")[0] for r in runs} & set(TRAINING_TASKS)
    assert (tracked.read_text() if tracked.exists() else None) == data_dvc  # the data version did not move


def wait_for_suspension(flow_run_id, log: Path, after=None):
    """The flow run's state once it is suspended (a state other than ``after``); fails the test if it ends first."""
    with get_client(sync_client=True) as client:

        def suspended():
            state = client.read_flow_run(flow_run_id).state
            if state and state.is_final():
                pytest.fail(f"the run ended instead of waiting for people: {state!r}\n{log.read_text()[-6000:]}")
            return state if state and state.is_paused() and state.id != getattr(after, "id", None) else None

        return wait_for("the run suspended", suspended, 600, 1, log)


def holds_no_process(server) -> None:
    worker = psutil.Process(server["worker"].pid)
    wait_for(
        "no process left running the flow", lambda: not worker.children(recursive=True), 60, 1, server["worker_log"]
    )


def test_a_run_judged_by_people_holds_no_process_while_they_label_and_ends_on_their_labels(server, tmp_path):
    """A deployment's run with people as the judge is suspended once the pairs are out: its process exits (before,
    it polled the server until the labels came, holding its memory and its slot). Resumed with the people's labels
    (an Argilla export), a worker runs it again; it reuses every stage, exports the same pairs and ends on the
    labels."""
    log, root = server["worker_log"], server["root"]
    flow_run_id = start_deployment({"overrides": human_round("suspended-policy", 3)})
    state = wait_for_suspension(flow_run_id, log)
    assert state.name == "Suspended", state
    holds_no_process(server)

    directory = newest_round(root)
    keys = [json.loads(line) for line in (directory / KEY).read_text().splitlines()]
    argilla_export(directory, ppo_wins(keys), tmp_path / "argilla-export.json")
    resume_flow_run(flow_run_id, run_input={"labels_file": str(tmp_path / "argilla-export.json")})
    flow_run, runs = final_state(flow_run_id, log)
    assert flow_run.state.is_completed(), f"{flow_run.state!r}\n{log.read_text()[-6000:]}"
    assert any(r.name.startswith("human labels") and r.state.is_completed() for r in runs)
    assert "human judges win rate vs sft 1.000" in artifacts(flow_run_id)["gate"].data
    records = [json.loads(path.read_text()) for path in (root / "artifacts" / "runs").glob("*/run.json")]
    ours = sorted(r["status"] for r in records if r["flow_run_id"] == str(flow_run_id))
    assert ours == ["completed", "suspended"]  # the attempt that handed over to people, and the one that ended
    registry = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    suspended_runs = registry.search_runs(
        [registry.get_experiment_by_name("rlhf-pipeline").experiment_id], "tags.suspended LIKE 'waiting%'"
    )
    assert [run.info.status for run in suspended_runs] == ["KILLED"]


def test_a_deployments_labelling_rounds_hold_no_process_while_people_label_each_round(server, tmp_path):
    """People as the labellers of two rounds, in a deployment's run: before each round's subflow the run is suspended
    (a subflow cannot be), holding no process; each resume starts it again, every earlier stage and label reused, and
    the last resume takes it to its end, trained on both rounds' labels."""
    log, root = server["worker_log"], server["root"]
    flow_run_id = start_deployment({"overrides": PEOPLE})
    state = None
    for round_index in (1, 2):
        state = wait_for_suspension(flow_run_id, log, after=state)
        holds_no_process(server)
        directory = max(
            (root / "artifacts" / "runs").glob(f"*/labelling-round-{round_index}"), key=lambda p: p.stat().st_mtime
        )
        keys = [json.loads(line) for line in (directory / KEY).read_text().splitlines()]
        labels = tmp_path / f"round-{round_index}.jsonl"
        labels.write_text("".join(json.dumps(row) + "\n" for row in longer_side(keys)))
        resume_flow_run(flow_run_id, run_input={"labels_file": str(labels)})
    flow_run, _ = final_state(flow_run_id, log)
    assert flow_run.state.is_completed(), f"{flow_run.state!r}\n{log.read_text()[-6000:]}"
    records = [json.loads(path.read_text()) for path in (root / "artifacts" / "runs").glob("*/run.json")]
    ours = {r["status"]: r for r in records if r["flow_run_id"] == str(flow_run_id)}
    assert sorted(r["status"] for r in records if r["flow_run_id"] == str(flow_run_id)) == [
        "completed",
        "suspended",
        "suspended",
    ]  # one attempt per round handed over to people, and the one that ended
    # the run that ended trained each round on the people's labels: every row of both rounds' comparisons theirs
    made = ours["completed"]["labelling_rounds"]
    assert len(made) == 2
    for round_made in made:
        rows = Path(round_made["comparisons"]["directory"], "preferences.jsonl").read_text().splitlines()
        assert rows and {json.loads(row)["source"] for row in rows} == {"human"}
