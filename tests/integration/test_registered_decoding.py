"""The champion carries its decoding and its data: the registered policy's generation_config.json is how the gate
decoded it, and every run that trained on the data names its version as an ``mlflow.data`` input (a real MLflow
SQLite store in tmp_path, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from components.adapters.tracking import Tracker
from components.config import load_config
from components.models.tokenizer import build_word_tokenizer
from flows.execution.run_tracking import Tracking
from flows.tasks.decision_tasks import gate_decoding

MD5 = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store (and its artefacts) under tmp_path
    return Tracker(load_config("default").tracking, tmp_path)


@pytest.fixture
def tokenizer():
    return build_word_tokenizer(frozenset({"the", "cat", "sat", "."}))


def tiny_policy(tokenizer) -> GPT2LMHeadModel:
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_layer=1, n_head=2, n_embd=16, **ids))


def test_the_registered_policy_decodes_as_the_gate_sampled_and_the_trained_model_is_left_as_it_was(tracker, tokenizer):
    cfg = load_config(
        "default", ["gate.modes=[sample,greedy]", "evaluation.temperature=0.7", "model.max_response_tokens=9"]
    )
    policy = tiny_policy(tokenizer)
    own = policy.generation_config
    before = own.to_dict()
    generation_config, decoding = gate_decoding(cfg, tokenizer)

    uri = tracker.start_run("pipeline").log_policy(
        policy, tokenizer, "policy", generation_config, {"decoding": decoding}
    )

    assert policy.generation_config is own and own.to_dict() == before
    saved = json.loads((Path(download_artifacts(uri)) / "model" / "generation_config.json").read_text())
    loaded = mlflow.transformers.load_model(uri).model.generation_config
    for config in (saved, loaded.to_dict()):
        assert config["do_sample"] is True and config["temperature"] == 0.7 and config["max_new_tokens"] == 9
        assert (config["eos_token_id"], config["pad_token_id"]) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
        assert (config["top_k"], config["top_p"], config["repetition_penalty"]) == (0, 1.0, 1.0)  # softmax(l/T) only
    # the greedy mode the gate also judged, reproducible from the model's own record
    record = mlflow.models.get_model_info(uri).metadata["decoding"]
    assert record["shipped"] == "sample" and set(record["modes"]) == {"sample", "greedy"}
    greedy = GenerationConfig(**record["modes"]["greedy"]["generation_config"])
    assert greedy.do_sample is False and greedy.max_new_tokens == 9
    assert greedy.eos_token_id == tokenizer.eos_token_id and greedy.pad_token_id == tokenizer.pad_token_id
    assert record["modes"]["sample"]["samples_per_prompt"] == cfg.evaluation.samples_per_prompt


def test_a_gate_that_judged_greedy_decoding_only_ships_greedy_decoding(tokenizer):
    cfg = load_config("default", ["gate.modes=[greedy]", "model.max_response_tokens=9"])
    generation_config, decoding = gate_decoding(cfg, tokenizer)
    assert generation_config.do_sample is False and generation_config.max_new_tokens == 9
    assert decoding["shipped"] == "greedy" and list(decoding["modes"]) == ["greedy"]


def test_the_pipeline_run_and_every_stage_that_read_the_data_name_its_version_as_input(tracker, tmp_path):
    tracking = Tracking(tracker, tracker.start_run("pipeline"), tmp_path / "runs" / "this")
    dvc_file, remote = str((tmp_path / "data.dvc").resolve()), str((tmp_path / "dvc-remote").resolve())
    version = {"md5": MD5, "path": "data", "action": "new version", "previous_md5": None, "recipe": "r1", "seed": 0}
    tracking.use_data(version, str(tmp_path), remote)
    trained = [
        tracking.stage(name, r) for name, r in [("sft", None), ("reward_model", 2), ("baseline_dpo", None), ("ppo", 2)]
    ]
    evaluation, gate = tracking.stage("evaluation"), tracking.stage("gate")

    client = MlflowClient(tracker.uri)

    def inputs(run):
        return client.get_run(run.run_id).inputs.dataset_inputs

    for run, context in [
        (tracking.parent, "training"),
        *((run, "training") for run in trained),
        (evaluation, "evaluation"),
    ]:
        (data,) = inputs(run)
        assert (data.dataset.name, data.dataset.digest) == ("data", MD5)
        assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == context
        source = json.loads(data.dataset.source)
        assert source == {"uri": dvc_file, "dvc_remote": remote}
        assert mlflow.data.get_source(data).uri == dvc_file
        # what the data is, not what this run did to it: MLflow keeps the first run's dataset for every later run
        assert json.loads(data.dataset.profile) == {"md5": MD5, "path": "data", "recipe": "r1", "seed": 0}
    assert inputs(gate) == []
