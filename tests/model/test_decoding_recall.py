"""The evaluation report from remembered decodings: responses remembered from an earlier evaluation (through JSON, as
flows/decoding_reuse.py stores them) give the report decoding again gives, to the last digit; nothing is decoded twice
and the judge scores every response afresh. Untrained one-layer models: seconds."""

import dataclasses
import json

import pytest

from components.config import BestOfNConfig, EvaluationConfig, ModelConfig, load_config
from components.data.files import EVAL_PROMPTS
from components.evaluation.policy_eval import Responses
from components.evaluation.report import BEST_OF_N, evaluate_policies
from components.models.builders import build_policy, frozen_copy, scalar_model_from
from components.models.tokenizer import build_word_tokenizer
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.lexicon import VOCABULARY

MODEL = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=24, max_response_tokens=12)
EVALUATION = EvaluationConfig(samples_per_prompt=2, batch_size=8, n_examples=2)
BEST = BestOfNConfig(n=2)


@pytest.fixture(scope="module")
def setting():
    tokenizer = build_word_tokenizer(VOCABULARY)
    prompts = [r["prompt"] for r in generate_synthetic(load_config("smoke")).rows[EVAL_PROMPTS][:6]]
    policies = {name: build_policy(MODEL, tokenizer, seed) for seed, name in enumerate(("sft", "chosen", "ppo"))}
    reward_model = frozen_copy(scalar_model_from(build_policy(MODEL, tokenizer, seed=7)))
    return tokenizer, prompts, policies, reward_model


def evaluate(setting, judge, recall):
    tokenizer, prompts, policies, reward_model = setting
    return evaluate_policies(
        policies, tokenizer, prompts, EVALUATION, MODEL, 0, reward_model, judge, BEST, recall=recall
    )


def test_a_report_from_remembered_decodings_is_the_fresh_report_and_decodes_nothing_again(setting):
    judged: list[int] = []  # how many responses each judge call scored

    def judge(prompts, responses, ended):
        judged.append(len(responses))
        return [gold_score(p, r, e) for p, r, e in zip(prompts, responses, ended)]

    memory: dict[tuple[str, str], str] = {}

    def remembering(policy, mode, decode):
        out = decode()
        memory[(policy, mode.name)] = json.dumps(dataclasses.asdict(out))  # before the judge reads it
        return out

    first = evaluate(setting, judge, remembering)
    calls = len(judged)

    def from_memory(policy, mode, decode):
        return Responses(**json.loads(memory.pop((policy, mode.name))))

    second = evaluate(setting, judge, from_memory)

    assert second == first  # every mean, CI, win rate and example, to the last digit
    assert memory == {}  # every decoding came from memory, each exactly once
    # the judge scored every remembered response again: 3 policies x (2 modes) + best-of-n under sampling
    assert len(judged) == 2 * calls == 2 * 7
    assert judged[calls:] == judged[:calls]
    assert set(first["sample"]["policies"]) == {"sft", "chosen", "ppo", BEST_OF_N}
    assert "gold" in first["sample"]["policies"]["ppo"] and first["sample"]["ppo_win_rate"]


def test_what_is_remembered_holds_no_judge_scores(setting):
    remembered: list[Responses] = []

    def remembering(policy, mode, decode):
        out = decode()
        remembered.append(dataclasses.replace(out))
        return out

    evaluate(setting, lambda ps, rs, es: [1.0] * len(rs), remembering)
    assert len(remembered) == 7 and all(not r.gold and r.texts and r.rm_scores for r in remembered)
