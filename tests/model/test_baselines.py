"""Each supervised baseline learns from the preference pairs: a few steps from a tiny SFT model, no NaN,
the documented history and metrics; DPO ranks its training pairs better than chance; best-of-n returns
the reward model's favourite sample. Tiny models from scratch on the smoke data: well under a minute."""

import math

import pytest
import torch

from components.config import BestOfNConfig, CombinedLossConfig, DPOConfig, ModelConfig, SFTConfig, load_config
from components.data import files
from components.evaluation.best_of_n import best_of_n
from components.models.batching import encode_prompts, sequence_scores
from components.models.builders import build_policy, frozen_copy, scalar_model_from
from components.models.decoding import Decoder
from components.models.generation import decode_responses, generate
from components.models.tokenizer import build_word_tokenizer
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.training.chosen import train_chosen
from components.training.combined import train_combined
from components.training.dpo import evaluate_dpo, train_dpo
from components.training.sft import train_sft

TINY = ModelConfig(n_layer=1, n_embd=32, n_head=2)
SEED = 0
HISTORY_KEYS = {"step", "loss", "grad_norm", "lr"}


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(load_config("smoke")).rows


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(VOCABULARY)


@pytest.fixture(scope="module")
def sft_policy(data, tokenizer):
    policy = build_policy(TINY, tokenizer, SEED)
    cfg = SFTConfig(epochs=2, batch_size=32, lr=1e-2, warmup_steps=2, log_every=5, lr_schedule="constant")
    policy, _, _ = train_sft(policy, tokenizer, data[files.DEMONSTRATIONS], cfg, TINY, SEED)
    return policy


@pytest.fixture(scope="module")
def pairs(data):
    return data[files.PREFERENCES][:64]


def _finite(history: list[dict]) -> bool:
    return all(math.isfinite(v) for entry in history for v in entry.values())


def _unchanged(model, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_chosen_sft_trains_on_the_chosen_responses_and_leaves_the_sft_policy_alone(sft_policy, tokenizer, pairs):
    before = {k: v.clone() for k, v in sft_policy.state_dict().items()}
    cfg = SFTConfig(epochs=2, batch_size=16, lr=1e-3, warmup_steps=1, log_every=1)
    model, metrics, history = train_chosen(sft_policy, tokenizer, pairs, cfg, TINY, SEED)
    assert model is not sft_policy and _unchanged(sft_policy, before)
    assert len(history) == 8 and set(history[0]) >= HISTORY_KEYS and _finite(history)
    assert {"first_loss", "final_loss", "steps"} <= set(metrics) and metrics["steps"] == 8
    assert metrics["final_loss"] < metrics["first_loss"]  # 2 passes over 64 chosen responses


# the rejected tokens' mean probability after training with coef 1, as a share of it with coef 0;
# measured 0.66 (all) and 0.86 (not_in_chosen: its tokens start rarer, so -log(1 - p) pushes less)
MAX_RATIO = {"all": 0.8, "not_in_chosen": 0.95}


@pytest.mark.parametrize("mode", sorted(MAX_RATIO))
def test_unlikelihood_term_keeps_rejected_tokens_less_likely_than_likelihood_alone(sft_policy, tokenizer, pairs, mode):
    runs = {}
    for coef in (0.0, 1.0):
        cfg = CombinedLossConfig(
            epochs=4,
            batch_size=16,
            lr=3e-3,
            warmup_steps=1,
            log_every=1,
            unlikelihood_coef=coef,
            unlikelihood_tokens=mode,
            lr_schedule="constant",  # 16 steps: a decaying rate leaves the two runs too close to tell apart
        )
        model, metrics, history = train_combined(sft_policy, tokenizer, pairs, cfg, TINY, SEED)
        assert model is not sft_policy
        assert (
            len(history) == 16
            and HISTORY_KEYS | {"likelihood", "unlikelihood", "rejected_token_p"} <= set(history[0])
            and _finite(history)
        )
        assert {"first_loss", "final_loss", "steps", "likelihood", "unlikelihood"} <= set(metrics)
        last = history[-1]
        assert last["loss"] == pytest.approx(last["likelihood"] + coef * last["unlikelihood"], rel=1e-5)
        runs[coef] = last
    # same seed, same batches: the unlikelihood term alone makes the difference
    assert runs[1.0]["rejected_token_p"] < MAX_RATIO[mode] * runs[0.0]["rejected_token_p"]
    assert runs[1.0]["likelihood"] < runs[0.0]["likelihood"] + 0.5  # chosen is still fitted


def test_dpo_ranks_its_training_pairs_above_chance(sft_policy, tokenizer, pairs):
    cfg = DPOConfig(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1, beta=0.1)
    reference = frozen_copy(sft_policy)
    before = evaluate_dpo(sft_policy, reference, tokenizer, pairs, cfg.beta, TINY)
    model, metrics, history = train_dpo(sft_policy, tokenizer, pairs, cfg, TINY, SEED, reference=reference)
    keys = HISTORY_KEYS | {"reward_accuracy", "margin", "rewards_chosen", "rewards_rejected"}
    assert len(history) == 12 and keys <= set(history[0]) and _finite(history)
    assert {"first_loss", "final_loss", "steps", "reward_accuracy", "margin"} <= set(metrics)
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    after = evaluate_dpo(model, reference, tokenizer, pairs, cfg.beta, TINY)
    assert before["reward_accuracy"] == 0.0  # every implicit reward is 0: no pair is ranked yet
    assert (
        after["reward_accuracy"] >= 0.75
    )  # chance is 0.5; 3 passes over 64 pairs (measured 0.875 after 2, 1.0 after 6)
    assert after["margin"] > 0 and metrics["final_loss"] < math.log(2)


def same_samples(policy, reward_model, tokenizer, prompts, n, model_cfg, seed=7):
    """The n samples per prompt that best_of_n draws with ``seed``, and their RM scores: (rollout, (prompts, n))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompt_ids, prompt_mask = encode_prompts(
            tokenizer, [p for p in prompts for _ in range(n)], model_cfg.max_prompt_tokens
        )
        rollout = generate(
            policy,
            prompt_ids,
            prompt_mask,
            model_cfg.max_response_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
    with torch.no_grad():
        return rollout, sequence_scores(reward_model, rollout.batch).view(len(prompts), n)


def test_best_of_n_returns_the_reward_models_favourite_of_n_samples(sft_policy, tokenizer, data):
    reward_model = scalar_model_from(sft_policy)
    prompts = [r["prompt"] for r in data[files.EVAL_PROMPTS][:3]]
    n = 4
    cfg = BestOfNConfig(n=n, temperature=1.0, missing_eos_penalty=0.0)
    responses, ended, scores = best_of_n(sft_policy, reward_model, prompts, cfg, Decoder(tokenizer, TINY, 7))
    assert len(responses) == len(ended) == len(scores) == len(prompts)

    # the same seed draws the same n samples per prompt; best-of-n must return the top-scored one
    rollout, all_scores = same_samples(sft_policy, reward_model, tokenizer, prompts, n, TINY)
    texts = decode_responses(tokenizer, rollout.batch)
    best = all_scores.argmax(dim=1)
    assert scores == pytest.approx(all_scores.max(dim=1).values.tolist(), abs=1e-5)
    assert responses == [texts[i * n + b] for i, b in enumerate(best.tolist())]
    assert ended == [bool(rollout.ended[i * n + b]) for i, b in enumerate(best.tolist())]


def test_best_of_n_picks_with_the_missing_eos_penalty_but_records_the_raw_rm_score(sft_policy, tokenizer, data):
    """The penalty steers the choice (as in PPO's rewards); the score recorded is the RM's own, like every other
    policy's in the evaluation table."""
    reward_model = scalar_model_from(sft_policy)
    prompts = [r["prompt"] for r in data[files.EVAL_PROMPTS][:4]]
    n, tiny_length = 4, TINY.model_copy(update={"max_response_tokens": 6})  # short: many samples never end
    cfg = BestOfNConfig(n=n, temperature=1.0, missing_eos_penalty=100.0)
    _, ended, scores = best_of_n(sft_policy, reward_model, prompts, cfg, Decoder(tokenizer, tiny_length, 7))
    rollout, raw = same_samples(sft_policy, reward_model, tokenizer, prompts, n, tiny_length)
    penalised = raw - 100.0 * (~rollout.ended).float().view(len(prompts), n)
    best = penalised.argmax(dim=1)
    some_ended = rollout.ended.view(len(prompts), n).any(dim=1).tolist()
    assert any(some_ended) and not rollout.ended.all()  # the penalty has work to do
    assert [e for e, some in zip(ended, some_ended) if some] == [True] * sum(some_ended)  # it picked an ended one
    assert scores == pytest.approx([raw[i, b].item() for i, b in enumerate(best.tolist())], abs=1e-5)
