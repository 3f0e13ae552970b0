"""The simulated labeler and InstructGPT-style comparison collection.

The labeler ranks K responses by gold score under Bradley-Terry noise: sorting by
``gold / temperature + Gumbel noise`` (Plackett-Luce) makes every pair's marginal exactly
``P(a > b) = sigmoid((gold_a - gold_b) / temperature)``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from components.data.gold_judge import gold_score

Ranker = Callable[[str, list[str]], list[int]]  # (prompt, responses) -> indices, best first
Sampler = Callable[[str], list[str]]  # prompt -> K responses


class SimulatedLabeler:
    def __init__(self, temperature: float, rng: random.Random):
        self.temperature = temperature
        self.rng = rng

    def rank(self, prompt: str, responses: list[str]) -> list[int]:
        utilities = [gold_score(prompt, r) / self.temperature + _gumbel(self.rng) for r in responses]
        return sorted(range(len(responses)), key=lambda i: -utilities[i])


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(rng.random() or 1e-300))


def collect_comparisons(prompts: Sequence[str], sample: Sampler, rank: Ranker) -> list[dict]:
    """For each prompt: sample K responses, have them ranked, emit every pair (InstructGPT's K-choose-2).

    ``chosen_position`` records whether the chosen response was shown first (0) or second (1).
    Identical responses are collapsed first, so chosen never equals rejected.
    """
    pairs = []
    for prompt in prompts:
        responses = list(dict.fromkeys(sample(prompt)))
        if len(responses) < 2:
            continue
        order = rank(prompt, responses)
        place = {index: position for position, index in enumerate(order)}
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                first_wins = place[i] < place[j]
                pairs.append(
                    {
                        "prompt": prompt,
                        "chosen": responses[i] if first_wins else responses[j],
                        "rejected": responses[j] if first_wins else responses[i],
                        "chosen_position": 0 if first_wins else 1,
                    }
                )
    return pairs


@dataclass(frozen=True)
class LabelAgreement:
    accuracy: float  # share of non-tied pairs where the label agrees with the gold judge
    expected_accuracy: float  # what Bradley-Terry at this temperature predicts for these pairs
    ties: int
    pairs: int


def label_agreement(pairs: Sequence[dict], temperature: float) -> LabelAgreement:
    agree, expected, ties = 0, 0.0, 0
    for pair in pairs:
        margin = gold_score(pair["prompt"], pair["chosen"]) - gold_score(pair["prompt"], pair["rejected"])
        if margin == 0:
            ties += 1
            continue
        agree += margin > 0
        expected += 1 / (1 + math.exp(-abs(margin) / temperature))
    decided = len(pairs) - ties
    return LabelAgreement(agree / decided if decided else float("nan"), expected / decided if decided else float("nan"), ties, len(pairs))
