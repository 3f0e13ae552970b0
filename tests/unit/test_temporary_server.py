"""The temporary Prefect server started before the main job's imports (flows/execution/temporary_server.py): handed to
Prefect
only when the settings configure no server, stopped otherwise, and a server that dies is named. The server itself,
started by the README's main command, is tested in tests/data/test_main_job.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from flows.execution.temporary_server import TemporaryServer, listening_socket, start_early


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_no_early_server_when_the_environment_names_one(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_early() is None


def test_a_server_named_by_the_settings_wins_and_the_early_one_is_stopped():
    server = TemporaryServer(sleeper(), port=1)  # never contacted
    configured = "http://127.0.0.1:4200/api"
    with temporary_settings({PREFECT_API_URL: configured}), server.adopt():
        assert get_current_settings().api.url == configured
    assert server.process.poll() is not None


def test_a_server_that_exits_before_answering_is_named_with_its_exit_code():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(RuntimeError, match="exited with code 3"):
        TemporaryServer(process, port=1).wait_until_healthy(timeout_s=5)  # never contacted


def test_a_server_that_never_answers_is_stopped_after_the_timeout():
    with listening_socket() as sock:  # ours: connections wait in its backlog, and nothing answers them
        server = TemporaryServer(sleeper(), sock.getsockname()[1])
        with pytest.raises(RuntimeError, match="did not answer within 1 s"):
            server.wait_until_healthy(timeout_s=1)
    assert server.process.poll() is not None
