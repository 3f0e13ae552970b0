"""The installed commands ([project.scripts]) are the modules' own entry points: each resolves, and the main job's
refuses a bad profile before any work, exit 2, as `python -m flows.pipeline` does."""

import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
DECLARED = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_declared_command_is_installed_and_resolves():
    installed = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name in DECLARED}
    assert installed == DECLARED  # setup.sh installed this pyproject's commands
    for target in DECLARED.values():
        module, _, function = target.partition(":")
        assert callable(getattr(import_module(module), function))
    assert set(DECLARED) == {"rlhf-pipeline", "rlhf-deploy", "rlhf-data", "rlhf-judge"}


def test_the_main_command_refuses_a_bad_profile_like_the_module_does(tmp_path):
    command = Path(sys.executable).parent / "rlhf-pipeline"
    done = subprocess.run(
        [str(command), "--profile", "no-such-profile"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    module = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--profile", "no-such-profile"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == module.returncode == 2, done.stderr
    assert "unknown profile 'no-such-profile'" in done.stderr
    assert done.stderr == module.stderr
