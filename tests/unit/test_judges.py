"""Judges of held-out responses: a user's function, a separate judge model, the gold judge; and what each refuses."""

import math
import sys

import pytest
import torch

from components.config import ConfigError, JudgeConfig, ModelConfig, load_config
from components.evaluation.judges import (
    JudgeError,
    gold_judge,
    judge_facts,
    make_judge,
    ppo_monitor_judge,
    python_judge,
    reward_model_judge,
)
from components.evaluation.report import judge_monitor
from components.models.builders import build_policy, scalar_model_from
from components.models.saving import save_model
from components.models.scoring import score_samples
from components.models.tokenizer import build_word_tokenizer

TINY = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=8, max_response_tokens=8)
PROMPTS, RESPONSES, ENDED = ["say hi.", "say bye."], ["hi there.", "bye bye bye."], [True, False]

JUDGES = """
def length(prompts, responses):
    return [float(len(r.split())) for r in responses]
def as_numpy(prompts, responses):
    import numpy
    return numpy.array([len(r) for r in responses], dtype=numpy.float32)
def broken(prompts, responses):
    raise RuntimeError("the judge service is down")
def not_a_number(prompts, responses):
    return [1.0, float("nan")]
def too_few(prompts, responses):
    return [1.0]
"""


@pytest.fixture
def judges_module(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(JUDGES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_judges"
    sys.modules.pop("my_judges", None)


def test_a_python_judge_scores_every_response(judges_module):
    judge = python_judge(f"{judges_module}:length")
    assert judge(PROMPTS, RESPONSES, ENDED) == [2.0, 3.0]  # by hand: "hi there." and "bye bye bye."
    assert (judge.kind, judge.name) == ("python", "my_judges:length")
    assert python_judge(f"{judges_module}:as_numpy")(PROMPTS, RESPONSES, ENDED) == [9.0, 12.0]  # NumPy float32 scores


@pytest.mark.parametrize(
    "function, message",
    [
        ("broken", "raised RuntimeError: the judge service is down"),
        ("not_a_number", "returned nan for row 1 (prompt 'say bye.')"),
        ("too_few", "returned 1 scores for 2 responses"),
        ("missing", "cannot import it"),
    ],
)
def test_a_python_judge_that_fails_is_named_with_what_went_wrong(judges_module, function, message):
    with pytest.raises(JudgeError) as refused:
        python_judge(f"{judges_module}:{function}")(PROMPTS, RESPONSES, ENDED)
    assert f"judge {judges_module}:{function}" in str(refused.value) and message in str(refused.value)


def test_the_gold_judge_is_the_environment_s_per_response_score():
    judge = gold_judge(lambda p, r, e: len(p) + len(r) + (0.5 if e else 0.0))
    assert judge(PROMPTS, RESPONSES, ENDED) == [7 + 9 + 0.5, 8 + 12]


def save_scalar_model(directory, seed):
    tokenizer = build_word_tokenizer(frozenset(["say", "hi", "bye", "there", "."]))
    model = scalar_model_from(build_policy(TINY, tokenizer, seed))
    save_model(model, tokenizer, directory, {"stage": "judge"})
    return model, tokenizer


def test_a_judge_model_scores_like_the_reward_model_code_and_the_optimised_one_is_refused(tmp_path):
    model, tokenizer = save_scalar_model(tmp_path / "judge", seed=1)
    save_scalar_model(tmp_path / "ppo_rm", seed=2)
    judge = reward_model_judge(tmp_path / "judge", TINY, optimised=[tmp_path / "ppo_rm"])
    expected = score_samples(model, tokenizer, list(zip(PROMPTS, RESPONSES)), TINY).tolist()
    assert judge(PROMPTS, RESPONSES, ENDED) == pytest.approx(expected, abs=1e-6)
    assert all(math.isfinite(s) for s in expected) and expected[0] != expected[1]
    with pytest.raises(JudgeError, match="same weights as the reward model PPO optimised"):
        reward_model_judge(tmp_path / "judge", TINY, optimised=[tmp_path / "judge"])


def test_a_judge_model_with_pickle_weights_only_is_refused(tmp_path):
    directory = tmp_path / "pickled"
    directory.mkdir()
    torch.save({"w": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(JudgeError, match="only safetensors"):
        reward_model_judge(directory, TINY, optimised=[])


def test_user_data_without_a_judge_of_their_own_is_told_what_to_set():
    with pytest.raises(JudgeError, match=r"evaluation\.judge\.kind to reward_model"):
        make_judge(JudgeConfig(), TINY, gold=None, optimised=[])


@pytest.mark.parametrize(
    "judge, key",
    [
        ({"kind": "python"}, "entry_point"),
        ({"kind": "python", "entry_point": "nocolon"}, "entry_point"),
        ({"kind": "reward_model"}, "model_dir"),
    ],
)
def test_a_judge_config_missing_what_its_kind_needs_is_refused(judge, key):
    with pytest.raises(ConfigError, match=key):
        load_config("smoke", {"evaluation": {"judge": judge}})


def test_what_the_gate_and_report_say_of_each_judge():
    assert judge_facts(JudgeConfig()) == {
        "kind": "gold",
        "name": "gold",
        "label": "gold",
        "scores_ppo_iterations": True,
        "pairwise": False,
    }
    python = JudgeConfig(kind="python", entry_point="my_judges:length", monitor_ppo=False)
    assert judge_facts(python) == {
        "kind": "python",
        "name": "my_judges:length",
        "label": "python judge 'my_judges:length'",
        "scores_ppo_iterations": False,
        "pairwise": False,
    }
    people = judge_facts(JudgeConfig(kind="human"))
    assert people["pairwise"] and not people["scores_ppo_iterations"] and people["label"] == "human judges"
    model = judge_facts(JudgeConfig(kind="reward_model", model_dir="/judges/gold-rm"))
    assert model["label"] == "reward_model judge '/judges/gold-rm'" and model["scores_ppo_iterations"]


def test_ppo_is_watched_by_the_evaluation_judge_unless_it_is_switched_off(judges_module):
    def gold(prompt, response, ended):
        return 1.0

    length = JudgeConfig(kind="python", entry_point=f"{judges_module}:length")
    assert ppo_monitor_judge(length, TINY, None, []).name == "my_judges:length"
    assert ppo_monitor_judge(length.model_copy(update={"monitor_ppo": False}), TINY, gold, []) is None
    assert ppo_monitor_judge(JudgeConfig(), TINY, gold, []).kind == "gold"
    assert ppo_monitor_judge(JudgeConfig(), TINY, None, []) is None  # user data: no gold, nothing to watch with


def test_the_ppo_monitor_logs_the_judges_mean_score_of_the_rollouts(judges_module):
    monitor = judge_monitor(python_judge(f"{judges_module}:length"))
    # by hand: "hi there." has 2 words, "bye bye bye." 3: mean 2.5
    assert monitor(PROMPTS, RESPONSES, ENDED) == {"gold": 2.5}
