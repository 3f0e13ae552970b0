"""The whole pipeline against a real MLflow server and a real Prefect server: nested runs, metrics
with steps, artefacts, registered versions, the `champion` alias moved by the gate alone, and two
runs at once on one project root and one registry.

The five runs of the `tiny` profile are the session's (tests/pipeline_runs.py), all at once:
`promoted` and `rival`, both under a loose gate, a negative control whose reward model learns
from shuffled labels, and the two negative controls of test_negative_controls.py. Every run has secrets
planted in its environment; none may reach any output, file or store.
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.config import load_config
from tests.flow_helpers import stage_runs
from tests.layout import run_records, stage_dirs
from tests.pipeline_runs import PROMOTED, SECRETS, parent_run_id

pytestmark = pytest.mark.integration

MODEL = "rlhf-policy"
# which runs compute each shared stage once between them: the control and the disagreeing ensemble train their own
# reward model; every run shares SFT and the supervised baselines
ALL_FIVE = ("promoted", "rival", "control", "hacked", "disagreeing")
RM_SHARERS = ("promoted", "rival", "hacked")
BASELINES = ("chosen", "top_ranked", "combined", "dpo")
SHARERS = {"sft": ALL_FIVE, "reward_model": RM_SHARERS, **{name: ALL_FIVE for name in BASELINES}}
OWN_DIRECTORIES = {"sft": 1, "reward_model": 3, **{name: 1 for name in BASELINES}}


@pytest.fixture(scope="module")
def runs(pipeline_runs):
    return pipeline_runs.done


@pytest.fixture(scope="module")
def project(pipeline_runs):
    return pipeline_runs.root


@pytest.fixture(scope="module")
def mlflow_server(pipeline_runs):
    """The runs' own MLflow server (this module's registry assertions count its versions)."""
    return pipeline_runs.mlflow_uri


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(mlflow_server)


def test_each_pipeline_run_is_a_parent_with_a_nested_run_per_stage(runs, client):
    parent = client.get_run(parent_run_id(runs["promoted"]))
    assert parent.info.status == "FINISHED"
    assert len(parent.data.tags["git.commit"]) in (40, len("unknown"))
    assert parent.data.tags["data.md5"] and parent.data.tags["gate.decision"] == "promote"
    assert parent.data.params["ppo.kl.kl_coef"] and parent.data.params["profile"] == "tiny"
    children = stage_runs(client, parent)
    names = set(children)
    assert {
        "data-validation",
        "sft",
        "comparisons",
        "reward_model",
        "baseline_chosen",
        "baseline_combined",
        "baseline_dpo",
        "ppo",
        "evaluation",
        "five_reasons",
        "gate",
    } <= names
    assert all(run.info.status == "FINISHED" for run in children.values())


def stage(client, runs, name, which="promoted"):
    return stage_runs(client, client.get_run(parent_run_id(runs[which])))[name]


def artifact_paths(client, run_id, path=None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_the_five_reasons_get_a_verdict_each_and_reason_three_its_own_measurement(runs, client):
    reasons = stage(client, runs, "five_reasons")
    verdicts = {key: value for key, value in reasons.data.tags.items() if key.startswith("reason.")}
    assert set(verdicts) == {f"reason.{n}" for n in range(1, 6)}
    assert set(verdicts.values()) <= {"confirmed", "refuted", "inconclusive", "not measured"}
    assert verdicts["reason.3"] != "not measured"  # the gold judge scores the one-token edits
    found = artifact_paths(client, reasons.info.run_id)
    assert {"five_reasons.json", "token_sensitivity.json", "plots/token_sensitivity.png"} <= found


def test_metrics_are_logged_per_step_and_final(runs, client):
    sft = stage(client, runs, "sft")
    losses = client.get_metric_history(sft.info.run_id, "loss")
    assert len(losses) >= 3 and [m.step for m in losses] == sorted(m.step for m in losses)
    assert losses[-1].value < losses[0].value
    ppo = stage(client, runs, "ppo")
    for key in (
        "rm_score",
        "kl",
        "gold",
        "entropy",
        "clipfrac",
        "approx_kl",
        "value_loss",
        "explained_variance",
        "response_length",
    ):
        assert len(client.get_metric_history(ppo.info.run_id, key)) >= 2, key
    rloo = stage(
        client, runs, "ppo", "rival"
    )  # rl.algorithm rloo: the same stage, trained and shipped without a critic
    assert (ppo.data.tags["rl.algorithm"], rloo.data.tags["rl.algorithm"]) == ("ppo", "rloo")
    assert ppo.data.metrics["critic_trainable_parameters"] > 0 == rloo.data.metrics["critic_trainable_parameters"]
    assert len(client.get_metric_history(rloo.info.run_id, "rm_score")) >= 2
    assert not client.get_metric_history(rloo.info.run_id, "value_loss")
    assert stage(client, runs, "reward_model").data.metrics["valid_accuracy"] > 0
    evaluation = stage(client, runs, "evaluation").data.metrics
    for mode in ("sample", "greedy"):
        assert {
            f"{mode}.ppo.gold.value",
            f"{mode}.ppo.kl",
            f"{mode}.dpo.distinct_2",
            f"{mode}.ppo_win_rate.dpo.ci_lo",
        } <= set(evaluation)


def test_plots_tables_models_and_validation_are_artefacts(runs, client):
    assert {"plots/curves.png", "model/sft/model.safetensors", "model/sft/tokenizer.json"} <= artifact_paths(
        client, stage(client, runs, "sft").info.run_id
    )
    assert {"plots/ppo_curves.png", "plots/overoptimisation.png", "model/ppo/model.safetensors"} <= artifact_paths(
        client, stage(client, runs, "ppo").info.run_id
    )
    assert "model/reward_model/model.safetensors" in artifact_paths(
        client, stage(client, runs, "reward_model").info.run_id
    )
    for name in ("chosen", "top_ranked", "combined", "dpo"):
        assert f"model/{name}/model.safetensors" in artifact_paths(
            client, stage(client, runs, f"baseline_{name}").info.run_id
        )
    evaluation = artifact_paths(client, stage(client, runs, "evaluation").info.run_id)
    assert {
        "plots/win_rates_sample.png",
        "plots/win_rates_greedy.png",
        "tables/examples_sample.json",
        "evaluation.json",
    } <= evaluation
    validation = artifact_paths(client, stage(client, runs, "data-validation").info.run_id)
    assert "validation/summary.txt" in validation and any(p.endswith("index.html") for p in validation)
    assert "comparisons/preferences.jsonl" in artifact_paths(client, stage(client, runs, "comparisons").info.run_id)


def versions_by_run(runs, client) -> dict:
    """The registry version each run registered (exactly one each)."""
    by_run_id = {}
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        by_run_id.setdefault(version.run_id, []).append(client.get_model_version(MODEL, version.version))
    found = {name: by_run_id.get(parent_run_id(done), []) for name, done in runs.items()}
    assert all(len(versions) == 1 for versions in found.values()), found
    assert len(by_run_id) == len(runs)
    return {name: versions[0] for name, versions in found.items()}


def test_every_policy_is_a_registered_version_tagged_with_the_gate(runs, client):
    versions = versions_by_run(runs, client)
    assert sorted(int(v.version) for v in versions.values()) == list(range(1, len(runs) + 1))
    for name in PROMOTED:
        assert versions[name].tags["gate.decision"] == "promote" and "PASS" in versions[name].tags["gate.reasons"]
        assert 0.0 < float(versions[name].tags["gate.score"]) < 1.0
    assert all(versions[name].tags["gate.decision"] == "reject" for name in runs if name not in PROMOTED)
    assert "FAIL reward model accuracy" in versions["control"].tags["gate.reasons"]
    for v in versions.values():
        assert len(v.tags["data.md5"]) == 32 and v.status == "READY"


def test_only_the_gate_moves_champion(runs, client):
    versions = versions_by_run(runs, client)
    best = max(PROMOTED, key=lambda name: float(versions[name].tags["gate.score"]))
    assert client.get_model_version_by_alias(MODEL, "champion").version == versions[best].version
    # challenger: the newest decided version, whichever run registered last
    assert client.get_model_version_by_alias(MODEL, "challenger").version == str(len(runs))
    assert (
        "decision: reject" in runs["control"].stdout
        and "registry note: not promoted; champion stays" in runs["control"].stdout
    )


@pytest.mark.faults
def test_five_runs_at_once_share_the_root_and_the_registry_safely(runs, client, project):
    """Fault table: flow runs at once on one machine, one project root, one store (five: two that
    the gate promotes and three negative controls)."""
    records = {r["mlflow"]["run_id"]: r for r in run_records(project)}
    at_once = {name: records[parent_run_id(done)] for name, done in runs.items()}
    # each run has its own run directory and record, and finished, on the same data
    assert len({r["mlflow"]["run_id"] for r in at_once.values()}) == len(runs) and all(
        r["status"] == "completed" for r in at_once.values()
    )
    assert len({r["data_version"]["md5"] for r in at_once.values()}) == 1
    # every shared stage was computed once: one run trained it, the others waited and reused the same directory
    for name, sharing in SHARERS.items():
        stages = [at_once[run]["stages"][name] for run in sharing]
        assert len({s["directory"] for s in stages}) == 1 and sorted(s["reused"] for s in stages) == [False] + [
            True
        ] * (len(sharing) - 1), name
        assert len(stage_dirs(project, name)) == OWN_DIRECTORIES[name], name
    assert not at_once["control"]["stages"]["reward_model"]["reused"]
    assert not at_once["disagreeing"]["stages"]["reward_model"]["reused"]
    logs = "".join(done.stdout + done.stderr for done in runs.values())
    assert "waiting to reuse its result" in logs
    assert "stopped without finishing" not in logs  # each found the others' records "running" under a held lock
    # so were the held-out decodings: the runs sharing the reward model decoded each policy but their PPOs once between
    # them (one decoded, two reused); the control and the disagreeing ensemble score with reward models of their own
    reused = {
        name: re.findall(r"evaluation: reusing the (\w+) responses of (\w+) in ", done.stdout + done.stderr)
        for name, done in runs.items()
    }
    shared = {(mode, policy) for mode in load_config("tiny").evaluation.modes for policy in ("sft", *BASELINES)}
    counts = Counter(decoding for name in RM_SHARERS for decoding in reused[name])
    assert counts == {decoding: 2 for decoding in shared | {("sample", "best_of_n")}}, reused
    assert not reused["control"] and not reused["disagreeing"], reused
    # each trained its own PPO into its own directory
    ppo = [r["stages"]["ppo"] for r in at_once.values()]
    assert len({s["directory"] for s in ppo}) == len(runs) and not any(s["reused"] for s in ppo)
    # the champion is the better-gated of the two promoted, never a version without its decision
    versions = versions_by_run(runs, client)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    scores = {float(versions[name].tags["gate.score"]): versions[name].version for name in PROMOTED}
    assert champion.version == scores[max(scores)] and champion.tags["gate.decision"] == "promote"
    assert "gate.champion" in champion.tags


@pytest.mark.faults
def test_planted_secrets_never_reach_outputs_files_or_stores(runs, pipeline_runs):
    """Fault table / security: credentials in the environment of all five runs appear nowhere."""
    places = {
        f"{name}.{stream}": getattr(done, stream).encode()
        for name, done in runs.items()
        for stream in ("stdout", "stderr")
    }
    for base in (pipeline_runs.root, pipeline_runs.mlflow_home, pipeline_runs.prefect_home):
        for path in base.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes()
    assert len(places) > 100  # models, reports, run records, the Prefect database, the MLflow store
    assert any("prefect.db" in where for where in places) and any("mlflow.db" in where for where in places)
    for name, secret in SECRETS.items():
        leaks = [where for where, content in places.items() if secret.encode() in content]
        assert not leaks, f"{name} found in {leaks}"


def test_the_champion_loads_back_and_generates(runs, mlflow_server, monkeypatch):
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI: keep it out of later tests' environments
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(mlflow_server)
        parts = mlflow.transformers.load_model(f"models:/{MODEL}@champion", return_type="components")
    finally:
        mlflow.set_tracking_uri(previous)
    model, tokenizer = parts["model"], parts["tokenizer"]
    prompt = json.loads(
        (Path(runs["promoted"].stdout.split("Data Docs at ")[1].split("/reports/")[0]) / "data" / "eval_prompts.jsonl")
        .read_text()
        .splitlines()[0]
    )["prompt"]
    encoded = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > encoded["input_ids"].shape[1]
    assert tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True).strip()
