"""Fault table: the MLflow server goes away after the gate and comes back. The MLflow-only tasks retry
with backoff (MLflow's own HTTP retries are switched off here so that the pipeline's retries are what
is tested); the run completes, with one registry version, and no version carries an alias without
its gate decision."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from infra.servers import MLFLOW_SERVER_ENV, free_port, mlflow_server_command, wait_until_up
from tests.flow_helpers import MODEL, new_project

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 5  # then the server's own start-up, ~8 s on a 2-core machine
RETRY_DELAYS = [3, 6, 12, 24]  # the retries span 45 s, well past the outage


class Server:
    """An MLflow server that can be stopped and started again on the same port and store."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        command = mlflow_server_command(self.home, self.port)
        log = self.home / "server.log"
        with open(log, "a") as output:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **MLFLOW_SERVER_ENV},
            )
        wait_until_up(f"{self.uri}/health", self.process, log)

    def stop(self):
        os.killpg(self.process.pid, 9)
        self.process.wait()


def test_tracking_server_outage_after_the_gate_is_ridden_out_by_retries(prefect_server, tmp_path):
    server = Server(tmp_path)
    server.start()
    root = new_project(tmp_path / "p")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.uri,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": prefect_server[0],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    args = [
        sys.executable,
        "-m",
        "flows.pipeline",
        "--profile",
        "smoke",
        "--root",
        str(root),
        "--set",
        f"orchestration.tracking_retries={len(RETRY_DELAYS)}",
        "--set",
        f"orchestration.tracking_retry_delays={RETRY_DELAYS}",
    ]
    flow = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    output, outage = [], {}

    def comes_back():
        time.sleep(OUTAGE_SECONDS)
        server.start()
        outage["back"] = time.monotonic()

    try:
        for line in flow.stdout:
            output.append(line)
            if "Task run 'gate" in line and "Finished in state Completed" in line and not outage:
                server.stop()  # gone before the register task's first call
                outage["down"] = time.monotonic()
                threading.Thread(target=comes_back, daemon=True).start()
        flow.wait(timeout=600)
        log = "".join(output)
        assert outage, "the gate never finished:\n" + log[-3000:]
        outage_seconds = outage.get("back", float("nan")) - outage["down"]
        assert flow.returncode == 0, f"server down for {outage_seconds:.1f} s\n" + log[-5000:]
        assert re.search(
            rf"Task run 'register-.*Retry 1/{len(RETRY_DELAYS)} will start 3(\.0)? second", log
        )  # the register task retried with backoff
        client = MlflowClient(server.uri)
        versions = client.search_model_versions(f"name='{MODEL}'")
        assert len(versions) == 1  # the retried registration did not add a second version
        version = client.get_model_version(MODEL, versions[0].version)  # (search results carry no aliases)
        assert version.tags.get("gate.decision") in ("promote", "reject")
        assert "challenger" in version.aliases  # the aliases moved, after the decision tag
        assert ("champion" in version.aliases) == (version.tags["gate.decision"] == "promote")
    finally:
        if flow.poll() is None:
            os.killpg(flow.pid, 9)
        server.stop()


def test_a_tracking_outage_during_ppo_stops_live_logging_not_training(tmp_path, monkeypatch, capsys):
    """The PPO ranks log each iteration to MLflow while they train. A server that stays away longer than
    the client's retries (none here) stops that logging, never the training; when the stage ends the
    flow logs the iterations the ranks missed, so every iteration is in MLflow exactly once."""
    from components.adapters.tracking import StageRun
    from components.config import load_config
    from components.training.recipe import StageResult
    from flows.execution.ppo_worker import LiveLog, say
    from flows.execution.stage_runs import record_stage

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = load_config("smoke", ["ppo.iterations=6"])
    server = Server(tmp_path)
    server.start()
    try:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("ppo-outage")).info.run_id
        history = [{"iteration": i, "rm_score": 0.1 * i, "kl": 0.01 * i} for i in range(6)]
        live = LiveLog(cfg, {"uri": server.uri, "run_id": run_id}, say)
        for entry in history[:3]:
            live(entry["iteration"], entry)
        server.stop()
        for entry in history[3:]:
            live(entry["iteration"], entry)  # training goes on: no exception
        assert live.logged() == [0, 3]
        printed = capsys.readouterr().out
        assert printed.count("live MLflow logging stopped at iteration 4") == 1 and "ppo iteration 6/6" in printed

        server.start()  # back before the stage ends
        record_stage(
            StageRun(client, run_id),
            cfg.ppo,
            StageResult(None, {"rm_score": 0.5}, history, 1.0, logged_steps=(0, 3)),
            step_key="iteration",
        )
        steps = sorted(m.step for m in client.get_metric_history(run_id, "rm_score"))
        assert steps == [0, 1, 2, 3, 4, 5, 6]  # every iteration once (and the final metric at step 6)
    finally:
        server.stop()
