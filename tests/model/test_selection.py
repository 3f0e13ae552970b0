"""Selection by labels: log-spaced snapshots, the held-out slice, and the labeller's pick."""

import copy

import pytest
import torch

from components.config import SelectionConfig
from components.data.files import EVAL_PROMPTS
from components.models.builders import build_policy
from components.task.gold_judge import gold_score
from components.training.loop import Snapshots
from components.training.selection import LabelledSlice, SliceItem, held_out_slice, label_win_rate, select_snapshot
from tests.model.conftest import SEED, TINY


def test_snapshots_are_log_spaced_from_the_first_few_steps_to_the_last():
    # 120^(1/4) = 3.31, 120^(1/2) = 10.95, 120^(3/4) = 36.26, 120: steps 3, 11, 36, 120, 0-based
    assert Snapshots(4).steps(120) == {2, 10, 35, 119}
    # 10^(1/4) = 1.78, 10^(1/2) = 3.16, 10^(3/4) = 5.62: 2, 3, 6, 10
    assert Snapshots(4).steps(10) == {1, 2, 5, 9}
    # 5^(1/4) = 1.495 -> 1, 5^(1/2) = 2.24 -> 2, 5^(3/4) = 3.34 -> 3, 5
    assert Snapshots(4).steps(5) == {0, 1, 2, 4}
    # 7^(1/4) = 1.63 -> 2, 7^(1/2) = 2.65 -> 3, 7^(3/4) = 4.30 -> 4, 7; with 8 candidates of 9 steps, rounding
    # repeats a step (9^(1/8) = 1.32 and 9^(2/8) = 1.73 round to 1 and 2, 9^(3/8) = 2.28 to 2 again): pushed to the next
    assert Snapshots(4).steps(7) == {1, 2, 3, 6}
    assert len(Snapshots(8).steps(9)) == 8 and max(Snapshots(8).steps(9)) == 8
    assert Snapshots(1).steps(10) == {9}
    assert Snapshots(5).steps(3) == {0, 1, 2}  # more snapshots than steps: every step once


def test_even_spacing_is_kept_for_those_who_ask_for_it():
    assert Snapshots(4, "even").steps(10) == {1, 4, 7, 9}  # round(2.5) = 2, round(5), round(7.5) = 8, round(10)


def test_the_slice_holds_each_held_out_groups_first_ranked_response():
    rows = [
        {"prompt": "p", "chosen": "b", "rejected": "c", "group": 1, "chosen_ended": True},
        {"prompt": "p", "chosen": "a", "rejected": "b", "group": 1, "chosen_ended": False},
        {"prompt": "p", "chosen": "a", "rejected": "c", "group": 1, "chosen_ended": False},
        {"prompt": "q", "chosen": "y", "rejected": "x", "group": 2},
    ]
    assert held_out_slice(rows, 5) == [SliceItem("p", "a", False), SliceItem("q", "y", True)]
    assert held_out_slice(rows, 1) == [SliceItem("p", "a", False)]


def gold_ranker(prompt, responses, ended):
    """A noiseless labeller: the gold judge's order."""
    return sorted(range(len(responses)), key=lambda i: -gold_score(prompt, responses[i], ended[i]))


def test_the_labeller_picks_the_trained_snapshot_over_an_untrained_one(tiny_sft, tokenizer, smoke_rows):
    """Two candidates: the untrained network (step 0) and the SFT policy (step 1). Against references that
    the untrained one never beats, the labeller must ship the SFT weights; the labels spent are prompts x 2."""
    sft = tiny_sft[0]
    untrained = build_policy(TINY, tokenizer, SEED)
    prompts = [r["prompt"] for r in smoke_rows[EVAL_PROMPTS]][:24]
    items = [SliceItem(p, "the the the", True) for p in prompts]  # a poor reference: the SFT policy beats it often
    cfg = SelectionConfig(candidates=2, prompts=24)
    snapshots = [(0, copy.deepcopy(untrained.state_dict())), (1, copy.deepcopy(sft.state_dict()))]
    chosen, selection = select_snapshot(
        untrained, snapshots, tokenizer, LabelledSlice(items, lambda: gold_ranker), cfg, TINY, SEED
    )
    assert selection.chosen_step == 1 and selection.labels == 48
    assert selection.scores[1] > selection.scores[0] + 0.3  # margin: measured 0.96 against 0.13
    assert all(torch.equal(a, b) for a, b in zip(chosen.state_dict().values(), sft.state_dict().values()))
    assert label_win_rate(sft, tokenizer, items, gold_ranker, cfg, TINY, SEED) == pytest.approx(selection.scores[1])


def test_without_a_slice_the_final_model_ships_and_no_label_is_spent(tiny_sft, tokenizer):
    sft = tiny_sft[0]
    model, selection = select_snapshot(
        sft,
        [(0, sft.state_dict()), (5, sft.state_dict())],
        tokenizer,
        LabelledSlice([], lambda: gold_ranker),
        SelectionConfig(),
        TINY,
        SEED,
    )
    assert model is sft and selection.labels == 0 and selection.chosen_step == 5
    assert selection.metrics() == {
        "selection.chosen_step": 5.0,
        "selection.labels": 0.0,
    }  # no win rate: nothing was judged
