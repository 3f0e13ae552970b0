"""The README's main command, run for real (Prefect in ephemeral mode, real DVC and Great Expectations)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import load_config
from components.io import sha256_file
from components.offline import TELEMETRY_OFF
from tests.conftest import git, new_repo
from tests.layout import run_records, stage_dir, stage_dirs

pytestmark = pytest.mark.slow  # whole flows, ~4 minutes

REPO = Path(__file__).resolve().parents[2]


def run(args, cwd, tmp_path, prefect_api: str | None = None, telemetry_env: bool = True):
    """As a user runs it: ephemeral Prefect (or the session's server, ``prefect_api``, which saves
    starting one), the project's own MLflow store (whatever servers earlier tests pointed this process at).
    ``telemetry_env`` False: without the suite's telemetry switches either (only for commands that set their own)."""
    dropped = {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", *(() if telemetry_env else TELEMETRY_OFF)}
    base = {k: v for k, v in os.environ.items() if k not in dropped}
    env = {
        **base,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_project(tmp_path_factory) -> Path:
    """A committed project whose default profile is small (smoke-sized, 300 rows), its data built and locked by
    `dvc repro`; each test clones it, as a user gets it."""
    tmp = tmp_path_factory.mktemp("small-project")
    git_repo = new_repo(tmp / "origin")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {**params, **params["profiles"]["smoke"]}  # a small default profile for this project
    params["data"] = {
        **yaml.safe_load((REPO / "params.yaml").read_text())["data"],
        "synthetic": {"n_demonstrations": 300, "n_comparison_prompts": 300},
    }
    (git_repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", git_repo / "dvc.yaml")
    for package in ("components", "flows"):  # dvc.yaml's stages run flows/data_cli.py, which uses both
        shutil.copytree(REPO / package, git_repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert run(["-m", "flows.data_cli", "build"], git_repo, tmp).returncode == 0
    repro = run(["-m", "dvc", "repro"], git_repo, tmp)
    assert repro.returncode == 0, repro.stderr
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-qm", "project")
    return git_repo


def clone_of(origin: Path, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    return clone


def main_command(clone: Path) -> list[str]:
    """The README's main command, run on ``clone`` with its own params.yaml."""
    return ["-m", "flows.pipeline", "--root", str(clone), "--params", str(clone / "params.yaml")]


@pytest.fixture(scope="module")
def main_job(small_project, tmp_path_factory):
    """The main command on a fresh clone of the small project, with Prefect's ephemeral server as a user gets it:
    (root, temp dir, the finished process, its run record)."""
    tmp = tmp_path_factory.mktemp("main-job")
    root = clone_of(small_project, tmp)
    done = run(main_command(root), REPO, tmp, telemetry_env=False)  # the command turns telemetry off itself
    assert done.returncode == 0, done.stderr[-3000:]
    return root, tmp, done, run_records(root)[0]


def test_main_job_runs_every_stage_and_ends_with_the_decision(main_job):
    git_repo, _, done, record = main_job
    md5 = record["data_version"]["md5"]
    assert md5 == yaml.safe_load((git_repo / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    assert f"data version : {md5} (rebuilt" in done.stdout  # the clone has data.dvc, not the data
    assert "agree with the gold judge" in done.stdout
    assert "validation   : passed; Data Docs at " in done.stdout  # Great Expectations ran: nothing to reuse yet
    assert "evaluation: reusing" not in done.stdout + done.stderr  # every held-out response decoded by this run
    docs = done.stdout.split("Data Docs at ")[1].split()[0]
    assert Path(docs).is_file()
    version = json.loads((git_repo / "artifacts/prepared/data_version.json").read_text())
    assert version["md5"] == md5 and version["rows"]["rm_valid"] > 0
    # the training stages ran and left their models, the comparisons were collected and validated
    assert record["status"] == "completed" and record["decision"]["decision"] == "reject"
    for stage in ("sft", "reward_model", "chosen", "top_ranked", "combined", "dpo", "ppo"):
        directory = Path(record["stages"][stage]["directory"])
        assert directory.parent == git_repo / "artifacts/models" / stage and not record["stages"][stage]["reused"], (
            stage
        )
        assert (directory / "model.safetensors").is_file(), stage
    assert (stage_dir(git_repo, "comparisons", "artifacts") / "preferences.jsonl").stat().st_size > 0
    assert (
        "== sample decoding, held-out prompts ==" in done.stdout
        and "== greedy decoding, held-out prompts ==" in done.stdout
    )
    # the terms of the comparison: one SFT start, one prompt set, each policy's labels and configurations tried
    assert f"one SFT start {record['stages']['sft']['key']}" in done.stdout
    budgets = done.stdout.split("== what each policy used")[1].split("decision:")[0]
    assert [line.split()[0] for line in budgets.splitlines()[2:9]] == [
        "sft",
        "ppo",
        "best_of_n",
        "chosen",
        "top_ranked",
        "combined",
        "dpo",
    ]
    # the smoke models learn next to nothing: the gate must say so, and nothing becomes champion
    assert "decision: reject" in done.stdout
    assert "rlhf-policy version 1 (reject); champion = none, challenger = 1" in done.stdout
    assert (git_repo / "mlruns/mlflow.db").is_file()
    # the temporary Prefect server was started before the imports, was the one Prefect used, and is gone
    port = int(done.stderr.split("Starting temporary Prefect server on 127.0.0.1:")[1].split()[0])
    assert "Starting temporary server" not in done.stderr + done.stdout  # Prefect did not start a second one
    assert f"Stopping temporary Prefect server on 127.0.0.1:{port}" in done.stderr
    # no ERROR on a clean run: the early server used to start before telemetry was off and log its failure to phone home
    assert "| ERROR" not in done.stderr + done.stdout and "telemetry" not in done.stderr + done.stdout
    # nor third parties' progress bars and advice in the log (the stages run in this process and save models)
    assert "Writing model shards" not in done.stderr + done.stdout and "attention_mask" not in done.stderr + done.stdout
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_main_job_stops_at_bad_data_and_touches_nothing(git_repo, tmp_path, prefect_server):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "d.jsonl").write_text('{"prompt": "say hi", "response": "hi there, friend."}\n')
    (mine / "p.jsonl").write_text(
        '{"prompt": "say hi", "chosen": "hi there, friend.", "rejected": "go away now."}\n'
        '{"prompt": "say hi", "chosen": 5}\n'
    )
    (mine / "e.jsonl").write_text('{"prompt": "say bye"}\n')
    overrides = [
        "data.source=files",
        f"data.files={{demonstrations: {mine / 'd.jsonl'}, preferences: {mine / 'p.jsonl'}, "
        f"eval_prompts: {mine / 'e.jsonl'}}}",
        "validation.check_vocabulary=false",
        "evaluation.judge.kind=python",
        "evaluation.judge.entry_point=tests.judges:words_of_praise",
    ]
    args = ["-m", "flows.pipeline", "--profile", "smoke", "--root", str(git_repo)]
    for item in overrides:
        args += ["--set", item]
    done = run(args, REPO, tmp_path, prefect_server[0])
    assert done.returncode == 2
    assert f"{mine / 'p.jsonl'}: field 'chosen' is a string [parse]" in done.stderr
    assert "line 2" in done.stderr and "Data Docs:" in done.stderr
    assert not (git_repo / "data").exists() and not (git_repo / "data.dvc").exists()
    assert not (git_repo / "artifacts").exists()


def test_bad_config_is_refused_before_any_work(git_repo, tmp_path):
    done = run(
        ["-m", "flows.pipeline", "--profile", "smoke", "--root", str(git_repo), "--set", "prepare.rm_valid_fraction=2"],
        REPO,
        tmp_path,
    )
    assert done.returncode == 2 and "prepare.rm_valid_fraction" in done.stderr
    assert not (git_repo / ".dvc").exists()
    assert "Starting temporary Prefect server" not in done.stderr  # refused before the server and the heavy imports


def test_fresh_clone_rebuilds_the_data_with_dvc_to_the_recorded_hashes(small_project, tmp_path):
    """Build and commit a small project, clone it, rebuild with DVC: same hashes as data.dvc and dvc.lock."""
    clone = clone_of(small_project, tmp_path)

    rebuilt = run(["-m", "dvc", "repro", "generate"], clone, tmp_path)  # needs no data on disk
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads((clone / "reports/data/rebuild.json").read_text())["match"] is True
    assert run(["-m", "flows.data_cli", "build"], clone, tmp_path).returncode == 0
    repro = run(["-m", "dvc", "repro"], clone, tmp_path)
    assert repro.returncode == 0, repro.stderr
    assert git(clone, "status", "--porcelain", "data.dvc", "dvc.lock") == ""  # every hash as recorded


def test_dvc_status_is_clean_after_the_main_job_on_a_fresh_clone(main_job, tmp_path):
    """The main job runs dvc.yaml's data stages as tasks and records them in dvc.lock: a DVC user sees a clean
    pipeline after it, and the same data.dvc and dvc.lock as committed (the data rebuilt to the same hashes)."""
    clone = main_job[0]
    status = run(["-m", "dvc", "status", "--json"], clone, tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
    assert json.loads((clone / "reports/data/rebuild.json").read_text())["match"] is True
    assert git(clone, "status", "--porcelain", "data.dvc", "dvc.lock") == ""


def test_a_rerun_reuses_finished_stages_and_retrains_only_what_changed(main_job, prefect_server):
    git_repo, tmp_path, first_run, first = main_job
    args = main_command(git_repo)
    before = {
        stage: (stage_dir(git_repo, stage) / "model.safetensors").stat().st_mtime_ns
        for stage in ("sft", "reward_model", "dpo", "ppo")
    }

    again = run([*args, "--set", "ppo.cliprange=0.3"], REPO, tmp_path, prefect_server[0])  # only PPO's section
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    second = run_records(git_repo)[1]["stages"]
    assert {s for s in before if second[s]["reused"]} == {"sft", "reward_model", "dpo"}
    assert all(second[s]["key"] == first["stages"][s]["key"] for s in ("sft", "reward_model", "dpo"))
    assert second["ppo"]["key"] != first["stages"]["ppo"]["key"]
    # finished outputs are never rewritten: the reused ones are untouched, the first PPO policy is still there
    assert all(
        (stage_dir(git_repo, s) / "model.safetensors").stat().st_mtime_ns == before[s]
        for s in ("sft", "reward_model", "dpo")
    )
    assert len(stage_dirs(git_repo, "ppo")) == 2
    assert "reusing the finished stage" in log
    # the same data files under the same suites: the validation that passed is reused, its Data Docs with it
    assert "validation   : passed (the same files passed the same suites before; not run again)" in again.stdout
    card = json.loads((Path(second["ppo"]["directory"]) / "rlhf_card.json").read_text())
    assert card["config"]["ppo"]["cliprange"] == 0.3 and card["runtime"]["processes"] == 1
    # held-out responses: every policy but PPO was decoded by the first run from the same weights, reference, reward
    # model, prompts and settings, so only PPO is decoded again; the judge scores them all afresh, to the same numbers
    modes = load_config("smoke").evaluation.modes
    policies = set(second) - {"reward_model", "ppo"}
    assert set(re.findall(r"evaluation: reusing the (\w+) responses of (\w+) in ", log)) == {
        (mode, policy) for mode in modes for policy in policies
    } | {("sample", "best_of_n")}
    assert "responses of ppo" not in log

    for mode in modes:
        assert len(measured(again, mode, policies)) == len(policies), mode
        assert measured(again, mode, policies) == measured(first_run, mode, policies), mode


def measured(done, mode, policies) -> dict:
    """policy -> its gold mean [CI], RM, KL, length and unterminated share, as the main command printed them."""
    block = done.stdout.split(f"== {mode} decoding, held-out prompts ==")[1].split("\n==")[0]
    rows = [line.split() for line in block.splitlines()]
    return {row[0]: row[1:8] for row in rows if row and row[0] in policies}


def test_a_two_process_profile_runs_every_stage_on_two_processes(main_job, prefect_server):
    """The profile is the whole run's: under cpu-2proc every stage that trains or decodes is launched on two ranks,
    and since two processes sum in another order than one, every trained stage is trained again (the process count is
    in its key)."""
    git_repo, tmp_path, _, first = main_job
    two = ["--set", "distributed.accelerate_config=infra/accelerate/cpu-2proc.yaml"]
    again = run([*main_command(git_repo), *two], REPO, tmp_path, prefect_server[0])
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    flat = " ".join(log.split())  # the console may wrap a long log line
    for call in ("sft", "comparisons", "reward_model", "baseline", "decode"):  # every rank's start line, each stage
        for rank in (0, 1):
            assert re.search(rf"rank {rank}/2 pid \d+ device cpu\S* threads \d+ stage {call}\b", flat), (call, rank)
    assert flat.count("baseline done: 2 process(es)") == 4 and "ppo done: 2 process(es)" in flat
    record = run_records(git_repo)[-1]["stages"]
    for stage in ("sft", "reward_model", "chosen", "top_ranked", "combined", "dpo", "ppo"):
        assert not record[stage]["reused"] and record[stage]["key"] != first["stages"][stage]["key"], stage
        card = json.loads((Path(record[stage]["directory"]) / "rlhf_card.json").read_text())
        assert card["runtime"]["processes"] == 2 and card["runtime"]["device"].startswith("cpu"), stage
    assert "responses of" not in log  # every policy is new: decoded again, in one launch


def test_the_same_params_and_seed_give_the_same_data_models_and_metrics(
    small_project, main_job, tmp_path, prefect_server
):
    """Reproducible on one machine: a second clone, same profile and seed, from nothing."""
    _, _, first, record = main_job
    other = clone_of(small_project, tmp_path)
    again = run(main_command(other), REPO, tmp_path, prefect_server[0])
    assert again.returncode == 0, again.stderr[-3000:]
    second = run_records(other)[0]
    assert second["data_version"]["md5"] == record["data_version"]["md5"]
    for stage, trained in record["stages"].items():
        assert second["stages"][stage]["key"] == trained["key"], stage
        weights = [Path(r["stages"][stage]["directory"]) / "model.safetensors" for r in (record, second)]
        if weights[0].is_file():
            assert sha256_file(weights[0]) == sha256_file(weights[1]), stage
    table = lambda done: done.stdout.split("== sample decoding")[1].split("registry     :")[0]  # noqa: E731
    assert "gold mean" in table(again) and table(again) == table(
        first
    )  # every metric and the decision, to the last digit
