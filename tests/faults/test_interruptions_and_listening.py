"""Fault table, continued: the whole job killed mid-PPO and re-run; what killed runs leave open is
closed by the next run; every server the project starts listens on 127.0.0.1 only. (Planted secrets
are checked on the three concurrent runs of tests/integration/test_mlflow_pipeline.py.)"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.config import load_config
from components.data.files import DEMONSTRATIONS, file_name, read_jsonl
from components.models.builders import load_causal_lm, load_scalar_model
from components.task.lexicon import VOCABULARY
from components.training import recipe
from tests.flow_helpers import main_command, main_env, new_project, run_main, stage_runs
from tests.layout import run_records as records_in
from tests.layout import stage_dir, stage_dirs

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
# long enough to be killed in the middle; a checkpoint every 4 iterations; the ranks launched (the launcher killed too)
PPO_LONGER = ["ppo.iterations=16", "ppo.checkpoint_every=4", "distributed.launch=accelerate"]


def kill_during_ppo(root: Path, tmp_path: Path, prefect_api: str) -> str:
    """Start the main job and SIGKILL everything it started (flow, launcher, ranks) once PPO is past a checkpoint."""
    flow = subprocess.Popen(
        main_command(root, PPO_LONGER),
        cwd=REPO,
        env=main_env(tmp_path, prefect_api),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(600, lambda: os.killpg(flow.pid, signal.SIGKILL))
    timer.start()
    seen, rank_pid = [], None
    try:
        for line in flow.stdout:
            seen.append(line)
            if "rank 0/1 pid" in line:
                rank_pid = int(line.split("rank 0/1 pid")[1].split()[0])
            if "ppo iteration 9/16" in line:  # iterations 0-8 done: checkpoints after 4 and 8 exist
                os.killpg(os.getpgid(rank_pid), signal.SIGKILL)  # the launched ranks run in their own group
                os.killpg(flow.pid, signal.SIGKILL)
                break
    finally:
        timer.cancel()
        flow.wait()
    return "".join(seen)


def test_a_job_killed_mid_ppo_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(
    in_process_flow, prefect_server, tmp_path
):
    root = new_project(tmp_path)
    # the stages before PPO trained by an earlier, shorter run in this process: one process in the flow's or launched
    # has the same stage keys, so the killed run launches PPO alone (a launch is ~10 s of start-up)
    in_process_flow(root, [])
    earlier = {record["mlflow"]["run_id"] for record in records_in(root)}
    ppo_before = stage_dirs(root, "ppo")
    log = kill_during_ppo(root, tmp_path, prefect_server[0])
    assert "ppo iteration 9/16" in log and "sft: reusing the finished stage" in log, log[-3000:]
    checkpoints = list((root / "artifacts/models/.checkpoints").glob("ppo-*/iteration-*"))
    assert checkpoints and stage_dirs(root, "ppo") == ppo_before

    again = run_main(root, tmp_path, prefect_server[0], PPO_LONGER)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "ppo resumes from the checkpoint after iteration 8" in output
    assert "sft: reusing the finished stage" in output  # the task-level reuse: nothing before PPO retrained
    assert not list((root / "artifacts/models/.checkpoints").glob("ppo-*"))  # superseded by the model

    # the killed run is closed by the re-run: its record, its MLflow runs and its Prefect flow run
    records = {r["status"]: r for r in records_in(root) if r["mlflow"]["run_id"] not in earlier}
    assert sorted(records) == ["abandoned", "completed"], records
    killed = records["abandoned"]
    assert f"run {killed['mlflow']['run_id']}" in output and "stopped without finishing: marked abandoned" in output
    client = MlflowClient(killed["mlflow"]["uri"])
    parent = client.get_run(killed["mlflow"]["run_id"])
    stages = stage_runs(client, parent).values()
    assert {"ppo", "sft"} <= {run.info.run_name for run in stages}
    assert {run.info.status for run in (parent, *stages)} <= {"FINISHED", "FAILED"} and parent.info.status == "FAILED"
    with temporary_settings({PREFECT_API_URL: prefect_server[0]}), get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(killed["flow_run_id"]).state.type == StateType.CRASHED
    # the re-run's PPO stage run holds all 16 iterations once: 8-15 logged live by the ranks,
    # 0-7 (from the checkpoint) by the flow
    ppo = stage_runs(client, client.get_run(records["completed"]["mlflow"]["run_id"]))["ppo"]
    assert sorted(m.step for m in client.get_metric_history(ppo.info.run_id, "rm_score")) == list(range(16))

    # the uninterrupted run from the same SFT policy and reward model, for comparison
    cfg = load_config("smoke", PPO_LONGER)
    demonstrations = [r.data for r in read_jsonl(root / "data" / file_name(DEMONSTRATIONS), DEMONSTRATIONS)]
    prompts = sorted({r["prompt"] for r in demonstrations})
    never_stopped = recipe.ppo_stage(
        cfg,
        recipe.make_tokenizer(cfg, VOCABULARY),
        load_causal_lm(stage_dir(root, "sft")),
        load_scalar_model(stage_dir(root, "reward_model")),
        prompts,
        demonstrations,
    ).model
    (resumed,) = set(stage_dirs(root, "ppo")) - set(ppo_before)
    resumed = load_causal_lm(resumed)
    for (name, a), b in zip(never_stopped.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name  # single process on CPU: bit-identical


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_servers_the_project_starts_listen_on_localhost_only(mlflow_server, prefect_server):
    for url in (mlflow_server, prefect_server[0]):
        port = int(url.split(":")[2].split("/")[0])
        assert listening_addresses(port) == {"0100007F"}, url  # 127.0.0.1 and nothing else
    for script in ("infra/mlflow_server.sh", "infra/start_servers.sh"):
        text = (REPO / script).read_text()
        assert "--host 127.0.0.1" in text and "0.0.0.0" not in text, script
    for profile in (REPO / "infra/accelerate").glob("*.yaml"):
        if "multi-node" not in profile.name:
            assert "main_process_ip: 127.0.0.1" in profile.read_text() or "num_processes: 1" in profile.read_text(), (
                profile.name
            )


# --- what dead runs leave open -------------------------------------------------------------------

HOLD_AND_DIE = """
import sys, time
from components.adapters import run_records
with run_records.alive(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_later_run_closes_what_killed_or_cut_off_runs_left_open(prefect_server, tmp_path, monkeypatch):
    """A run SIGKILLed mid-way leaves its record "running", its MLflow runs RUNNING and its Prefect
    flow run Running; a run that failed while MLflow was away leaves its MLflow run RUNNING. The next
    run closes both, and leaves alone a run that is alive and runs that ended properly."""
    from prefect import flow
    from prefect.states import Running

    from components.adapters import run_records
    from components.adapters.tracking import Tracker
    from flows.execution.run_tracking import Tracking, close_abandoned_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(load_config("smoke", [f"tracking.uri={uri}"]).tracking, tmp_path)
    runs_dir = tmp_path / "runs"

    @flow(name="a-run-that-was-killed")
    def never_finishes():
        pass

    def earlier_run(
        name: str, status: str, mlflow_open: bool = False, flow_run_id: str | None = None
    ) -> tuple[str, str]:
        parent = tracker.start_run(f"pipeline-{name}")
        stage = tracker.start_run("ppo", parent=parent)
        run_records.write(
            runs_dir / parent.run_id,
            {
                "status": status,
                "mlflow": {"uri": uri, "run_id": parent.run_id},
                "mlflow_open": mlflow_open,
                "flow_run_id": flow_run_id,
                "error": None,
            },
        )
        return parent.run_id, stage.run_id

    with temporary_settings({PREFECT_API_URL: prefect_server[0]}), get_client(sync_client=True) as client:
        killed_flow_run = client.create_flow_run(never_finishes, state=Running())
        killed = earlier_run("killed", run_records.RUNNING, flow_run_id=str(killed_flow_run.id))
        cut_off = earlier_run("cut-off", run_records.FAILED, mlflow_open=True)
        live = earlier_run("alive", run_records.RUNNING)
        ended = earlier_run("ended", run_records.COMPLETED)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_AND_DIE, str(runs_dir / live[0])], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout.readline().strip() == "holding"
            this_run = tracker.start_run("pipeline-now")

            @flow(name="the-next-run")
            def next_run():
                return close_abandoned_runs(Tracking(tracker, this_run, runs_dir / this_run.run_id))

            assert sorted(next_run()) == sorted([killed[0], cut_off[0]])
            assert next_run() == []  # closed once: a third run finds nothing left open
        finally:
            holder.kill()
            holder.wait()
        crashed = client.read_flow_run(killed_flow_run.id).state

    status = {
        run_id: tracker.client.get_run(run_id).info.status for pair in (killed, cut_off, live, ended) for run_id in pair
    }
    assert [status[run_id] for run_id in (*killed, *cut_off)] == ["FAILED"] * 4
    assert [status[run_id] for run_id in (*live, *ended)] == [
        "RUNNING"
    ] * 4  # alive: its holder's lock; ended: its record
    assert "found by run " + this_run.run_id in tracker.client.get_run(killed[1]).data.tags["error"]
    assert crashed.type == StateType.CRASHED and "stopped without finishing" in crashed.message
    record = lambda pair: json.loads((runs_dir / pair[0] / run_records.RECORD).read_text())  # noqa: E731
    assert (record(killed)["status"], record(killed)["mlflow_open"]) == (run_records.ABANDONED, False)
    assert (record(cut_off)["status"], record(cut_off)["mlflow_open"]) == (run_records.FAILED, False)
    assert record(live)["status"] == run_records.RUNNING and record(ended)["status"] == run_records.COMPLETED
    assert not (runs_dir / ended[0] / run_records.LOCK).exists()  # a run that ended properly is not even locked

    # the one that was alive dies too (its holder was killed): now it is found
    with temporary_settings({PREFECT_API_URL: prefect_server[0]}):
        assert next_run() == [live[0]]
