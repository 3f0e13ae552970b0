"""The rounds benchmark's agreement measure (benchmarks/labelling_rounds_race.py), on a case worked by hand."""

import math

from benchmarks.labelling_rounds_race import agreement
from components.evaluation.policy_eval import Responses


def responses(prompts: list[str], gold: list[float]) -> Responses:
    return Responses(prompts=prompts, texts=[""] * len(prompts), ended=[True] * len(prompts), gold=gold)


def test_agreement_counts_only_pairs_of_one_prompt_whose_gold_differs():
    # prompt a: responses 0, 2, 3 (gold 1, 2, 2); prompt b: responses 1, 4 (gold 3, 1)
    # a: (0,2) gold -1, reward -0.4: agree; (0,3) gold -1, reward -0.2: agree; (2,3) gold tied: not counted
    # b: (1,4) gold +2, reward -1.0: disagree -> 2 of 3. Pairs across prompts would add (0,1), (2,4), ... and change it.
    out = responses(["a", "b", "a", "a", "b"], [1.0, 3.0, 2.0, 2.0, 1.0])
    assert agreement(out, [0.1, 0.0, 0.5, 0.3, 1.0]) == 2 / 3


def test_agreement_of_all_ties_is_undefined():
    assert math.isnan(agreement(responses(["a", "a"], [1.0, 1.0]), [0.0, 1.0]))
