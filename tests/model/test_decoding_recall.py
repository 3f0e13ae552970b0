"""The evaluation report's responses. Greedy ones are each policy's own, against greedy decoding written out by hand
(one unbatched, unpadded, uncached forward pass per token), with the reward model's score read by hand at the last
token.
Responses remembered from an earlier evaluation (through JSON, as flows/tasks/decoding_reuse.py stores them) give the
report
decoding again gives, to the last digit; nothing is decoded twice and the judge scores every response afresh.
Untrained one-layer models: seconds."""

import dataclasses
import json

import pytest
import torch

from components.config import BestOfNConfig, EvaluationConfig, ModelConfig, load_config
from components.data.files import EVAL_PROMPTS
from components.evaluation.policy_eval import Responses
from components.evaluation.report import BEST_OF_N, EvaluatedModels, evaluate_policies
from components.models.builders import build_policy, frozen_copy, scalar_model_from
from components.models.decoding import Decoder
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
    decoder = Decoder(tokenizer, MODEL, 0)
    return evaluate_policies(
        EvaluatedModels(policies, reward_model), prompts, EVALUATION, decoder, judge, BEST, recall=recall
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
    assert set(first.modes["sample"].policies) == {"sft", "chosen", "ppo", BEST_OF_N}
    assert "gold" in first.modes["sample"].policies["ppo"] and first.modes["sample"].ppo_win_rate


def test_what_is_remembered_holds_no_judge_scores(setting):
    remembered: list[Responses] = []

    def remembering(policy, mode, decode):
        out = decode()
        remembered.append(dataclasses.replace(out))
        return out

    evaluate(setting, lambda ps, rs, es: [1.0] * len(rs), remembering)
    assert len(remembered) == 7 and all(not r.gold and r.texts and r.rm_scores for r in remembered)


def greedy_by_hand(policy, tokenizer, prompt: str) -> tuple[list[int], bool]:
    """(response tokens, ended): the argmax of one unbatched, uncached forward pass per token, EOS included."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"][-MODEL.max_prompt_tokens :]
    response: list[int] = []
    with torch.no_grad():
        while len(response) < MODEL.max_response_tokens:
            logits = policy(input_ids=torch.tensor([context + response])).logits[0, -1]
            response.append(int(logits.argmax()))
            if response[-1] == tokenizer.eos_token_id:
                return response, True
    return response, False


def reward_by_hand(reward_model, tokenizer, prompt: str, response: list[int]) -> float:
    """The reward model's score at the response's last token (its EOS when it ended)."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"][-MODEL.max_prompt_tokens :]
    with torch.no_grad():
        hidden = reward_model.base_model(input_ids=torch.tensor([context + response])).last_hidden_state
        return float(reward_model.score(hidden[0, -1]))


def test_each_policys_greedy_responses_and_their_rm_scores_are_its_own_decoded_by_hand(setting):
    tokenizer, prompts, policies, reward_model = setting
    # the task's prompts are all 15 tokens long: cut some shorter, so that the batch is left-padded
    prompts = [" ".join(p.split()[-n:]) for p, n in zip(prompts, (15, 4, 9, 12, 6, 2))]
    assert len({len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}) == 6
    seen: dict[str, dict[str, Responses]] = {}
    evaluate_policies(
        EvaluatedModels(policies, reward_model),
        prompts,
        EVALUATION,
        Decoder(tokenizer, MODEL, 0),
        None,
        BEST,
        on_responses=lambda mode, responses: seen.setdefault(mode.name, responses),
    )
    greedy = seen["greedy"]
    assert set(greedy) == set(policies)  # best-of-n is decoded under sampling only
    by_hand = {name: [greedy_by_hand(policy, tokenizer, p) for p in prompts] for name, policy in policies.items()}
    for name, out in greedy.items():
        assert out.prompts == prompts, name
        texts = [
            tokenizer.decode([t for t in tokens if t != tokenizer.eos_token_id], skip_special_tokens=True)
            for tokens, _ in by_hand[name]
        ]
        assert out.texts == texts, name
        assert out.ended == [ended for _, ended in by_hand[name]], name
        rm_scores = [
            reward_by_hand(reward_model, tokenizer, p, tokens) for p, (tokens, _) in zip(prompts, by_hand[name])
        ]
        assert out.rm_scores == pytest.approx(rm_scores, abs=1e-5), name
    # the three untrained policies answer differently, so a policy's responses filed under another's name would fail
    assert len({tuple(out.texts) for out in greedy.values()}) == 3
