"""People as the judge: blinded pairs, win rates from labels (known answers by hand), the offline labelling page."""

import math
import re

import pytest

from components.evaluation import pairwise
from components.evaluation.intervals import Z95
from components.labelling import pairwise_labels

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
    shown = [p.shown() for p in pairwise_labels.shuffled(made, seed=3)]
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
    page = pairwise_labels.labelling_page(shown, "Which is better?", "labels.jsonl")
    assert all(s["pair_id"] in page for s in shown)
    assert not re.search(r"(src|href)=\"?(https?:)?//", page), "nothing is loaded from anywhere"
    assert "</script><b>" not in page, "response text cannot close the script"
    assert "ppo" not in page.lower() and "sft" not in page and "dpo" not in page


def test_the_label_rules_name_this_rounds_ids_and_the_answers_needed():
    rules = pairwise_labels.label_rules(["b", "a"], min_answers=2)
    described = {r.description: r for r in rules}
    assert described["every pair_id is one of this run's pairs"].kwargs["value_set"] == ["a", "b"]
    assert described["answers at least 2 of the 2 pairs"].kwargs["min_value"] == 2
    assert "one answer per pair" in described and "choice is A, B or tie" in described


GROUPS = [
    [("good and kind words", True), ("short", True), ("good and kind words", True), ("plain but fine text", False)],
    [("one two three", True), ("four five six", True), ("seven eight nine", True)],
]


def round_pairs(round_id="round", track="ppo"):
    return pairwise_labels.sample_pairs(round_id, track, ["q0", "q1"], GROUPS, min_words=3, seed=5)


def test_a_rounds_pairs_are_every_pair_of_each_prompts_distinct_long_enough_samples():
    keys = round_pairs()
    # q0: "short" is under 3 words and the repeat collapses: 2 distinct responses, 1 pair; q1: 3 choose 2 = 3
    assert [(k["prompt"], k["group"]) for k in keys] == [("q0", 0), ("q1", 1), ("q1", 1), ("q1", 1)]
    assert {frozenset((k["A"], k["B"])) for k in keys if k["group"] == 1} == {
        frozenset(pair)
        for pair in (
            ("one two three", "four five six"),
            ("one two three", "seven eight nine"),
            ("four five six", "seven eight nine"),
        )
    }
    q0 = keys[0]
    assert {q0["A"]: q0["A_ended"], q0["B"]: q0["B_ended"]} == {
        "good and kind words": True,
        "plain but fine text": False,
    }
    assert round_pairs() == keys, "a rerun exports the same pairs"
    assert not {k["pair_id"] for k in keys} & {k["pair_id"] for k in round_pairs(track="dpo")}
    assert set(pairwise_labels.shown(keys)[0]) == {"pair_id", "prompt", "A", "B"}, "no track or group shown"


def test_answered_pairs_become_their_tracks_preference_rows_and_ties_none():
    keys = round_pairs() + round_pairs(track="dpo")
    labels = {keys[0]["pair_id"]: "B", keys[1]["pair_id"]: "A", keys[2]["pair_id"]: "tie", keys[4]["pair_id"]: "A"}
    rows = pairwise_labels.preference_rows(keys, labels)
    assert [len(rows["ppo"]), len(rows["dpo"])] == [2, 1]
    first = rows["ppo"][0]
    assert (first["chosen"], first["rejected"], first["chosen_position"]) == (keys[0]["B"], keys[0]["A"], 1)
    assert (first["chosen_ended"], first["rejected_ended"]) == (keys[0]["B_ended"], keys[0]["A_ended"])
    assert rows["ppo"][1]["chosen_position"] == 0 and rows["ppo"][1]["group"] == 1
    assert {row["source"] for row in rows["ppo"] + rows["dpo"]} == {"human"}


def test_the_answers_needed_are_the_share_rounded_up_and_at_least_one():
    assert pairwise_labels.min_answers(0.3, 10) == 3  # 0.3 * 10 is 3.0000000000000004 in floats: not 4
    assert pairwise_labels.min_answers(0.25, 10) == 3  # 2.5 rounded up
    assert pairwise_labels.min_answers(0.0, 10) == 1
    assert pairwise_labels.min_answers(1.0, 7) == 7
