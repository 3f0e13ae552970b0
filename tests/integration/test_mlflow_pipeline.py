"""The whole pipeline against a real MLflow server: nested runs, metrics with steps, artefacts,
registered versions, and the `champion` alias moved by the gate alone.

Three runs of the `tiny` profile (a model small enough to train in about a minute that still
learns) share one server, in order:
  1. a gate every honest run passes (thresholds at their loosest)   -> promoted, champion = v1
  2. a win-rate threshold no model can meet (0.99)                   -> rejected, champion stays v1
  3. the negative control: the reward model learns from shuffled labels, under the loose gate of
     run 1 except the reward-model accuracy floor                    -> rejected, champion stays v1
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "rlhf-policy"
# every rule but the RM accuracy floor opened as wide as the config allows
LOOSE_GATE = [
    "gate.min_win_rate_lower=0.0",
    "gate.max_kl=1000",
    "gate.sft_tolerance=100",
    "gate.overoptimisation.max_gold_drop=100",
    "gate.overoptimisation.max_proxy_gold_gap=1.0",
]


def run_pipeline(root: Path, uri: str, home: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(home / "prefect-home")}
    args = [sys.executable, "-m", "flows.pipeline", "--profile", "tiny", "--root", str(root)]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def runs(project, mlflow_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    promoted = run_pipeline(project, mlflow_server, home, LOOSE_GATE)
    rejected = run_pipeline(project, mlflow_server, home, [*LOOSE_GATE, "gate.min_win_rate_lower=0.99"])
    control = run_pipeline(project, mlflow_server, home, [*LOOSE_GATE, "reward.shuffle_labels=true"])
    return {"promoted": promoted, "rejected": rejected, "control": control}


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(mlflow_server)


def parent_run_id(done: subprocess.CompletedProcess) -> str:
    return done.stdout.split("(run ")[1].split(")")[0]


def test_each_pipeline_run_is_a_parent_with_a_nested_run_per_stage(runs, client):
    parent = client.get_run(parent_run_id(runs["promoted"]))
    assert parent.info.status == "FINISHED"
    assert len(parent.data.tags["git.commit"]) in (40, len("unknown"))
    assert parent.data.tags["data.md5"] and parent.data.tags["gate.decision"] == "promote"
    assert parent.data.params["ppo.kl.kl_coef"] and parent.data.params["profile"] == "tiny"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = {run.info.run_name for run in children}
    assert {"data-validation", "sft", "comparisons", "reward_model", "baseline_chosen", "baseline_combined", "baseline_dpo", "ppo", "evaluation", "gate"} <= names
    assert all(run.info.status == "FINISHED" for run in children)


def stage(client, runs, name, which="promoted"):
    parent = client.get_run(parent_run_id(runs[which]))
    (run,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.run_name = '{name}'"
    )
    return run


def artifact_paths(client, run_id, path=None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_metrics_are_logged_per_step_and_final(runs, client):
    sft = stage(client, runs, "sft")
    losses = client.get_metric_history(sft.info.run_id, "loss")
    assert len(losses) >= 3 and [m.step for m in losses] == sorted(m.step for m in losses)
    assert losses[-1].value < losses[0].value
    ppo = stage(client, runs, "ppo")
    for key in ("rm_score", "kl", "gold", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance", "response_length"):
        assert len(client.get_metric_history(ppo.info.run_id, key)) >= 2, key
    assert stage(client, runs, "reward_model").data.metrics["valid_accuracy"] > 0
    evaluation = stage(client, runs, "evaluation").data.metrics
    for mode in ("sample", "greedy"):
        assert {f"{mode}.ppo.gold.value", f"{mode}.ppo.kl", f"{mode}.dpo.distinct_2", f"{mode}.ppo_win_rate.dpo.ci_lo"} <= set(evaluation)


def test_plots_tables_models_and_validation_are_artefacts(runs, client):
    assert {"plots/curves.png", "model/sft/model.safetensors", "model/sft/tokenizer.json"} <= artifact_paths(client, stage(client, runs, "sft").info.run_id)
    assert {"plots/ppo_curves.png", "plots/overoptimisation.png", "model/ppo/model.safetensors"} <= artifact_paths(client, stage(client, runs, "ppo").info.run_id)
    assert "model/reward_model/model.safetensors" in artifact_paths(client, stage(client, runs, "reward_model").info.run_id)
    for name in ("chosen", "combined", "dpo"):
        assert f"model/{name}/model.safetensors" in artifact_paths(client, stage(client, runs, f"baseline_{name}").info.run_id)
    evaluation = artifact_paths(client, stage(client, runs, "evaluation").info.run_id)
    assert {"plots/win_rates_sample.png", "plots/win_rates_greedy.png", "tables/examples_sample.json", "evaluation.json"} <= evaluation
    validation = artifact_paths(client, stage(client, runs, "data-validation").info.run_id)
    assert "validation/summary.txt" in validation and any(p.endswith("index.html") for p in validation)
    assert "comparisons/preferences.jsonl" in artifact_paths(client, stage(client, runs, "comparisons").info.run_id)


def test_every_policy_is_a_registered_version_tagged_with_the_gate(runs, client):
    versions = {v.version: v for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert set(map(str, versions)) == {"1", "2", "3"}
    v1, v2, v3 = (client.get_model_version(MODEL, str(n)) for n in (1, 2, 3))
    assert v1.tags["gate.decision"] == "promote" and "PASS" in v1.tags["gate.reasons"]
    assert v2.tags["gate.decision"] == "reject" and "FAIL [sample] beats the best supervised baseline" in v2.tags["gate.reasons"]
    assert v3.tags["gate.decision"] == "reject" and "FAIL reward model accuracy" in v3.tags["gate.reasons"]
    for v in (v1, v2, v3):
        assert len(v.tags["data.md5"]) == 32


def test_only_the_gate_moves_champion(runs, client):
    assert client.get_model_version_by_alias(MODEL, "champion").version in (1, "1")
    assert client.get_model_version_by_alias(MODEL, "challenger").version in (3, "3")
    assert "champion = 1, challenger = 3" in runs["control"].stdout
    assert "decision: reject" in runs["rejected"].stdout and "decision: reject" in runs["control"].stdout


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
    prompt = json.loads((Path(runs["promoted"].stdout.split("Data Docs at ")[1].split("/reports/")[0]) / "data" / "eval_prompts.jsonl").read_text().splitlines()[0])["prompt"]
    encoded = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > encoded["input_ids"].shape[1]
    assert tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()
