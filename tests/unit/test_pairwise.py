"""People as the judge: blinded pairs, win rates from labels (known answers by hand), the offline labelling page."""

import math
import re

import pytest

from components.evaluation import pairwise
from components.evaluation.intervals import Z95

PROMPTS = ["p0", "p0", "p1", "p1", "p2", "p2"]  # two samples per prompt
TEXTS = {
    "sft": ["s0", "s1", "s2", "s3", "s4", "s5"],
    "ppo": ["r0", "r1", "r2", "r3", "r4", "r5"],
    "dpo": ["d0", "d1", "d2", "d3", "d4", "d5"],
}


def pairs(round_id="round-1", per_baseline=2):
    return pairwise.blinded_pairs(round_id, "sample", PROMPTS, TEXTS, per_baseline, stride=2, seed=7)


def test_each_baseline_meets_ppo_on_the_same_prompt_and_sample_one_sample_per_prompt():
    made = pairs()
    assert [(p.baseline, p.prompt) for p in made] == [("sft", "p0"), ("sft", "p1"), ("dpo", "p0"), ("dpo", "p1")]
    for p in made:
        ppo, other = (p.a, p.b) if p.ppo_side == "A" else (p.b, p.a)
        index = TEXTS["ppo"].index(ppo)
        assert index in (0, 2), "one sample in every stride of 2"
        assert other == TEXTS[p.baseline][index], "the baseline's response to the same prompt and sample"
    assert len({p.pair_id for p in made}) == len(made)
    assert {p.ppo_side for p in pairs(per_baseline=3)} == {"A", "B"}


def test_pairs_are_reproducible_and_ids_belong_to_their_round():
    assert pairs() == pairs()
    assert not {p.pair_id for p in pairs()} & {p.pair_id for p in pairs("round-2")}


def test_what_a_labeller_sees_names_no_policy_and_the_order_is_shuffled():
    made = pairwise.blinded_pairs("r", "sample", ["q"] * 40, {k: [k] * 40 for k in ("ppo", "a", "b")}, 40, 1, 3)
    shown = [p.shown() for p in pairwise.shuffled(made, seed=3)]
    assert set(shown[0]) == {"pair_id", "prompt", "A", "B"}
    assert [s["pair_id"] for s in shown] != [p.pair_id for p in made]
    assert sorted(s["pair_id"] for s in shown) == sorted(p.pair_id for p in made)


def wilson_by_hand(wins, n):
    p, z = wins / n, Z95
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def test_win_rates_from_labels_count_ties_half():
    keys = [
        {"pair_id": "1", "mode": "sample", "baseline": "sft", "ppo_side": "A"},
        {"pair_id": "2", "mode": "sample", "baseline": "sft", "ppo_side": "B"},
        {"pair_id": "3", "mode": "sample", "baseline": "sft", "ppo_side": "A"},
        {"pair_id": "4", "mode": "sample", "baseline": "dpo", "ppo_side": "B"},
        {"pair_id": "5", "mode": "greedy", "baseline": "sft", "ppo_side": "A"},
    ]
    # sft: PPO won (1, A on A), tied (2), lost (3, B when PPO is A): 1.5 of 3; dpo: won (B on B); greedy unanswered
    rates = pairwise.ppo_win_rates(keys, {"1": "A", "2": "tie", "3": "B", "4": "B"})
    assert set(rates) == {"sample"} and set(rates["sample"]) == {"sft", "dpo"}
    sft = rates["sample"]["sft"]
    assert sft["value"] == 0.5 and sft["n"] == 3
    assert sft["ci"] == pytest.approx(wilson_by_hand(1.5, 3))
    assert rates["sample"]["dpo"]["value"] == 1.0 and rates["sample"]["dpo"]["ci"] == pytest.approx(
        wilson_by_hand(1, 1)
    )


def test_the_labelling_page_holds_every_pair_and_needs_no_network():
    shown = [p.shown() for p in pairs()]
    shown[0]["A"] = "</script><b>not markup</b>"
    page = pairwise.labelling_page(shown, "Which is better?", "labels.jsonl")
    assert all(s["pair_id"] in page for s in shown)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page), "nothing is loaded from anywhere"
    assert "</script><b>" not in page, "response text cannot close the script"
    assert "ppo" not in page.lower() and "sft" not in page and "dpo" not in page


def test_the_label_rules_name_this_rounds_ids_and_the_answers_needed():
    rules = pairwise.label_rules(["b", "a"], min_answers=2)
    described = {r.description: r for r in rules}
    assert described["every pair_id is one of this run's pairs"].kwargs["value_set"] == ["a", "b"]
    assert described["answers at least 2 of the 2 pairs"].kwargs["min_value"] == 2
    assert "one answer per pair" in described and "choice is A, B or tie" in described
