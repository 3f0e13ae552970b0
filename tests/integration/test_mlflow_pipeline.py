"""The whole pipeline against a real MLflow server and a real Prefect server: nested runs, metrics
with steps, artefacts, registered versions, the `champion` alias moved by the gate alone, and two
runs at once on one project root and one registry.

Three runs of the `tiny` profile (a model small enough to train in about a minute that still
learns) share the servers and the project root:
  1. two at once: a gate every honest run passes (thresholds at their loosest), and a rival with
     another PPO learning rate (same data, SFT, comparisons, RM and baselines; its own PPO)
     -> both promoted; champion = the one with the higher gate score, whatever order they finished in
  2. then the negative control: the reward model learns from shuffled labels, under the loose gate
     except the reward-model accuracy floor -> rejected; the champion stays where step 1 left it.
Every run has secrets planted in its environment; none may reach any output, file or store.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.layout import run_records, stage_dirs

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
RIVAL_PPO = "ppo.lr=2.0e-4"
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-5f1c9e",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-77ab",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-c0ffee",
}
SHARED_STAGES = ("sft", "reward_model", "chosen", "combined", "dpo")


def run_pipeline(root: Path, servers: dict, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": servers["mlflow"], "PREFECT_API_URL": servers["prefect"],
           "PREFECT_HOME": str(servers["prefect_home"]), **SECRETS}
    args = [sys.executable, "-m", "flows.pipeline", "--profile", "tiny", "--root", str(root)]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def at_once(root: Path, servers: dict, **overrides: list[str]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(len(overrides)) as pool:
        started = {name: pool.submit(run_pipeline, root, servers, items) for name, items in overrides.items()}
        return {name: future.result() for name, future in started.items()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory):
    from tests.servers import mlflow_server

    home = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(home) as uri:
        yield uri, home


@pytest.fixture(scope="module")
def mlflow_server(mlflow_home):
    return mlflow_home[0]


@pytest.fixture(scope="module")
def runs(project, mlflow_home, prefect_server):
    servers = {"mlflow": mlflow_home[0], "prefect": prefect_server[0], "prefect_home": prefect_server[1]}
    first = at_once(project, servers, promoted=LOOSE_GATE, rival=[*LOOSE_GATE, RIVAL_PPO])
    return {**first, "control": run_pipeline(project, servers, [*LOOSE_GATE, "reward.shuffle_labels=true"])}


@pytest.fixture(scope="module")
def client(mlflow_server):
    return MlflowClient(mlflow_server)


def parent_run_id(done: subprocess.CompletedProcess) -> str:
    assert "(run " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
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
    assert sorted(int(v.version) for v in versions.values()) == [1, 2, 3]
    for name in ("promoted", "rival"):
        assert versions[name].tags["gate.decision"] == "promote" and "PASS" in versions[name].tags["gate.reasons"]
        assert 0.0 < float(versions[name].tags["gate.score"]) < 1.0
    assert versions["control"].tags["gate.decision"] == "reject" and "FAIL reward model accuracy" in versions["control"].tags["gate.reasons"]
    for v in versions.values():
        assert len(v.tags["data.md5"]) == 32 and v.status == "READY"


def test_only_the_gate_moves_champion(runs, client):
    versions = versions_by_run(runs, client)
    best = max(("promoted", "rival"), key=lambda name: float(versions[name].tags["gate.score"]))
    assert client.get_model_version_by_alias(MODEL, "champion").version == versions[best].version
    assert client.get_model_version_by_alias(MODEL, "challenger").version == versions["control"].version == "3"
    assert "decision: reject" in runs["control"].stdout
    assert f"champion stays {versions[best].version}" in runs["control"].stdout


@pytest.mark.faults
def test_two_runs_at_once_share_the_root_and_the_registry_safely(runs, client, project):
    """Fault table: two flow runs at once on one machine, one project root, one store."""
    versions = versions_by_run(runs, client)
    records = {r["mlflow"]["run_id"]: r for r in run_records(project)}
    first = {name: records[parent_run_id(runs[name])] for name in ("promoted", "rival")}
    # each run has its own run directory and record, and finished
    assert len({r["mlflow"]["run_id"] for r in first.values()}) == 2 and all(r["status"] == "completed" for r in first.values())
    assert first["promoted"]["data_version"]["md5"] == first["rival"]["data_version"]["md5"]
    # every shared stage was computed once: one run trained it, the other waited and reused the same directory
    for name in SHARED_STAGES:
        stages = [r["stages"][name] for r in first.values()]
        assert stages[0]["directory"] == stages[1]["directory"] and sorted(s["reused"] for s in stages) == [False, True], name
        assert len(stage_dirs(project, name)) == (2 if name == "reward_model" else 1)  # + the control's RM
    assert "waiting to reuse its result" in runs["promoted"].stdout + runs["promoted"].stderr + runs["rival"].stdout + runs["rival"].stderr
    # each trained its own PPO into its own directory
    assert first["promoted"]["stages"]["ppo"]["directory"] != first["rival"]["stages"]["ppo"]["directory"]
    assert not any(s["reused"] for s in (first["promoted"]["stages"]["ppo"], first["rival"]["stages"]["ppo"]))
    # the champion is the better-gated of the two, never a version without its decision
    champion = client.get_model_version_by_alias(MODEL, "champion")
    scores = {float(versions[name].tags["gate.score"]): versions[name].version for name in ("promoted", "rival")}
    assert champion.version == scores[max(scores)] and champion.tags["gate.decision"] == "promote"
    assert "gate.champion" in champion.tags


@pytest.mark.faults
def test_planted_secrets_never_reach_outputs_files_or_stores(runs, project, mlflow_home, prefect_server):
    """Fault table / security: credentials in the environment of all three runs appear nowhere."""
    places = {f"{name}.{stream}": getattr(done, stream).encode() for name, done in runs.items() for stream in ("stdout", "stderr")}
    for base in (project, mlflow_home[1], prefect_server[1]):
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
    prompt = json.loads((Path(runs["promoted"].stdout.split("Data Docs at ")[1].split("/reports/")[0]) / "data" / "eval_prompts.jsonl").read_text().splitlines()[0])["prompt"]
    encoded = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > encoded["input_ids"].shape[1]
    assert tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()
