"""components/adapters/versioning.py against real DVC in throwaway git repositories (no mocks)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.adapters.versioning import (
    DataDrift,
    DvcError,
    check_drift,
    dvc_status,
    ensure_repo,
    pull,
    push,
    recorded_version,
    remote_url,
    track,
    workspace_version,
)
from components.config import VersioningConfig
from tests.conftest import git, new_repo

CFG = VersioningConfig()
META = {"source": "synthetic", "seed": 0}
FILES = {
    "demonstrations.jsonl": '{"prompt": "rate: good food", "response": "positive"}\n',
    "preferences.jsonl": '{"prompt": "rate: bad food", "chosen": "negative", "rejected": "positive"}\n',
    "eval_prompts.jsonl": '{"prompt": "rate: fine food"}\n',
    "manifest.json": '{"n_demonstrations": 1}\n',
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dvc(root: Path, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module", autouse=True)
def dvc_env(tmp_path_factory):
    """No analytics, and DVC's per-repo site cache in a temp dir instead of /var/tmp/dvc."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        mp.setenv("DO_NOT_TRACK", "1")
        mp.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))
        yield


@pytest.fixture(scope="module")
def template(dvc_env, tmp_path_factory) -> Path:
    """A git + DVC repository whose data/ is tracked; each test works on a copy."""
    root = tmp_path_factory.mktemp("template") / "repo"
    new_repo(root)
    (root / "data").mkdir()
    for name, text in FILES.items():
        (root / "data" / name).write_text(text)
    ensure_repo(root, CFG)
    track(root, "data", META)
    return root


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(template, root, symlinks=True)
    return root


def test_ensure_repo_is_idempotent_and_sets_analytics_off_and_local_remote(tmp_path):
    root = tmp_path / "repo"
    new_repo(root)
    ensure_repo(root, CFG)
    config_before = (root / ".dvc" / "config").read_text()
    ensure_repo(root, CFG)
    assert (root / ".dvc" / "config").read_text() == config_before
    assert dvc(root, "config", "core.analytics") == "false"
    assert dvc(root, "remote", "default") == CFG.remote_name
    # (dvc wraps its table to the terminal's width: compare without the whitespace)
    assert "".join(dvc(root, "remote", "list").split()) == f"{CFG.remote_name}{root / 'dvc-remote'}(default)"
    assert "url = ../dvc-remote" in config_before  # stored as configured, relative to .dvc/


def test_ensure_repo_outside_git_initialises_without_scm(tmp_path):
    ensure_repo(tmp_path, CFG)
    assert dvc(tmp_path, "config", "core.no_scm").lower() == "true"


def test_track_writes_meta_and_per_file_md5s(repo):
    doc = yaml.safe_load((repo / "data.dvc").read_text())
    (out,) = doc["outs"]
    assert out["path"] == "data" and out["md5"].endswith(".dir")
    assert doc["meta"] == {**META, "files": {name: md5(repo / "data" / name) for name in FILES}}


def test_recorded_equals_workspace_right_after_track(repo):
    recorded = recorded_version(repo, "data")
    workspace = workspace_version(repo, "data")
    assert recorded.dvc_md5 == workspace.dvc_md5 == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert recorded.md5 == recorded.dvc_md5.removesuffix(".dir") and len(recorded.md5) == 32
    assert recorded.files == workspace.files
    assert recorded.meta == META and workspace.meta == {}
    assert check_drift(repo, "data") == recorded


def test_workspace_dir_hash_equals_what_dvc_add_records(repo):
    (repo / "data" / "nested").mkdir()
    (repo / "data" / "nested" / "extra.jsonl").write_text('{"prompt": "x"}\n')
    (repo / "data" / "preferences.jsonl").write_text("changed\n")
    predicted = workspace_version(repo, "data")

    dvc(repo, "add", "data")
    recorded = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert predicted.dvc_md5 == recorded
    # DVC's documented .dir object: the md5 of the sorted JSON list of {md5, relpath}.
    entries = sorted(({"md5": h, "relpath": p} for p, h in predicted.files.items()), key=lambda e: e["relpath"])
    assert hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir" == recorded
    assert predicted.files["nested/extra.jsonl"] == md5(repo / "data" / "nested" / "extra.jsonl")


def test_changing_one_file_raises_drift_naming_it_and_both_hashes(repo):
    recorded = recorded_version(repo, "data")
    (repo / "data" / "preferences.jsonl").write_text("tampered\n")
    on_disk = md5(repo / "data" / "preferences.jsonl")

    with pytest.raises(DataDrift) as excinfo:
        check_drift(repo, "data")
    message = str(excinfo.value)
    assert f"preferences.jsonl md5 {recorded.files['preferences.jsonl']} (data.dvc) != {on_disk} (on disk)" in message
    assert recorded.md5 in message and excinfo.value.workspace.md5 in message
    assert "demonstrations.jsonl" not in message


def test_adding_and_removing_files_is_drift(repo):
    recorded = recorded_version(repo, "data")
    (repo / "data" / "eval_prompts.jsonl").unlink()
    (repo / "data" / "extra.jsonl").write_text("new\n")

    with pytest.raises(DataDrift) as excinfo:
        check_drift(repo, "data")
    message = str(excinfo.value)
    assert f"eval_prompts.jsonl removed: md5 {recorded.files['eval_prompts.jsonl']} (data.dvc)" in message
    assert f"extra.jsonl added: md5 {md5(repo / 'data' / 'extra.jsonl')} (on disk)" in message


def test_missing_data_dir_is_drift(repo):
    shutil.rmtree(repo / "data")
    with pytest.raises(DataDrift, match="directory missing") as excinfo:
        check_drift(repo, "data")
    assert excinfo.value.workspace is None


def test_push_then_pull_without_cache_restores_byte_identical_files(repo):
    original = {name: (repo / "data" / name).read_bytes() for name in FILES}
    push(repo, CFG)
    assert dvc_status(repo, CFG) == {}
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")

    pull(repo, CFG)
    assert {name: (repo / "data" / name).read_bytes() for name in FILES} == original
    assert check_drift(repo, "data") == recorded_version(repo, "data")
    assert dvc_status(repo) == {}


def test_fresh_clone_pulls_the_recorded_version(repo, tmp_path):
    push(repo, CFG)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "data")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "data").exists()

    # The clone's ../dvc-remote would be its own (git-ignored, empty) folder: point at the original.
    ensure_repo(clone, VersioningConfig(remote_url=str(repo / "dvc-remote")))
    pull(clone, CFG)
    assert check_drift(clone, "data") == recorded_version(repo, "data")


def test_retracking_after_a_change_updates_the_dvc_file(repo):
    before = recorded_version(repo, "data")
    (repo / "data" / "preferences.jsonl").write_text("regenerated\n")

    after = track(repo, "data", {"source": "synthetic", "seed": 1})
    assert after.dvc_md5 != before.dvc_md5
    assert recorded_version(repo, "data") == after
    assert after.meta == {"source": "synthetic", "seed": 1}
    assert after.files["preferences.jsonl"] == md5(repo / "data" / "preferences.jsonl")
    assert check_drift(repo, "data") == after


def test_hand_run_dvc_add_keeps_stale_meta_which_is_refused(repo):
    (repo / "data" / "preferences.jsonl").write_text("edited by hand\n")
    dvc(repo, "add", "data")
    assert yaml.safe_load((repo / "data.dvc").read_text())["meta"]["seed"] == 0  # DVC kept the old meta
    with pytest.raises(ValueError, match="re-run track"):
        recorded_version(repo, "data")


def test_failing_dvc_command_raises_dvc_error_with_command_and_stderr(repo):
    with pytest.raises(DvcError) as excinfo:
        track(repo, "no_such_dir", {})
    assert excinfo.value.cmd[:2] == ["dvc", "add"]
    assert "no_such_dir" in excinfo.value.stderr and excinfo.value.returncode != 0


def test_a_teams_own_remote_is_left_alone_and_used(tmp_path):
    """A repository whose team configured its own default remote: ensure_repo used to add the project's with --force
    and make it the default; now it adds nothing, and push and pull go to the team's remote."""
    root, team = tmp_path / "repo", tmp_path / "team-remote"
    new_repo(root)
    dvc(root, "init")
    dvc(root, "remote", "add", "--default", "team", str(team))
    ensure_repo(root, CFG)
    config = (root / ".dvc" / "config").read_text()
    assert "team" in config and "dvc-remote" not in config
    assert dvc(root, "remote", "default") == "team" and CFG.remote_name not in dvc(root, "remote", "list")
    (root / "data").mkdir()
    for name, text in FILES.items():
        (root / "data" / name).write_text(text)
    track(root, "data", META)
    push(root, CFG)
    assert any(team.rglob("*")) and dvc_status(root, CFG) == {}
    assert remote_url(root, CFG) == str(team)  # what the runs record as the data's remote
