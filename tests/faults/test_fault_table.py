"""The fault table: each row a fault the pipeline must survive, with the outcome asserted.

Real servers where a server is involved (MLflow and Prefect started on 127.0.0.1 by the fixtures);
a patched writer only for the one fault that cannot be caused otherwise here (a full disk).
"""

import errno
import json
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.config import load_config
from components.data.files import DEMONSTRATIONS, file_name
from flows.execution.ports import free_port
from tests.data_files import DEFECTS, write_good_dir
from tests.flow_helpers import (
    TRAINING_TASKS,
    flow_overrides,
    latest_flow_run,
    new_project,
    registry_state,
    run_main,
    seed_champion,
)
from tests.layout import stage_dir, stage_dirs

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
# --- config, tracking server ------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("ppo.bogus=1", "ppo.bogus"),
        ("sft.batch_size=abc", "sft.batch_size"),
        ("ppo.lr=-0.1", "ppo.lr"),
        ("sft.batch_size=0", "sft.batch_size"),
        ("comparisons.rounds=3", "comparisons.rounds (3) exceeds ppo.iterations (2)"),  # across sections
        ("data={source: files, files: {demonstrations: d, preferences: p, eval_prompts: e}}", "evaluation.judge.kind"),
    ],
)
def test_a_bad_config_is_rejected_before_any_work_naming_the_key(override, key, tmp_path, capsys):
    """The main command's own entry point, in this process (tests/data/test_main_job.py runs it as a program)."""
    from flows.pipeline import main

    root = new_project(tmp_path)
    code = main(["--profile", "smoke", "--root", str(root), "--set", override])
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert key in stderr
    assert sorted(p.name for p in root.iterdir()) == [".git"]  # no data, no models, no tracking store


def test_a_human_judge_without_a_prefect_server_to_resume_on_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from flows.pipeline import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    root = new_project(tmp_path)
    code = main(["--profile", "smoke", "--root", str(root), "--set", "evaluation.judge.kind=human"])
    stderr = capsys.readouterr().err
    assert code == 2 and "run it against a Prefect server" in stderr and "PREFECT_API_URL" in stderr, stderr
    assert sorted(p.name for p in root.iterdir()) == [".git"]


def test_a_stage_that_cannot_fit_its_device_stops_the_run_before_any_training(prefect_server, tmp_path):
    """The memory plan runs before the first stage trains: a rank allowed almost none of its memory refuses every
    stage, exit 2, the stages' numbers named; no model is written."""
    root = new_project(tmp_path)
    done = run_main(root, tmp_path, prefect_server[0], ["distributed.memory_fraction=0.0000001"])
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "memory plan, per rank: sft needs" in done.stderr and "ppo needs" in done.stderr
    assert "GiB" in done.stderr and "model.gradient_checkpointing" in done.stderr
    assert not (root / "artifacts" / "models").exists()


def test_an_unreachable_tracking_server_stops_the_run_before_any_training(prefect_server, tmp_path):
    root = new_project(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = run_main(root, tmp_path, prefect_server[0], env={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 4, done.stderr[-3000:]
    assert f"the MLflow tracking server at {uri} is unreachable" in done.stderr
    assert time.monotonic() - started < 120  # the health check, not MLflow's minutes of retries
    assert not (root / "data").exists() and not (root / "artifacts").exists()


def test_a_run_failing_while_the_tracking_server_is_gone_keeps_its_own_error(
    prefect_server, tmp_path, monkeypatch, caplog
):
    """Closing the MLflow run of a failed pipeline run must not replace the run's error with its own
    (the server may be what failed): the first error stands and the log says the run stays RUNNING."""
    from types import SimpleNamespace

    from prefect import flow

    from components.adapters.tracking import StageRun
    from flows.execution.run_tracking import Tracking, close_tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"  # the tracking server is gone
    tracking = Tracking(SimpleNamespace(uri=uri), StageRun(MlflowClient(uri), "0" * 32), tmp_path)

    @flow(name="closing-after-a-failure")
    def failing_run():
        try:
            raise RuntimeError("register: the stage's own failure")
        except RuntimeError as error:
            close_tracking(tracking, error)
            raise

    with temporary_settings({PREFECT_API_URL: prefect_server[0]}):
        with pytest.raises(RuntimeError, match="the stage's own failure"):
            failing_run()
        flow_run, _, _ = latest_flow_run()
    assert flow_run.state.is_failed() and "the stage's own failure" in flow_run.state.message
    logs = [record.getMessage() for record in caplog.records if record.name == "prefect.flow_runs"]
    assert any(
        f"could not mark MLflow run {'0' * 32} FAILED at {uri}" in line and "stays RUNNING" in line for line in logs
    ), logs


# --- NaN mid-training -----------------------------------------------------------------------------


def test_nan_mid_ppo_fails_naming_stage_and_step_and_registers_nothing(
    in_process_flow, mlflow_server, prefect_server, tmp_path
):
    root = new_project(tmp_path)
    # the stages before PPO trained by an earlier run in this process: one process in the flow's or launched has the
    # same stage keys, so the launched run below reuses them and launches PPO alone (a launch is ~10 s of start-up)
    in_process_flow(root, [])
    ppo_before = stage_dirs(root, "ppo")
    champion = seed_champion(mlflow_server)
    before = registry_state(mlflow_server)
    # a learning rate of 1e10 blows the policy up after its first PPO minibatch: a real NaN, not an injected one;
    # under `accelerate launch`, so the rank's record of it is what names it (in the flow's process it raises as itself)
    overrides = ["ppo.lr=1e10", "distributed.launch=accelerate"]
    done = run_main(root, tmp_path, prefect_server[0], overrides, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ppo: non-finite policy_loss at step 0" in done.stderr and "nothing was registered" in done.stderr
    assert "reward_model: reusing the finished stage" in done.stdout + done.stderr and "ppo done" not in done.stderr
    assert registry_state(mlflow_server) == before and before[1] == champion
    assert (stage_dir(root, "reward_model") / "model.safetensors").is_file()  # the stages before PPO finished
    assert stage_dirs(root, "ppo") == ppo_before  # no policy of the failed PPO saved
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("rlhf-pipeline")
    [ppo_run] = client.search_runs(  # this run's: other tests' runs share the session's server
        [experiment.experiment_id], "tags.mlflow.runName = 'ppo'", order_by=["start_time DESC"], max_results=1
    )
    assert ppo_run.info.status == "FAILED" and "non-finite policy_loss" in ppo_run.data.tags["non_finite"]


# --- bad data through the whole flow (real Prefect server, in process) --------------------------


# the vocabulary and its character set are rules of the embedded task, off for user files (check_vocabulary=false);
# a JSON array and a contradicting pair fail validation like the defects of their kind (parse, a rule over rows)
FLOW_DEFECTS = sorted(
    name
    for name in DEFECTS
    if name not in ("out_of_vocabulary", "unknown_character", "json_array", "contradicting_pair")
)


def test_every_corrupt_data_case_fails_the_flow_at_validation_and_touches_nothing(
    in_process_flow, mlflow_server, tmp_path
):
    from components.adapters.data_stages import DataValidationFailed

    seed_champion(mlflow_server)
    before = registry_state(mlflow_server)
    good = write_good_dir(tmp_path / "good")
    for name in FLOW_DEFECTS:
        defect = DEFECTS[name]
        data_dir = tmp_path / name
        shutil.copytree(good, data_dir)
        defect.apply(data_dir)
        root = new_project(tmp_path / f"root-{name}")
        with pytest.raises(DataValidationFailed) as failure:
            in_process_flow(root, flow_overrides(data_dir))
        assert file_name(defect.dataset) in str(failure.value), name
        flow_run, tasks, artifacts = latest_flow_run()
        assert flow_run.state.is_failed(), (name, flow_run.state)
        assert (
            "FAILED" in artifacts["data-validation"].data
            and file_name(defect.dataset) in artifacts["data-validation"].data
        ), name
        assert not tasks & TRAINING_TASKS, (name, tasks)
        assert not (root / "data.dvc").exists() and not (root / "artifacts").exists(), name
    assert registry_state(mlflow_server) == before


def test_a_data_file_changed_after_data_dvc_is_refused_naming_the_file_and_both_hashes(in_process_flow, tmp_path):
    from components.adapters import data_versioning
    from components.adapters.versioning import DataDrift
    from flows.execution.task_choice import environment_for

    root = new_project(tmp_path)
    cfg = load_config("smoke")
    data_versioning.commit(
        cfg, root, data_versioning.stage(cfg, root, environment_for(cfg))
    )  # a recorded version, as a finished run leaves it
    recorded = (root / "data.dvc").read_text()
    edited = root / "data" / file_name(DEMONSTRATIONS)
    edited.write_text(edited.read_text().replace("the", "a", 1))
    with pytest.raises(DataDrift) as failure:
        in_process_flow(root, [])
    message = str(failure.value)
    assert file_name(DEMONSTRATIONS) in message and message.count("md5") >= 1
    hashes = [word.strip(",.():") for word in message.split() if len(word.strip(",.():")) == 32]
    assert len(set(hashes)) >= 2, message  # the recorded and the found hash
    flow_run, tasks, _ = latest_flow_run()
    assert flow_run.state.is_failed() and not tasks & TRAINING_TASKS
    assert (root / "data.dvc").read_text() == recorded


# --- gate inputs ------------------------------------------------------------------------------


MALFORMED, MISSING = "malformed", "missing"


@pytest.mark.parametrize(
    "report, kind, bad",
    [
        (None, MALFORMED, "report"),
        ({}, MISSING, None),
        ({"data_validation": {"success": True}}, MISSING, None),
        (
            {
                "data_validation": {"success": True},
                "non_finite_stages": [],
                "reward_model": {"accuracy": 0.9},
                "ppo_history": [],
                "modes": {"sample": None},
            },
            MISSING,
            None,
        ),
        (
            {
                "data_validation": "yes",
                "non_finite_stages": [],
                "reward_model": {"accuracy": 0.9},
                "ppo_history": [],
                "modes": {},
            },
            MALFORMED,
            "data_validation",
        ),
        (
            {
                "data_validation": {"success": True},
                "non_finite_stages": [],
                "reward_model": {"accuracy": "high"},
                "ppo_history": [],
                "modes": {"sample": None},
            },
            MALFORMED,
            "reward_model.accuracy",
        ),
        (
            {
                "data_validation": {"success": True},
                "non_finite_stages": [],
                "reward_model": {"accuracy": float("nan")},
                "ppo_history": None,
                "modes": [],
            },
            MALFORMED,
            "reward_model.accuracy",
        ),
    ],
)
def test_missing_or_malformed_gate_inputs_mean_do_not_promote_with_the_reason(report, kind, bad):
    """A report lacking pieces is read, and each rule needing a missing piece fails with "missing from the
    report: <path>"; a malformed report (wrong type, NaN) is refused when the gate input is built, and the
    pipeline records one failed reason, "gate input well-formed", naming the bad field. Neither promotes."""
    from components.evaluation.gate import decide_report

    decision = decide_report(report, load_config().gate)
    assert not decision.promote
    assert decision.failures and all(str(reason).strip() for reason in decision.failures)
    if kind == MISSING:
        assert len(decision.failures) > 1
        assert all("missing from the report" in reason.detail for reason in decision.failures)
        assert "gate input well-formed" not in {reason.rule for reason in decision.reasons}
    else:
        [reason] = decision.reasons
        assert reason.rule == "gate input well-formed" and not reason.passed and decision.score is None
        assert f"{bad}:" in reason.detail


# --- unsafe model directories --------------------------------------------------------------------


def test_model_directories_needing_remote_code_or_pickle_are_refused(tmp_path):
    from components.models.builders import UnsafeModelError, build_policy, load_causal_lm
    from components.models.tokenizer import build_word_tokenizer
    from components.task.lexicon import VOCABULARY

    cfg = load_config("smoke")
    tokenizer = build_word_tokenizer(VOCABULARY)
    policy = build_policy(cfg.model, tokenizer, 0)
    remote = tmp_path / "remote-code"
    policy.save_pretrained(remote, safe_serialization=True)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(
        json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}})
    )
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(UnsafeModelError, match="auto_map"):
        load_causal_lm(remote)

    pickled = tmp_path / "pickle-only"
    policy.save_pretrained(pickled, safe_serialization=False)
    if not list(pickled.glob("*.bin")):  # transformers 5 always writes safetensors: make the pickle-only dir by hand
        import torch

        for weights in pickled.glob("*.safetensors"):
            weights.unlink()
        torch.save(policy.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pickle weights are refused"):
        load_causal_lm(pickled)


# --- disk full while saving ----------------------------------------------------------------------


def test_a_full_disk_while_saving_keeps_the_previous_model_and_leaves_no_partial_one(tmp_path, monkeypatch):
    from components.models.builders import build_policy, load_causal_lm
    from components.models.saving import save_model
    from components.models.tokenizer import build_word_tokenizer
    from components.task.lexicon import VOCABULARY

    cfg = load_config("smoke")
    tokenizer = build_word_tokenizer(VOCABULARY)
    target = tmp_path / "models" / "ppo"
    save_model(build_policy(cfg.model, tokenizer, 0), tokenizer, target, {"stage": "ppo", "version": 1})
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    newer = build_policy(cfg.model, tokenizer, 1)
    real_save = type(newer).save_pretrained

    def disk_fills_up(self, directory, **kwargs):
        real_save(self, directory, **kwargs)
        weights = next(Path(directory).glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[:100])  # what a full disk leaves: a truncated file
        raise OSError(errno.ENOSPC, "No space left on device", str(weights))

    monkeypatch.setattr(type(newer), "save_pretrained", disk_fills_up)
    with pytest.raises(OSError, match="No space left on device"):
        save_model(newer, tokenizer, target, {"stage": "ppo", "version": 2})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the previous model, byte for byte
    assert sorted(p.name for p in target.parent.iterdir()) == ["ppo"]  # no staging directory left behind
    monkeypatch.undo()
    load_causal_lm(target)  # and it still loads


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    from components.training.checkpoints import PPOState, latest_checkpoint, save_checkpoint

    state = PPOState(2, 0.1, [3, [1, 2], None], ["p"], [{"iteration": 0}], {"policy": {"w": torch.ones(3)}})
    save_checkpoint(tmp_path, state)
    real_save = torch.save

    def disk_fills_up(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, PPOState(4, 0.1, [3, [1, 2], None], ["p"], [], {"policy": {"w": torch.zeros(3)}}))
    monkeypatch.undo()
    kept = latest_checkpoint(tmp_path)
    assert kept.iteration == 2 and torch.equal(kept.tensors["policy"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["iteration-000002"]


@pytest.mark.parametrize("damage", ["flipped byte in state.pt", "meta.json cut short", "state.pt gone"])
def test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_one_and_said_so(tmp_path, damage):
    """A complete checkpoint damaged after it was written (a disk that lied, a copy cut short) used to be resumed
    as it was, or to fail the resume; now its digests catch it and the previous kept checkpoint is resumed."""
    import torch

    from components.training.checkpoints import CorruptCheckpoint, PPOState, latest_checkpoint, save_checkpoint

    for iteration, value in ((2, 1.0), (4, 2.0)):
        weights = {"policy": {"w": torch.full((3,), value)}}
        save_checkpoint(tmp_path, PPOState(iteration, 0.1, [3, [1, 2], None], ["p"], [], weights))
    latest = tmp_path / "iteration-000004"
    if damage == "flipped byte in state.pt":
        data = bytearray((latest / "state.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (latest / "state.pt").write_bytes(bytes(data))
    elif damage == "meta.json cut short":
        (latest / "meta.json").write_text((latest / "meta.json").read_text()[:20])
    else:
        (latest / "state.pt").unlink()
    kept = latest_checkpoint(tmp_path)
    assert kept.iteration == 2 and torch.equal(kept.tensors["policy"]["w"], torch.ones(3))
    [reason] = kept.passed_over
    assert reason.startswith("iteration-000004: files differ from their digests")
    assert ("state.pt" if "state" in damage else "meta.json") in reason

    (tmp_path / "iteration-000002" / "meta.json").write_text("{}")  # nothing intact left: refused, named
    with pytest.raises(CorruptCheckpoint, match=r"no checkpoint in .* is intact: iteration-000004: .*iteration-000002"):
        latest_checkpoint(tmp_path)
