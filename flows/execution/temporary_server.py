"""Prefect's temporary server, started before the main job's heavy imports instead of after them.

With no Prefect API configured, Prefect starts a temporary server (uvicorn in a subprocess) the first time the flow
talks to the API, that is after torch, transformers, MLflow and Great Expectations are imported: about nine seconds
of imports, then about nine of server start-up, one after the other. `start_early` starts the same server, with
Prefect's own command line and environment, before those imports (stdlib only here), so both proceed at once on
two cores. `TemporaryServer.adopt` then hands it to Prefect as the API for the flow run, or stops it when the
settings name a server after all (a Prefect profile or a `prefect.toml`, which are only readable once Prefect is
imported).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

HEALTH_POLL_S = 0.1


@dataclass
class TemporaryServer:
    process: subprocess.Popen
    port: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait_until_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}")
            try:  # a request waits in the socket's backlog until the server accepts it
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=remaining) as response:
                    if response.status == 200:
                        return
            except OSError:  # refused, reset or timed out (URLError is an OSError)
                pass
            time.sleep(HEALTH_POLL_S)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server on {self.api_url} did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            print(f"Stopping temporary Prefect server on 127.0.0.1:{self.port}", file=sys.stderr)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @contextmanager
    def adopt(self):
        """Prefect's API for the block inside when the settings configure none (stopped at exit, after Prefect's own
        exit hooks have sent their last logs and events to it); stopped now when they do."""
        from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

        settings = get_current_settings()
        if settings.api.url is not None or not settings.server.ephemeral.enabled:
            self.stop()
            yield
            return
        try:
            self.wait_until_healthy(settings.server.ephemeral.startup_timeout_seconds)
            os.environ["PREFECT_API_URL"] = self.api_url  # for the processes the flow starts
            with temporary_settings({PREFECT_API_URL: self.api_url}):
                yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def listening_socket() -> socket.socket:
    """A socket on a free port of 127.0.0.1, already listening: the server is handed it, so no other process can take
    the port between choosing it and the server's start (and the health checks never reach anyone else)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.set_inheritable(True)
    return sock


def start_early() -> TemporaryServer | None:
    """The temporary server, started now, when no API URL is in the environment; None when one is."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    sock = listening_socket()
    port = sock.getsockname()[1]
    prefect_dir = Path(find_spec("prefect").origin).parent
    # the command and environment Prefect's own temporary server uses (prefect.server.api.server), on our socket
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect_dir.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--fd",
        str(sock.fileno()),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    print(f"Starting temporary Prefect server on 127.0.0.1:{port}", file=sys.stderr)
    with sock:  # the server holds its own copy
        server = TemporaryServer(subprocess.Popen(command, env=env, pass_fds=(sock.fileno(),)), port)
    atexit.register(server.stop)  # registered first, so it runs after every exit hook Prefect registers later
    return server
