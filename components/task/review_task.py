"""The embedded review-writing task as an ``Environment`` (components.data.environment): what the pipeline may
ask of it. Nothing outside this package reaches further in."""

from __future__ import annotations

import random
import statistics

from components.config import Config
from components.data import files
from components.data.environment import Dataset
from components.data.ranking import Ranker
from components.task.generator import GENERATOR_VERSION, generate_synthetic, synthetic_manifest
from components.task.gold_judge import WEIGHTS, gold_score
from components.task.labeler import SimulatedLabeler, label_agreement
from components.task.lexicon import vocabulary


class ReviewTask:
    """Write a review of a product with a requested sentiment that covers two named aspects (docs/embedded-task.md);
    with ``data.synthetic.turns: 2``, then answer the follow-up about a third.

    The labeller is the simulated one (Bradley-Terry noise at ``data.synthetic.labeler_temperature``, read off the
    gold judge); the gold judge stands in for what people would conclude, as in Gao et al. (2022).
    """

    name = GENERATOR_VERSION

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.vocabulary = vocabulary(cfg.data.synthetic.turns)

    def manifest(self) -> dict:
        return synthetic_manifest(self.cfg)

    def generate(self) -> Dataset:
        return generate_synthetic(self.cfg)

    def labeller(self, stream: str) -> Ranker:
        rng = random.Random(f"{self.cfg.seed}/{stream}")
        return SimulatedLabeler(self.cfg.data.synthetic.labeler_temperature, rng).rank

    def gold(self, prompt: str, response: str, ended: bool = True) -> float:
        return gold_score(prompt, response, ended)

    def describe(self, rows: dict[str, list[dict]]) -> dict:
        demonstrations, preferences = rows[files.DEMONSTRATIONS], rows[files.PREFERENCES]
        gold = [gold_score(d["prompt"], d["response"]) for d in demonstrations]
        agreement = label_agreement(preferences, self.cfg.data.synthetic.labeler_temperature)
        return {
            "demonstrations_gold_mean": round(statistics.fmean(gold), 4),
            "demonstrations_gold_std": round(statistics.pstdev(gold), 4),
            "gold_maximum": WEIGHTS.maximum_for(self.cfg.data.synthetic.turns),
            "demonstrations_gold_quartiles": [round(q, 4) for q in statistics.quantiles(gold, n=4)]
            if len(gold) > 1
            else gold,
            "label_accuracy_vs_gold": round(agreement.accuracy, 4),
            "label_accuracy_expected": round(agreement.expected_accuracy, 4),
            "label_ties": agreement.ties,
        }
