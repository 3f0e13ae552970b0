"""A user's own model and data, end to end, on the session's Prefect and MLflow servers: preference files in the
documented schemas, a local Hugging Face model of an architecture the project never trains itself (a Llama with
byte-level BPE and no pad token; a GPT-NeoX whose pad token is its EOS), a judge of the user's own (a separate
judge model; a Python function; people, answering a paused run through Prefect's API), through the gate to a registry
version that plain MLflow loads and generates with.

The models are built from config here, random and tiny, so the learning is not the point: the decision is. The
GPT-NeoX run's gate is opened wide (tests/pipeline_runs.py's WIDE_OPEN) so that it promotes and its champion is
loaded; the Llama run meets the default gate, whatever it decides."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM

from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES, file_name
from components.io import write_jsonl
from tests.flow_helpers import latest_flow_run, new_project, stage_runs
from tests.foreign_models import save_gpt_neox, save_judge, save_llama, save_wider
from tests.human_rounds import Labeller, human_round, ppo_wins
from tests.pipeline_runs import WIDE_OPEN

pytestmark = pytest.mark.integration

REGISTERED = "foreign-policy"  # its own registered model: the other tests' registry is left alone
PRODUCTS = ["phone", "laptop", "camera", "tablet", "watch", "speaker", "monitor", "router"]
HELD_OUT = ["printer", "charger", "headset", "drone"]
PRAISE = ["the {} is great, i like it.", "i love this {}, it is fast.", "a good {}, it works well."]
COMPLAINT = ["the {} is slow and loud.", "i do not like this {}.", "the {} broke after a week."]


def user_files(directory: Path) -> dict[str, str]:
    """Demonstrations, preference pairs and held-out prompts in the documented schemas."""
    prompt = "write a review of the {}.".format
    demonstrations = [{"prompt": prompt(p), "response": praise.format(p)} for p in PRODUCTS for praise in PRAISE]
    preferences = [
        {"prompt": prompt(p), "chosen": praise.format(p), "rejected": complaint.format(p)}
        for p in PRODUCTS
        for praise, complaint in zip(PRAISE, COMPLAINT)
    ]
    paths = {
        DEMONSTRATIONS: demonstrations,
        PREFERENCES: preferences,
        EVAL_PROMPTS: [{"prompt": prompt(p)} for p in HELD_OUT],
    }
    for name, rows in paths.items():
        write_jsonl(directory / file_name(name), rows)
    return {name: str(directory / file_name(name)) for name in paths}


def texts_of(files: dict[str, str]) -> list[str]:
    rows = [json.loads(line) for path in files.values() for line in Path(path).read_text().splitlines()]
    return [text for row in rows for text in row.values()]


def overrides(files: dict[str, str], model_dir: Path, judge: list[str]) -> list[str]:
    return [
        "data.source=files",
        f"data.files={json.dumps(files)}",
        "validation.max_response_words=12",
        "validation.max_prompt_words=10",
        "validation.demonstrations_rows={min: 4, max: 1000}",
        "validation.preferences_rows={min: 4, max: 1000}",
        "validation.eval_prompts_rows={min: 2, max: 1000}",
        "comparisons.source=static",
        "model.source=local",
        f"model.local_dir={model_dir}",
        f"tracking.registered_model={REGISTERED}",
        *judge,
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return user_files(tmp_path_factory.mktemp("user-data"))


def versions(uri: str) -> dict[str, object]:
    return {v.version: v for v in MlflowClient(uri).search_model_versions(f"name='{REGISTERED}'")}


def generate_with(model_uri: str, architecture: str) -> str:
    """Plain MLflow loads the registered policy, of the user's architecture, and it generates."""
    parts = mlflow.transformers.load_model(model_uri, return_type="components")
    model, tokenizer = parts["model"], parts["tokenizer"]
    assert type(model).__name__ == architecture
    ids = tokenizer("write a review of the printer.", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1], "generated nothing"
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_a_llama_without_pad_token_with_a_wider_reward_model_judged_by_a_judge_model_reaches_a_registered_decision(
    in_process_flow, mlflow_server, files, tmp_path
):
    model_dir = save_llama(tmp_path / "llama", texts_of(files))
    judge_dir = save_judge(tmp_path / "judge", model_dir)
    wider = save_wider(tmp_path / "wider", model_dir)  # reward.model: the reward model on a model of its own
    before = versions(mlflow_server)
    judge = ["evaluation.judge.kind=reward_model", f"evaluation.judge.model_dir={judge_dir}"]
    in_process_flow(
        new_project(tmp_path), [*overrides(files, model_dir, judge), f"reward.model={{local_dir: {wider}}}"]
    )

    flow_run, tasks, artifacts = latest_flow_run()
    assert flow_run.state.is_completed(), flow_run.state
    assert {"evaluate", "gate", "register"} <= tasks
    gate = artifacts["gate"].data
    assert "decision: " in gate and f"reward_model judge '{judge_dir}' win rate vs sft" in gate, gate
    # each stage's progress bar in the run's page, full when the stage ended
    assert artifacts["progress-sft"].data == artifacts["progress-ppo"].data == 100
    report = artifacts["pipeline-report"].data
    assert f"judge: reward_model `{judge_dir}`" in report and "PPO judge win rate" in report, report
    [version] = [v for number, v in versions(mlflow_server).items() if number not in before]
    assert version.tags["gate.decision"] in ("promote", "reject")
    client = MlflowClient(mlflow_server)
    run = client.get_run(version.run_id)
    stages = stage_runs(client, run)
    assert stages["evaluation"].data.tags["judge.kind"] == "reward_model"
    # the reward model's transformer is the wider model's, SFT-trained: every one of its parameters, not the policy's
    wider_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(wider)).parameters())
    policy_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(model_dir)).parameters())
    assert stages["reward_model"].data.metrics["backbone_parameters"] == wider_parameters > policy_parameters
    generate_with(f"models:/{REGISTERED}/{version.version}", "LlamaForCausalLM")


def test_a_gpt_neox_whose_pad_is_eos_judged_by_a_python_function_is_promoted_and_its_champion_generates(
    in_process_flow, mlflow_server, files, tmp_path
):
    model_dir = save_gpt_neox(tmp_path / "neox", texts_of(files))
    judge = ["evaluation.judge.kind=python", "evaluation.judge.entry_point=tests.judges:words_of_praise"]
    in_process_flow(new_project(tmp_path), [*overrides(files, model_dir, judge), *WIDE_OPEN])

    flow_run, _, artifacts = latest_flow_run()
    assert flow_run.state.is_completed(), flow_run.state
    gate = artifacts["gate"].data
    assert "decision: promote" in gate, gate
    # the judge scored every PPO iteration, so the trend rule was measured, by that judge
    assert "python judge 'tests.judges:words_of_praise' +" in gate, gate
    client = MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    assert champion.tags["gate.decision"] == "promote"
    assert client.get_run(champion.run_id).data.tags.get("gate.decision") == "promote"
    generate_with(f"models:/{REGISTERED}@champion", "GPTNeoXForCausalLM")


def test_a_llama_on_user_files_judged_by_people_through_a_paused_run_is_registered_by_their_labels(
    in_process_flow, prefect_server, mlflow_server, files, tmp_path
):
    model_dir = save_llama(tmp_path / "llama", texts_of(files))
    root = new_project(tmp_path)
    labeller = Labeller(prefect_server[0], root, ppo_wins, tmp_path / "labels.jsonl")
    labeller.start()
    registered = f"{REGISTERED}-by-people"  # the champion of its own name: this run's, when people promote it
    people = human_round(registered, 2)
    in_process_flow(root, [*overrides(files, model_dir, []), *people])
    labeller.join(timeout=60)
    assert labeller.error is None, labeller.error

    flow_run, tasks, artifacts = latest_flow_run()
    assert flow_run.id == labeller.paused_run.id and flow_run.state.is_completed(), flow_run.state
    assert "human labels" in tasks
    gate = artifacts["gate"].data
    assert "decision: promote" in gate and "human judges win rate vs sft 1.000" in gate, gate
    client = MlflowClient(mlflow_server)
    [version] = client.search_model_versions(f"name='{registered}'")
    assert client.get_model_version_by_alias(registered, "champion").version == version.version
    assert version.tags["gate.decision"] == "promote"
    generate_with(f"models:/{registered}@champion", "LlamaForCausalLM")
