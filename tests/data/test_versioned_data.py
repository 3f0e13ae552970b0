"""The data set as a DVC version: first run, verify, drift, rebuild on a fresh clone, new versions."""

import json

import pytest
import yaml

from components.adapters import data_stages, data_versioning
from components.adapters.data_versioning import NEW_VERSION, REBUILT, STAGING_DIR, VERIFIED
from components.adapters.versioning import DataDrift, dvc_status
from components.config import load_config
from components.data import files
from flows.execution.task_choice import environment_for
from tests.conftest import git

pytestmark = pytest.mark.slow  # a real DVC repository per test, ~45 s in all

SMOKE = load_config("smoke")


def materialize(cfg, root):
    """What the flow does: stage, validate, commit."""
    environment = environment_for(cfg)
    candidate = data_versioning.stage(cfg, root, environment)
    try:
        vocabulary = data_stages.checked_vocabulary(cfg, environment)
        data_stages.validate(cfg, root, vocabulary, candidate.directory, candidate.file_labels())
    except data_stages.DataValidationFailed:
        data_versioning.discard(candidate)
        raise
    return data_versioning.commit(cfg, root, candidate)


def user_files_config(directory, **names):
    paths = {"demonstrations": "d.jsonl", "preferences": "p.jsonl", "eval_prompts": "e.jsonl", **names}
    return load_config(
        "smoke",
        {
            "data": {"source": "files", "files": {k: str(directory / v) for k, v in paths.items()}},
            "evaluation": {"judge": {"kind": "python", "entry_point": "tests.judges:words_of_praise"}},
            "validation": {
                "check_vocabulary": False,
                "demonstrations_rows": {"min": 1, "max": 10},
                "preferences_rows": {"min": 1, "max": 10},
                "eval_prompts_rows": {"min": 1, "max": 10},
            },
        },
    )


def test_first_run_records_a_version_and_second_run_verifies_it(git_repo):
    first = materialize(SMOKE, git_repo)
    assert first.action == NEW_VERSION and first.previous_md5 is None
    recorded = yaml.safe_load((git_repo / "data.dvc").read_text())
    assert recorded["outs"][0]["md5"] == first.version.md5 + ".dir"
    assert set(recorded["meta"]["files"]) == {
        "demonstrations.jsonl",
        "preferences.jsonl",
        "eval_prompts.jsonl",
        "manifest.json",
    }
    second = materialize(SMOKE, git_repo)
    assert second.action == VERIFIED and second.version.md5 == first.version.md5
    assert dvc_status(git_repo, SMOKE.versioning) == {}  # pushed: the local remote holds this version
    assert not any((git_repo / STAGING_DIR).iterdir())


@pytest.mark.faults
def test_a_failed_push_does_not_stop_the_run_and_the_next_run_pushes(git_repo):
    """The remote cannot be written (its path is a file): the version is recorded and the run goes on, saying why it
    was not pushed; the next run, with the remote back, finds the same version and pushes it (before, a verified
    version returned before pushing, so it never reached the remote)."""
    cfg = SMOKE.model_copy(update={"versioning": SMOKE.versioning.model_copy(update={"remote_url": "../blocked"})})
    blocked = git_repo / "blocked"
    blocked.write_text("not a directory")
    first = materialize(cfg, git_repo)
    assert first.action == NEW_VERSION and first.push_error and "dvc push" in first.push_error
    blocked.unlink()
    assert dvc_status(git_repo, cfg.versioning) != {}  # the remote, back, lacks this version
    second = materialize(cfg, git_repo)
    assert second.action == VERIFIED and second.version.md5 == first.version.md5 and second.push_error is None
    assert dvc_status(git_repo, cfg.versioning) == {}


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


def _write_user_files(source):
    source.mkdir()
    (source / "d.jsonl").write_text('{"prompt": "say hi", "response": "hi there, friend."}\n')
    (source / "p.jsonl").write_text('{"prompt": "say hi", "chosen": "hi there, friend.", "rejected": "go away now."}\n')
    (source / "e.jsonl").write_text('{"prompt": "say bye"}\n')


def test_user_files_are_imported_and_versioned(git_repo, tmp_path):
    _write_user_files(tmp_path / "mine")
    result = materialize(user_files_config(tmp_path / "mine"), git_repo)
    assert result.action == NEW_VERSION and result.version.meta["source"] == "files"
    rows = files.read_jsonl(git_repo / "data" / "preferences.jsonl", files.PREFERENCES)
    assert rows[0].data["chosen"] == "hi there, friend."


def test_bad_user_file_is_reported_by_its_own_path_and_lands_nothing(git_repo, tmp_path):
    good = materialize(SMOKE, git_repo).version
    before = {p.name: p.read_bytes() for p in (git_repo / "data").iterdir()}
    dvc_file = (git_repo / "data.dvc").read_bytes()
    _write_user_files(tmp_path / "mine")
    (tmp_path / "mine" / "p.jsonl").write_text(
        '{"prompt": "say hi", "chosen": "the same answer.", "rejected": "the same answer."}\n'
    )
    with pytest.raises(data_stages.DataValidationFailed) as failed:
        materialize(user_files_config(tmp_path / "mine"), git_repo)
    (failure,) = failed.value.report.failures
    assert failure.file == str(tmp_path / "mine" / "p.jsonl") and failure.lines == [1]
    assert {p.name: p.read_bytes() for p in (git_repo / "data").iterdir()} == before
    assert (git_repo / "data.dvc").read_bytes() == dvc_file and good.md5 in dvc_file.decode()
    assert not any((git_repo / STAGING_DIR).iterdir())


def test_hf_dataset_saved_to_disk_is_imported(git_repo, tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"prompt": "say hi", "response": "hi there, friend."}]).save_to_disk(str(tmp_path / "demos"))
    Dataset.from_list([{"prompt": "say hi", "chosen": "hi there, friend.", "rejected": "go away now."}]).save_to_disk(
        str(tmp_path / "prefs")
    )
    Dataset.from_list([{"prompt": "say bye"}]).save_to_disk(str(tmp_path / "evals"))
    materialize(
        user_files_config(tmp_path, demonstrations="demos", preferences="prefs", eval_prompts="evals"), git_repo
    )
    rows = files.read_jsonl(git_repo / "data" / "demonstrations.jsonl", files.DEMONSTRATIONS)
    assert [r.data for r in rows] == [{"prompt": "say hi", "response": "hi there, friend."}]
    assert (git_repo / "data.dvc").exists()


def test_generator_change_without_a_new_version_is_drift_and_lands_nothing(git_repo, monkeypatch):
    """Same recipe, different bytes: the generator changed but GENERATOR_VERSION did not."""
    version = materialize(SMOKE, git_repo).version
    real_write = data_versioning.write_candidate

    def changed_generator(cfg, directory, environment):
        manifest = real_write(cfg, directory, environment)
        with open(directory / "demonstrations.jsonl", "a") as handle:
            handle.write('{"prompt": "x", "response": "one more row."}\n')
        return manifest

    monkeypatch.setattr(data_versioning, "write_candidate", changed_generator)
    with pytest.raises(DataDrift, match=f"records {version.md5}.*GENERATOR_VERSION"):
        materialize(SMOKE, git_repo)
    assert yaml.safe_load((git_repo / "data.dvc").read_text())["outs"][0]["md5"] == version.dvc_md5
    assert not any((git_repo / STAGING_DIR).iterdir())
