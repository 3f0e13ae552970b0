"""The data set as a DVC version: first run, verify, drift, rebuild on a fresh clone, new versions."""
import json

import pytest
import yaml

from components.config import load_config
from components.data import files
from components.data.versioned import NEW_VERSION, REBUILT, VERIFIED, materialize
from components.tracking.dvc_store import DataDrift
from tests.conftest import git

SMOKE = load_config("smoke")


def test_first_run_records_a_version_and_second_run_verifies_it(git_repo):
    first = materialize(SMOKE, git_repo)
    assert first.action == NEW_VERSION and first.previous_md5 is None
    recorded = yaml.safe_load((git_repo / "data.dvc").read_text())
    assert recorded["outs"][0]["md5"] == first.version.md5 + ".dir"
    assert set(recorded["meta"]["files"]) == {"demonstrations.jsonl", "preferences.jsonl", "eval_prompts.jsonl", "manifest.json"}
    second = materialize(SMOKE, git_repo)
    assert second.action == VERIFIED and second.version.md5 == first.version.md5


def test_a_hand_edited_file_is_refused_as_drift_naming_the_file_and_both_hashes(git_repo):
    version = materialize(SMOKE, git_repo).version
    path = git_repo / "data" / "preferences.jsonl"
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"chosen_position":0', b'"chosen_position":1', 1))
    with pytest.raises(DataDrift) as drift:
        materialize(SMOKE, git_repo)
    message = str(drift.value)
    assert "preferences.jsonl" in message
    assert version.files["preferences.jsonl"] in message and drift.value.workspace.files["preferences.jsonl"] in message
    assert path.read_bytes() != original  # refused, not silently "repaired"
    assert yaml.safe_load((git_repo / "data.dvc").read_text())["outs"][0]["md5"] == version.dvc_md5  # record untouched


def test_fresh_clone_rebuilds_the_data_to_the_recorded_hash(git_repo, tmp_path):
    version = materialize(SMOKE, git_repo).version
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-qm", "data")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(git_repo), str(clone))
    assert not (clone / "data").exists()
    rebuilt = materialize(SMOKE, clone)
    assert rebuilt.action == REBUILT and rebuilt.version.md5 == version.md5
    assert git(clone, "status", "--porcelain", "data.dvc") == ""  # data.dvc unchanged


def test_new_params_give_a_new_version(git_repo):
    first = materialize(SMOKE, git_repo)
    other = materialize(load_config("smoke", [f"seed={SMOKE.seed + 1}"]), git_repo)
    assert other.action == NEW_VERSION and other.previous_md5 == first.version.md5
    assert other.version.md5 != first.version.md5
    manifest = json.loads((git_repo / "data" / files.MANIFEST).read_text())
    assert manifest["seed"] == SMOKE.seed + 1


def test_user_files_are_imported_and_versioned(git_repo, tmp_path):
    source = tmp_path / "mine"
    source.mkdir()
    (source / "d.jsonl").write_text('{"prompt": "say hi", "response": "hi there."}\n')
    (source / "p.jsonl").write_text('{"prompt": "say hi", "chosen": "hi there.", "rejected": "go away."}\n')
    (source / "e.jsonl").write_text('{"prompt": "say bye"}\n')
    cfg = load_config(
        "smoke",
        {"data": {"source": "files", "files": {"demonstrations": str(source / "d.jsonl"), "preferences": str(source / "p.jsonl"), "eval_prompts": str(source / "e.jsonl")}}},
    )
    versioned = materialize(cfg, git_repo)
    assert versioned.action == NEW_VERSION and versioned.version.meta["source"] == "files"
    rows = files.read_jsonl(git_repo / "data" / "preferences.jsonl", files.PREFERENCES)
    assert rows[0].data["chosen"] == "hi there."


def test_hf_dataset_saved_to_disk_is_imported(git_repo, tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "say hi", "response": "hi there."}]).save_to_disk(str(tmp_path / "demos"))
    Dataset.from_list([{"prompt": "say hi", "chosen": "hi.", "rejected": "no."}]).save_to_disk(str(tmp_path / "prefs"))
    Dataset.from_list([{"prompt": "say bye"}]).save_to_disk(str(tmp_path / "evals"))
    cfg = load_config(
        "smoke",
        {"data": {"source": "files", "files": {"demonstrations": str(tmp_path / "demos"), "preferences": str(tmp_path / "prefs"), "eval_prompts": str(tmp_path / "evals")}}},
    )
    materialize(cfg, git_repo)
    rows = files.read_jsonl(git_repo / "data" / "demonstrations.jsonl", files.DEMONSTRATIONS)
    assert [r.data for r in rows] == [{"prompt": "say hi", "response": "hi there."}]
