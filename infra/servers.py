"""Real servers on 127.0.0.1 and free ports, stopped by whoever starts them: the tests' fixtures, the soak benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from flows.execution.ports import free_port

BIN = Path(sys.executable).parent
# MLflow's server starts a job runner and a handful of Huey consumer processes for its GenAI jobs, which the pipeline
# never submits: off, they do not take a core's worth of start-up and polling from every test server
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(command: list[str], health_url: str, log: Path, env: dict[str, str] | None = None, append: bool = False):
    """``append``: keep the log of an earlier start of the same server (a restart)."""
    with open(log, "a" if append else "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    try:
        wait_until_up(health_url, process, log)
        yield process
    finally:
        try:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def mlflow_server_command(home: Path, port: int) -> list[str]:
    """An MLflow server on 127.0.0.1:``port``, one worker, its SQLite store and artefacts under ``home``."""
    return [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
    ]


@contextmanager
def mlflow_server(home: Path, admin: tuple[str, str] | None = None):
    """Yields the tracking URI of an MLflow server with an SQLite backend and artefacts under ``home``.

    ``admin``: (user, password) of MLflow's basic-auth app; every request without them is refused."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = mlflow_server_command(home, port)
    env = dict(MLFLOW_SERVER_ENV)
    if admin:
        config = home / "basic_auth.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{home / 'auth.db'}\nadmin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        command += ["--app-name", "basic-auth"]
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=os.urandom(16).hex()
        )  # CSRF key of the auth app
    uri = f"http://127.0.0.1:{port}"
    with running(command, f"{uri}/health", home / "mlflow-server.log", env):
        yield uri


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextmanager
def prefect_server(home: Path, port: int | None = None):
    """Yields the API URL of a Prefect server whose database lives in ``home`` (its PREFECT_HOME).

    ``port``: a fixed port (default: a free one); a test that stops the server and starts it again
    with the same ``home`` and ``port`` gets the same API URL and the same database back."""
    port = port or free_port()
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **prefect_env(home),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",  # scheduled runs appear within seconds
    }
    with running(command, f"{api}/health", home / "prefect-server.log", env, append=True):
        yield api
