"""Security defaults: credentials come from the environment or a Prefect Secret block, never from
params.yaml, and no log carries them. A real MLflow server running its basic-auth app shows that
the block's credentials are the ones that reach it."""

import os
import re
import time

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow, get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.adapters.tracking import Tracker
from components.config import ConfigError, load_config
from flows.execution.credentials import export_credentials
from infra.servers import mlflow_server

pytestmark = pytest.mark.faults

ADMIN, PASSWORD = "pipeline-admin", "planted-admin-password-9d2e"
CREDENTIAL_NAMES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@pytest.fixture
def clean_environment(monkeypatch):
    """No credentials in the environment, and whatever the test exports removed after it."""
    for name in (*CREDENTIAL_NAMES, "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores the original (or its absence)
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    yield monkeypatch
    mlflow.set_tracking_uri(previous)


def flow_run_logs(flow_run_id: str, containing: str, timeout: float = 30.0) -> list[str]:
    """The flow run's log lines on the server, once one containing ``containing`` has arrived
    (logs are shipped in batches)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = [
                log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            ]
            if any(containing in line for line in logs) or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)


def test_tracking_credentials_from_a_prefect_secret_block_reach_an_auth_server_and_no_log(
    prefect_server, tmp_path, clean_environment
):
    clean_environment.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    with (
        mlflow_server(tmp_path / "mlflow", (ADMIN, PASSWORD)) as uri,
        temporary_settings({PREFECT_API_URL: prefect_server[0]}),
    ):
        cfg = load_config("smoke", [f"tracking.uri={uri}", "orchestration.credentials_block=rlhf-test-credentials"])
        with pytest.raises(MlflowException, match="401"):
            Tracker(cfg.tracking, tmp_path)  # the server refuses a client without credentials
        Secret(
            value={
                "MLFLOW_TRACKING_USERNAME": ADMIN,
                "MLFLOW_TRACKING_PASSWORD": PASSWORD,
                "AWS_ACCESS_KEY_ID": "from-the-block",
            }
        ).save("rlhf-test-credentials", overwrite=True)

        @flow(name="credentials-from-a-block")
        def a_run():
            exported = export_credentials(cfg.orchestration)
            run = Tracker(cfg.tracking, tmp_path).start_run("pipeline-smoke")
            run.finish()
            return exported, run.run_id, str(flow_run.id)

        exported, run_id, flow_run_id = a_run()
        assert exported == ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"]
        assert os.environ["AWS_ACCESS_KEY_ID"] == "from-the-environment"  # the environment wins over the block
        assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
        logs = flow_run_logs(flow_run_id, "credentials from the Prefect Secret block")
    [line] = [line for line in logs if "credentials from the Prefect Secret block" in line]
    assert "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME" in line and "kept: AWS_ACCESS_KEY_ID" in line
    assert not [line for line in logs if PASSWORD in line or "from-the-block" in line]
    assert PASSWORD.encode() not in (tmp_path / "mlflow" / "mlflow.db").read_bytes()


def test_a_missing_credentials_block_stops_the_run_naming_the_key(prefect_server, clean_environment):
    cfg = load_config("smoke", ["orchestration.credentials_block=no-such-block"])

    @flow(name="credentials-block-missing")
    def a_run():
        export_credentials(cfg.orchestration)

    with (
        temporary_settings({PREFECT_API_URL: prefect_server[0]}),
        pytest.raises(
            ConfigError,
            match=re.escape("orchestration.credentials_block: no Prefect Secret block named 'no-such-block'"),
        ),
    ):
        a_run()
