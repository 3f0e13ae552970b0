"""The simulated labeler and InstructGPT-style comparison collection (of the static file's pairs, and of
the policy samples that training hands over: ``rank_sampled``).

The labeler ranks K responses by gold score under Bradley-Terry noise: sorting by
``gold / temperature + Gumbel noise`` (Plackett-Luce) makes every pair's marginal exactly
``P(a > b) = sigmoid((gold_a - gold_b) / temperature)``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from components.config import Config
from components.data.expectations import word_count
from components.data.gold_judge import gold_score
from components.data.task import parse_prompt

Ranker = Callable[[str, list[str]], list[int]]  # (prompt, responses) -> indices, best first
Sampler = Callable[[str], list[str]]  # prompt -> K responses
SampleRanker = Callable[[str, list[str], list[bool]], list[int]]  # (prompt, responses, ended) -> indices, best first
# (prompts, each prompt's K sampled (response, ended)) -> preference rows: the shape of
# components.training.comparisons.Labeller, which comparison collection calls (training does not import data)
Labeller = Callable[[Sequence[str], Sequence[Sequence[tuple[str, bool]]]], list[dict]]
SOURCE = "sft_samples"  # the ``source`` of the rows ranked from policy samples


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


def rank_sampled(
    prompts: Sequence[str], groups: Sequence[Sequence[tuple[str, bool]]], ranker: SampleRanker, min_words: int = 1
) -> list[dict]:
    """Every ranked pair of each prompt's sampled responses, via ``collect_comparisons``.

    Responses with fewer than ``min_words`` words (the preferences contract refuses them) are
    dropped before ranking; identical responses are collapsed by ``collect_comparisons``; a
    ``(prompt, chosen, rejected)`` already emitted by an earlier group is not emitted again.
    """
    rows: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for group, (prompt, samples) in enumerate(zip(prompts, groups, strict=True)):
        kept = [(text, ended) for text, ended in samples if word_count(text) >= min_words]
        parsed = parse_prompt(prompt)
        for pair, chosen_ended, rejected_ended in _rank_group(prompt, kept, ranker):
            key = (pair["prompt"], pair["chosen"], pair["rejected"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    **pair,
                    **({"prompt_id": parsed.prompt_id} if parsed else {}),
                    "source": SOURCE,
                    "group": group,  # the K responses ranked together: the reward model holds out whole groups
                    "chosen_ended": chosen_ended,
                    "rejected_ended": rejected_ended,
                }
            )
    return rows


def _rank_group(prompt: str, samples: list[tuple[str, bool]], ranker: SampleRanker) -> list[tuple[dict, bool, bool]]:
    """``collect_comparisons`` on one prompt's pre-sampled responses; each pair with its two ``ended`` flags."""
    # identical texts end identically (a response that fills the limit has no room for EOS);
    # keep the first flag, as collect_comparisons keeps the first copy
    ended: dict[str, bool] = {}
    for text, flag in samples:
        ended.setdefault(text, flag)

    def sample(_: str) -> list[str]:
        return [text for text, _ in samples]

    def rank(p: str, responses: list[str]) -> list[int]:
        return ranker(p, responses, [ended[r] for r in responses])

    return [
        (pair, ended[pair["chosen"]], ended[pair["rejected"]]) for pair in collect_comparisons([prompt], sample, rank)
    ]


def simulated_ranker(labeler: SimulatedLabeler) -> SampleRanker:
    """The embedded task's simulated labeler, told which responses never ended.

    Same Bradley-Terry ranking as ``SimulatedLabeler.rank`` (gold / temperature + Gumbel noise,
    drawn from the labeler's own stream), with the gold judge's ``ended`` flag passed through.
    This is the stand-in for human labellers: it is the one place of comparison collection that
    reads the gold judge, and only to order responses; no score leaves it.
    """

    def rank(prompt: str, responses: list[str], ended: list[bool]) -> list[int]:
        utilities = [
            gold_score(prompt, r, e) / labeler.temperature - math.log(-math.log(labeler.rng.random() or 1e-300))
            for r, e in zip(responses, ended, strict=True)
        ]
        return sorted(range(len(responses)), key=lambda i: -utilities[i])

    return rank


def labeler_ranker(cfg: Config, purpose: str = "labeler") -> SampleRanker:
    """The simulated human labeler of the embedded task (it reads the hidden gold judge); each ``purpose``
    draws its noise from its own stream."""
    return simulated_ranker(
        SimulatedLabeler(cfg.data.synthetic.labeler_temperature, random.Random(f"{cfg.seed}/{purpose}"))
    )


def selection_ranker(cfg: Config) -> Callable[[], SampleRanker]:
    """A fresh labeller per candidate, every one with the same noise stream (common random numbers)."""
    return lambda: labeler_ranker(cfg, "selection")


def sampled_labeller(ranker: SampleRanker, min_words: int = 1) -> Labeller:
    """``rank_sampled`` with ``ranker``: what comparison collection hands the policy's samples to."""

    def label(prompts: Sequence[str], groups: Sequence[Sequence[tuple[str, bool]]]) -> list[dict]:
        return rank_sampled(prompts, groups, ranker, min_words)

    return label


def comparison_labeller(cfg: Config) -> Labeller:
    """The embedded task's simulated labeler ranking the SFT samples; responses shorter than the data
    contract's ``validation.min_response_words`` are left out."""
    return sampled_labeller(labeler_ranker(cfg), cfg.validation.min_response_words)
