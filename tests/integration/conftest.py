"""Real servers for the integration tests: an MLflow tracking server on 127.0.0.1 (SQLite backend,
temporary artefact root), started on a free port and stopped by the fixture."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The tracking URI of a fresh MLflow server (SQLite backend, artefacts in a temp dir)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = home / "server.log"
    mlflow = Path(sys.executable).parent / "mlflow"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ}, start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", process, log)
        yield uri
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
