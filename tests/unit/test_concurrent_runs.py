"""What lets two runs share one project root and one registry: per-key locks on finished stage
outputs, and champion arbitration by gate score (a real MLflow SQLite store, no server)."""

import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components import locks
from components.adapters.tracking import CHALLENGER, CHAMPION, Tracker
from components.config import load_config
from components.evaluation.gate import decide, gate_input, gate_score
from components.io import write_json
from components.models.stage_store import StageStore


def test_a_second_claim_of_a_key_waits_for_the_first_and_then_finds_its_output(tmp_path):
    store = StageStore(tmp_path)
    events = []

    def first():
        with store.claim("artifacts/models/sft", "k1") as directory:
            events.append("first holds")
            time.sleep(0.5)
            directory.mkdir(parents=True)
            write_json(directory / "rlhf_card.json", {"stage_key": "k1", "metrics": {}})
            events.append("first saved")

    thread = threading.Thread(target=first)
    thread.start()
    while not events:
        time.sleep(0.01)
    with store.claim("artifacts/models/sft", "k1", on_wait=lambda: events.append("second waits")):
        events.append("second holds")
        assert store.finished("artifacts/models/sft", "k1") == {"stage_key": "k1", "metrics": {}}
    thread.join()
    assert events == ["first holds", "second waits", "first saved", "second holds"]
    with store.claim("artifacts/models/sft", "k2", on_wait=lambda: events.append("never")):
        assert store.finished("artifacts/models/sft", "k2") is None  # another key: no wait, nothing there
    assert "never" not in events


def finished_output(store: StageStore, key: str, used_at: float) -> Path:
    directory = store.path("artifacts/models/ppo", key)
    directory.mkdir(parents=True)
    write_json(directory / "rlhf_card.json", {"stage_key": key, "metrics": {}})
    os.utime(directory / "rlhf_card.json", (used_at, used_at))
    return directory


def test_pruning_keeps_the_most_recently_used_outputs_and_any_in_use_or_claimed(tmp_path):
    store = StageStore(tmp_path)
    outputs = {
        key: finished_output(store, key, 1000.0 + i) for i, key in enumerate(["k0", "k1", "k2", "k3", "k4", "k5"])
    }
    store.touch("artifacts/models/ppo", "k0")  # reused just now: the most recent
    held = threading.Event()
    release = threading.Event()

    def another_run_claims_k2():
        with store.claim("artifacts/models/ppo", "k2"):
            held.set()
            release.wait(30)

    claimer = threading.Thread(target=another_run_claims_k2)
    claimer.start()
    held.wait(30)
    try:
        removed = store.prune("artifacts/models/ppo", keep=2, in_use={"k1"})
    finally:
        release.set()
        claimer.join()
    # kept: the 2 most recent (k0 touched, k5), k1 (this run's), k2 (claimed by a live run); removed: k3, k4
    assert sorted(p.name for p in removed) == ["k3", "k4"]
    assert sorted(p.name for p in (tmp_path / "artifacts/models/ppo").iterdir()) == ["k0", "k1", "k2", "k5"]
    assert all(outputs[k].is_dir() for k in ("k0", "k1", "k2", "k5"))
    assert store.prune("artifacts/models/sft", keep=1, in_use=set()) == []  # a stage that never ran


def test_a_killed_holder_releases_its_lock(tmp_path):
    lock = tmp_path / "data.lock"
    code = (
        f"from components import locks; import time\nwith locks.exclusive({str(lock)!r}):\n"
        "    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    waited = []
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with locks.exclusive(lock, on_wait=lambda: waited.append(True)):
        pass  # would block forever if the dead process still held it
    assert len(waited) <= 1


def report(lower_bounds: dict[str, float]) -> dict:
    """An evaluation report where PPO beats every baseline, with the given win-rate lower bound per mode."""
    policies = {
        name: {"gold": {"value": gold}}
        for name, gold in (("sft", 1.0), ("chosen", 1.5), ("top_ranked", 1.6), ("combined", 1.4), ("dpo", 2.0))
    }
    wins = lambda lo: {name: {"value": lo + 0.15, "ci": [lo + (name != "dpo") * 0.1, lo + 0.2]} for name in policies}  # noqa: E731
    return {"modes": {mode: {"policies": policies, "ppo_win_rate": wins(lo)} for mode, lo in lower_bounds.items()}}


def test_the_gate_score_is_the_weakest_mode_lower_bound():
    cfg = load_config("default").gate
    assert gate_score(gate_input(report({"sample": 0.61, "greedy": 0.57})), cfg) == pytest.approx(0.57)
    assert gate_score(gate_input({"modes": {}}), cfg) is None
    assert decide(gate_input(report({"sample": 0.61, "greedy": 0.57})), cfg).score == pytest.approx(0.57)


@pytest.fixture
def tracker(tmp_path):
    cfg = load_config("default", [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]).tracking
    return Tracker(cfg, tmp_path)


def test_a_run_finding_the_registered_model_just_created_by_another_goes_on(tracker, tmp_path):
    """Two first runs on a store used to race between "does the model exist?" and "create it"; the loser
    failed with RESOURCE_ALREADY_EXISTS. Now each creates and takes "already exists" as done."""
    other = Tracker(tracker.cfg, tmp_path)  # another run on the same store, first to register
    other.ensure_registered_model()
    tracker.ensure_registered_model()
    assert [m.name for m in tracker.client.search_registered_models()] == [tracker.cfg.registered_model]


def test_a_run_losing_the_race_to_create_the_experiment_uses_the_winners(tracker, tmp_path, monkeypatch):
    """The window between "no such experiment" and "create it", forced: another run created it in between."""
    real, lookups = MlflowClient.get_experiment_by_name, []

    def stale_first(self, name):
        lookups.append(name)
        return None if len(lookups) == 1 else real(self, name)  # the first lookup still sees no experiment

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale_first)
    assert Tracker(tracker.cfg, tmp_path).experiment_id == tracker.experiment_id
    assert len(lookups) == 2  # it tried to create, found it taken, and looked again


def new_version(tracker: Tracker, data_md5: str) -> str:
    """A registered version as `register` leaves it (tagged with its data), before the gate's decision is recorded."""
    run = tracker.start_run("pipeline")
    tracker.client.log_text(run.run_id, "a policy", "policy/README.txt")
    name = tracker.cfg.registered_model
    tracker.ensure_registered_model()
    return str(
        tracker.client.create_model_version(
            name, f"runs:/{run.run_id}/policy", run.run_id, tags={"data.md5": data_md5}
        ).version
    )


def test_champion_goes_to_the_better_gated_version_on_the_same_data(tracker):
    v1, v2, v3 = (new_version(tracker, "aaa") for _ in range(3))
    assert tracker.record_decision(v1, "promote", ["ok"], 0.60) == f"version {v1} is champion"
    why = tracker.record_decision(v2, "promote", ["ok"], 0.55)
    assert why == f"version {v1} stays champion: gate score 0.600 > 0.550 on the same data"
    assert tracker.record_decision(v3, "reject", ["no"], 0.70).startswith("not promoted")
    assert (tracker.alias_version(CHAMPION), tracker.alias_version(CHALLENGER)) == (v1, v3)
    tags = MlflowClient(tracker.uri).get_model_version(tracker.cfg.registered_model, v2).tags
    assert tags["gate.score"] == "0.550000" and tags["gate.champion"] == why

    v4 = new_version(tracker, "bbb")  # other data: scores not comparable, the newer version wins
    assert tracker.record_decision(v4, "promote", ["ok"], 0.30) == f"version {v4} is champion"
    v5 = new_version(tracker, "ccc")
    # a slow run (v2) deciding late moves neither alias back
    assert (
        tracker.record_decision(v2, "promote", ["ok"], 0.55)
        == f"version {v4} stays champion: it is the newer version and was gated on other data"
    )
    assert (tracker.alias_version(CHAMPION), tracker.alias_version(CHALLENGER)) == (v4, v4)
    assert tracker.record_decision(v5, "promote", ["ok"], 0.10) == f"version {v5} is champion"


def test_runs_deciding_at_the_same_moment_leave_champion_at_the_better_one(tracker):
    weaker, stronger = new_version(tracker, "aaa"), new_version(tracker, "aaa")
    barrier = threading.Barrier(2)

    def decide_now(version, score):
        barrier.wait()
        tracker.record_decision(version, "promote", ["ok"], score)

    threads = [
        threading.Thread(target=decide_now, args=(stronger, 0.62)),
        threading.Thread(target=decide_now, args=(weaker, 0.51)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.alias_version(CHAMPION) == stronger
    assert tracker.alias_version(CHALLENGER) == max(weaker, stronger, key=int)


@pytest.mark.faults
def test_an_error_reading_the_champion_fails_the_decision_and_leaves_the_champion_alone(tracker, monkeypatch):
    """A transient store error (SQLite's "database is locked", a server's 5xx) inside the alias read used to read as
    "no champion", so a weaker version took `champion`. Now the error is raised (the register task's retries take it)
    and the aliases stay; a missing alias or model still reads as none."""
    import mlflow

    assert tracker.alias_version(CHAMPION) is None  # no registered model yet
    stronger, weaker = new_version(tracker, "aaa"), new_version(tracker, "aaa")
    assert tracker.alias_version(CHAMPION) is None  # a model without the alias
    assert tracker.record_decision(stronger, "promote", ["ok"], 0.62) == f"version {stronger} is champion"

    def locked_inside_the_alias_read(read):
        def patched(self, *args, **kwargs):
            if any(frame.function == "alias_version" for frame in inspect.stack()):
                raise mlflow.exceptions.MlflowException(
                    "(sqlite3.OperationalError) database is locked", "INTERNAL_ERROR"
                )
            return read(self, *args, **kwargs)

        return patched

    with monkeypatch.context() as patch:
        for read in ("get_registered_model", "get_model_version_by_alias"):  # either way of reading an alias
            patch.setattr(MlflowClient, read, locked_inside_the_alias_read(getattr(MlflowClient, read)))
        with pytest.raises(mlflow.exceptions.MlflowException, match="database is locked"):
            tracker.record_decision(weaker, "promote", ["ok"], 0.51)
    assert tracker.alias_version(CHAMPION) == stronger
    assert tracker.record_decision(weaker, "promote", ["ok"], 0.51).startswith(f"version {stronger} stays champion")
