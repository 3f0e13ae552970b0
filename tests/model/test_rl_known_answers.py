"""RLOO, GRPO, Dr. GRPO and REINFORCE++ (and PPO) against answers computed independently of them: each one's
advantages on a hand-made batch, each loss average by hand, and a bandit whose KL-regularised optimum is known in
closed form, pi*(y) = pi_ref(y) exp(r(y) / beta) / Z, reached by every RL algorithm and by DPO."""

import copy
import random
import statistics
import types

import pytest
import torch

from components.config import DPOConfig, KLControlConfig, ModelConfig, PPOConfig, RLConfig
from components.models.batching import Batch
from components.models.builders import build_policy, scalar_model_from
from components.models.runtime import SINGLE
from components.models.tokenizer import build_word_tokenizer
from components.training import grpo, reinforce_pp, rloo
from components.training.algorithms import rl_algorithm
from components.training.dpo import train_dpo
from components.training.loop import Harness
from components.training.ppo import RLModels, Rollouts, train_ppo
from tests.float_error import float32_bound

# --- advantages on a hand-made batch ---------------------------------------------------------------------------
# Two prompts, k = 3 responses each, two response tokens; rows 1 and 5 ended after one token, and the
# log-ratio past their EOS (9.0, 5.0) must count for nothing. beta = 0.5.
BETA = 0.5
MASK = [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 0]]
LOG_RATIO = [[0.2, 0.4], [0.4, 9.0], [0.0, 0.0], [-0.2, 0.0], [0.0, 0.0], [1.0, 5.0]]
SCORES = [1.0, 2.0, 6.0, 0.0, 0.0, 3.0]
# R_i = score - beta * summed KL over the response's own tokens
REWARDS = [1.0 - 0.5 * 0.6, 2.0 - 0.5 * 0.4, 6.0, 0.0 + 0.5 * 0.2, 0.0, 3.0 - 0.5 * 1.0]  # 0.7, 1.8, 6, 0.1, 0, 2.5


def hand_batch() -> Rollouts:
    mask = torch.tensor(MASK)
    logprobs = torch.tensor(LOG_RATIO) - 1.0
    batch = Batch(torch.zeros(6, 3, dtype=torch.long), torch.ones(6, 3, dtype=torch.long), mask, prompt_width=1)
    scores = torch.tensor(SCORES)
    zeros = torch.zeros(6)
    return Rollouts(
        ["p", "p", "p", "q", "q", "q"],
        batch,
        mask[:, 1] == 1,
        logprobs,
        logprobs - torch.tensor(LOG_RATIO),
        None,
        scores,
        zeros,
        scores,
    )


# the advantages are float32 sums and products of a few numbers up to 6 (a std's square root and division among them):
# 16 roundings bounds them, about 1.1e-5
ADVANTAGE_TOLERANCE = float32_bound(6.0, 16)


def per_token(advantages: list[float]) -> torch.Tensor:
    return torch.tensor(advantages).unsqueeze(1) * torch.tensor(MASK, dtype=torch.float32)


def test_rloo_advantage_is_the_reward_less_the_mean_of_the_other_samples():
    """A_i = R_i - mean of the other two of its group, by hand: -3.2, -1.55, 4.75 | -1.15, -1.3, 2.45.
    A baseline that included R_i itself (the plain group mean) gives 2/3 of these, and fails."""
    expected = [0.7 - 3.9, 1.8 - 3.35, 6.0 - 1.25, 0.1 - 1.25, 0.0 - 1.3, 2.5 - 0.05]
    advantages = rloo.compute_advantages(hand_batch(), BETA, k=3)
    assert torch.allclose(advantages.advantages, per_token(expected), atol=ADVANTAGE_TOLERANCE)
    assert advantages.returns is None


def test_grpo_advantage_is_the_reward_normalised_within_its_group():
    """GRPO: (R_i - group mean) / group standard deviation (n - 1 in the denominator, + 1e-4), by Python's statistics
    module; Dr. GRPO: R_i - group mean alone. Group 1: -0.7627, -0.3694, 1.1321."""
    expected_grpo, expected_dr = [], []
    for group in (REWARDS[:3], REWARDS[3:]):
        mean, std = statistics.mean(group), statistics.stdev(group)
        expected_grpo += [(r - mean) / (std + grpo.STD_EPS) for r in group]
        expected_dr += [r - mean for r in group]
    assert expected_grpo[:3] == pytest.approx([-0.7627, -0.3694, 1.1321], abs=1e-4)
    assert torch.allclose(
        grpo.compute_advantages(hand_batch(), BETA, 3, True).advantages,
        per_token(expected_grpo),
        atol=ADVANTAGE_TOLERANCE,
    )
    assert torch.allclose(
        grpo.compute_advantages(hand_batch(), BETA, 3, False).advantages,
        per_token(expected_dr),
        atol=ADVANTAGE_TOLERANCE,
    )


def test_reinforce_pp_advantage_is_the_return_whitened_over_the_batch():
    """Per-token rewards -beta * log-ratio, plus the score on the last token; G_t summed to the end (gamma 1); then
    whitened over the batch's 10 response tokens (population variance), by hand."""
    returns = []
    for mask, ratio, score in zip(MASK, LOG_RATIO, SCORES):
        rewards = [-BETA * r * m for r, m in zip(ratio, mask)]
        rewards[sum(mask) - 1] += score
        returns.append([sum(rewards[t:]) * m for t, m in enumerate(mask)])
    assert returns[0] == pytest.approx([0.7, 0.8]) and returns[1] == pytest.approx([1.8, 0.0])
    tokens = [g for row, mask in zip(returns, MASK) for g, m in zip(row, mask) if m]
    mean, std = statistics.mean(tokens), statistics.pstdev(tokens)
    expected = torch.tensor([[(g - mean) / std * m for g, m in zip(row, mask)] for row, mask in zip(returns, MASK)])
    advantages = reinforce_pp.compute_advantages(hand_batch(), BETA, gamma=1.0, runtime=SINGLE)
    assert torch.allclose(advantages.advantages, expected, atol=ADVANTAGE_TOLERANCE)


def test_the_loss_averages_by_hand():
    """Values 1, 3 | 5, (7 past EOS): the token mean 9 / 3 = 3 (PPO, RLOO, REINFORCE++), the mean of each response's
    own mean (2 + 5) / 2 = 3.5 (GRPO), the sum over rows x length limit 4: 9 / 8 (Dr. GRPO)."""
    values, mask = torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 1], [1, 0]])
    assert SINGLE.token_share(mask)(values, mask).item() == pytest.approx(3.0)
    assert SINGLE.sequence_share(mask)(values, mask).item() == pytest.approx(3.5)
    assert SINGLE.constant_share(mask, 4)(values, mask).item() == pytest.approx(9 / 8)
    # split in two micro-batches, the parts add up to the whole
    for share, whole in ((SINGLE.sequence_share(mask), 3.5), (SINGLE.constant_share(mask, 4), 9 / 8)):
        halves = sum(share(values[i : i + 1], mask[i : i + 1]) for i in range(2))
        assert halves.item() == pytest.approx(whole)


# --- the bandit: one-token responses, a fixed reward table ---------------------------------------------------

BANDIT_WORDS = ("a", "b", "c", "d", "e", "f")
BANDIT_BETA = 0.5
BANDIT_ITERATIONS = 60
# every token of the vocabulary is an arm, the three special ones included (pad 0, EOS 1, unk 2, then go, a..f)
REWARD_TABLE = torch.tensor([0.0, 0.3, -0.5, 1.0, 0.2, 1.5, 0.6, -1.0, 0.9, 0.4])
TV_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def bandit_tokenizer():
    return build_word_tokenizer(frozenset({"go", *BANDIT_WORDS}))


class TableReward(torch.nn.Module):
    """A reward model read as PPO reads one (``base_model(...).last_hidden_state`` then ``score``): the table's entry
    of each token, so the one-token response's score is r(y)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.score = torch.nn.Identity()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def base_model(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return types.SimpleNamespace(last_hidden_state=(self.table[input_ids] + 0 * self.weight).unsqueeze(-1))


def bandit_model() -> ModelConfig:
    # one response token: the config's own rule (at least 2, room for EOS) is for language, not for a bandit
    return ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=1).model_copy(
        update={"max_response_tokens": 1}
    )


@torch.no_grad()
def arm_probabilities(policy, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer("go", add_special_tokens=False)["input_ids"]])
    return torch.softmax(policy(input_ids=ids).logits[0, -1].float(), dim=-1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum().item()


ALGORITHMS = {
    "ppo": RLConfig(algorithm="ppo"),
    "rloo": RLConfig(algorithm="rloo", samples_per_prompt=4),
    "grpo": RLConfig(algorithm="grpo", samples_per_prompt=4),
    "dr_grpo": RLConfig(algorithm="grpo", samples_per_prompt=4, grpo_variant="dr_grpo"),
    "reinforce_pp": RLConfig(algorithm="reinforce_pp"),
}


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_rl_algorithm_reaches_the_kl_regularised_optimum_of_a_bandit(bandit_tokenizer, name, seed):
    """From a random policy over the 10 tokens, 60 iterations of 256 one-token samples at kl_coef 0.5 end within total
    variation 0.02 of pi* = pi_ref exp(r / 0.5) / Z, computed exactly from the starting policy's distribution.

    The margin: measured at 60 iterations (seeds 0, 1, 2 on a 2-vCPU Xeon) PPO 0.0026, RLOO <= 0.0007, GRPO
    <= 0.0033, REINFORCE++ 0.0026; the start is 0.45 from pi*, and the unregularised optimum (all mass on the best
    arm) 0.56. At pi* every sample's KL-penalised reward is the same, beta log Z, so each algorithm's advantages
    vanish there; a missing or sign-flipped KL term, or a reward read at the wrong token, ends far outside 0.02.
    """
    model_cfg = bandit_model()
    policy = build_policy(model_cfg, bandit_tokenizer, seed=seed)
    reference = arm_probabilities(policy, bandit_tokenizer)
    table = REWARD_TABLE[: len(bandit_tokenizer)]
    optimum = reference * torch.exp(table / BANDIT_BETA)
    optimum /= optimum.sum()
    cfg = PPOConfig(
        iterations=BANDIT_ITERATIONS,
        rollout_batch_size=256,
        minibatch_size=64,
        ppo_epochs=2,
        lr=1e-2,
        critic_lr=3e-2,
        kl=KLControlConfig(kl_coef=BANDIT_BETA),
        missing_eos_penalty=0.0,
        lam=1.0,
        checkpoint_every=0,
    )
    chosen = rl_algorithm(ALGORITHMS[name], cfg, model_cfg)
    critic = scalar_model_from(policy) if chosen.has_critic else None
    trained, _, _ = train_ppo(
        RLModels(policy, copy.deepcopy(policy), critic, TableReward(table), bandit_tokenizer),
        ["go"],
        cfg,
        model_cfg,
        seed,
        algorithm=chosen,
    )
    reached = arm_probabilities(trained, bandit_tokenizer)
    assert total_variation(reference, optimum) > 0.3
    assert total_variation(reached, optimum) < TV_TOLERANCE, ([round(p, 3) for p in reached.tolist()], optimum)


# --- DPO on the same kind of bandit, from preferences sampled from its Bradley-Terry model --------------------

DPO_REWARD = {"a": 0.0, "b": 1.0, "c": -0.5, "d": 2.0, "e": 0.5}
DPO_BETA = 1.0
DPO_PAIRS = 4000


@torch.no_grad()
def sequence_logprobs(policy, tokenizer, words: list[str]) -> torch.Tensor:
    """log pi(word, EOS | go) of each word: the two-token response DPO compares."""
    go = tokenizer.convert_tokens_to_ids("go")
    ids = torch.tensor([[go, tokenizer.convert_tokens_to_ids(w)] for w in words])
    logprobs = torch.log_softmax(policy(input_ids=ids).logits.float(), dim=-1)
    return logprobs[0, 0, ids[:, 1]] + logprobs[:, 1, tokenizer.eos_token_id]


def bradley_terry_fit(wins: torch.Tensor) -> torch.Tensor:
    """The maximum-likelihood rewards of a win-count matrix (wins[i, j]: i preferred to j), up to a constant."""
    rewards = torch.zeros(len(wins), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([rewards], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def negative_log_likelihood():
        optimiser.zero_grad()
        loss = -(wins * torch.nn.functional.logsigmoid(rewards[:, None] - rewards[None, :])).sum()
        loss.backward()
        return loss

    optimiser.step(negative_log_likelihood)
    return rewards.detach().float()


@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_reaches_the_kl_regularised_optimum_of_a_bandit(seed):
    """4000 preferences between two of five one-word responses, each drawn from the Bradley-Terry model
    P(y1 > y2) = sigmoid(r1 - r2); DPO at beta 1 from a random policy. Over the five responses (DPO constrains only
    what it compares) the policy ends within total variation 0.02 of pi_ref exp(r_hat / beta) / Z, where r_hat is
    the Bradley-Terry fit of the same 4000 labels (DPO's exact minimiser on them), and within 0.05 of pi* with the
    true r (the labels' own sampling error is 0.009-0.02 of that).

    Measured (seeds 0, 1, 2): 0.0035, 0.0082, 0.007 from the fit; 0.008, 0.014, 0.027 from pi*; the start is 0.34-0.37.
    """
    words = list(DPO_REWARD)
    tokenizer = build_word_tokenizer(frozenset({"go", *words}))
    model_cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=1, max_response_tokens=2)
    policy = build_policy(model_cfg, tokenizer, seed=seed)
    reference = sequence_logprobs(policy, tokenizer, words)
    rewards = torch.tensor([DPO_REWARD[w] for w in words])

    rng = random.Random(seed)
    wins, rows = torch.zeros(len(words), len(words), dtype=torch.float64), []
    for _ in range(DPO_PAIRS):
        i, j = rng.sample(range(len(words)), 2)
        first_wins = rng.random() < torch.sigmoid(rewards[i] - rewards[j]).item()
        chosen, rejected = (i, j) if first_wins else (j, i)
        wins[chosen, rejected] += 1
        rows.append({"prompt": "go", "chosen": words[chosen], "rejected": words[rejected]})

    optimum = torch.softmax(reference + rewards / DPO_BETA, dim=0)
    fitted = torch.softmax(reference + bradley_terry_fit(wins) / DPO_BETA, dim=0)
    trained, _, _ = train_dpo(
        policy, tokenizer, rows, DPOConfig(epochs=5, batch_size=64, lr=1e-2, beta=DPO_BETA), model_cfg, seed=seed
    )
    reached = torch.softmax(sequence_logprobs(trained, tokenizer, words), dim=0)
    assert total_variation(torch.softmax(reference, dim=0), optimum) > 0.3
    assert total_variation(reached, fitted) < 0.02, (reached, fitted)
    assert total_variation(reached, optimum) < 0.05, (reached, optimum)


def test_a_group_is_one_prompt_in_adjacent_rows_drawn_in_the_queues_order(bandit_tokenizer):
    """RLOO with k = 4 and 16 responses an iteration: 4 prompts, each in 4 adjacent rows, in the order of the prompt
    queue's shuffled passes (random.Random(f"{seed}/ppo"), reproduced here). Rows laid out prompts * k instead
    (p1 p2 p3 p4 p1 ...) would put four prompts in every leave-one-out group, and fail; so would drawing 16 prompts."""
    prompts = sorted(BANDIT_WORDS)
    seen: list[list[str]] = []

    def monitor(batch_prompts, responses, ended):
        seen.append(list(batch_prompts))
        return {}

    model_cfg = bandit_model()
    policy = build_policy(model_cfg, bandit_tokenizer, seed=0)
    cfg = PPOConfig(
        iterations=3,
        rollout_batch_size=16,
        minibatch_size=16,
        ppo_epochs=1,
        missing_eos_penalty=0.0,
        checkpoint_every=0,
    )
    chosen = rl_algorithm(ALGORITHMS["rloo"], cfg, model_cfg)
    table = REWARD_TABLE[: len(bandit_tokenizer)]
    train_ppo(
        RLModels(policy, copy.deepcopy(policy), None, TableReward(table), bandit_tokenizer),
        prompts,
        cfg,
        model_cfg,
        0,
        algorithm=chosen,
        harness=Harness(monitor=monitor),
    )
    rng, order = random.Random("0/ppo"), []
    while len(order) < 3 * 4:  # passes over the prompts, each shuffled
        shuffled = list(prompts)
        rng.shuffle(shuffled)
        order += shuffled
    assert seen == [[prompt for prompt in order[4 * i : 4 * i + 4] for _ in range(4)] for i in range(3)]
