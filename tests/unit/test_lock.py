"""The lock infra/setup.sh installs from (infra/lock/, written by infra/lock.py): complete, hashed, consistent, and
what this environment runs on."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "infra" / "lock"
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+) \\\n    --hash=sha256:(?P<sha>[0-9a-f]{64})\n", re.M)


def locked(name: str) -> dict[str, str]:
    text = (LOCK / f"{name}.txt").read_text()
    entries = {m["name"].lower().replace("_", "-"): m["version"] for m in ENTRY.finditer(text)}
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(body) == 2 * len(entries), f"{name}.txt: a line that is not a pinned, hashed package"
    return entries


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_locked_at_one_version_with_its_hash():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, dev, deepspeed = locked("runtime"), locked("dev"), locked("deepspeed")
    assert {requirement_name(r) for r in project["dependencies"]} <= set(runtime)
    assert {requirement_name(r) for r in project["optional-dependencies"]["dev"]} <= set(dev)
    assert set(deepspeed) == {"deepspeed"} and "deepspeed" not in dev
    # the main job's packages are the test environment's, at the same versions
    assert {name: dev.get(name) for name in runtime} == runtime


@pytest.mark.skipif(
    os.environ.get("RLHF_CONSTRAINTS")
    or (sys.platform, platform.machine(), sys.version_info[:2]) != ("linux", "x86_64", (3, 11)),
    reason="the lock is for Linux x86_64, CPython 3.11 and the CPU torch; here infra/setup.sh resolved instead",
)
def test_this_environment_runs_on_the_lock():
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    wanted = {**locked("dev"), **locked("deepspeed")}
    assert {name: installed.get(name) for name in wanted} == wanted
