"""The five reasons' verdicts from hand-made intervals, and the token-sensitivity summary and edits by hand."""

from __future__ import annotations

import math
import random

import pytest

from components.evaluation.evaluation_report import EvaluationReport, ModeEvaluation
from components.evaluation.five_reasons import CONFIRMED, INCONCLUSIVE, NOT_MEASURED, REFUTED, five_reasons
from components.evaluation.token_sensitivity import EditedPair, one_token_edits, summarise
from components.models.tokenizer import build_word_tokenizer


def win(lo: float, hi: float) -> dict:
    return {"value": (lo + hi) / 2, "ci": [lo, hi]}


def evaluation(**by_baseline: tuple[tuple[float, float], tuple[float, float]]) -> EvaluationReport:
    """The RL policy's win rate against each baseline in each mode: (sample interval, greedy interval)."""
    return EvaluationReport(
        {
            mode: ModeEvaluation(ppo_win_rate={name: win(*intervals[k]) for name, intervals in by_baseline.items()})
            for k, mode in enumerate(("sample", "greedy"))
        }
    )


def test_a_verdict_needs_every_mode_and_an_interval_clear_of_the_line():
    found = five_reasons(
        evaluation(
            chosen=((0.6, 0.7), (0.55, 0.9)),  # above 0.5 in both modes
            combined=((0.6, 0.7), (0.4, 0.9)),  # greedy holds 0.5
            top_ranked=((0.2, 0.4), (0.1, 0.45)),  # below in both
            sft=((0.6, 0.7), (0.2, 0.3)),  # the modes disagree
        ),
        rm_accuracy=0.71,
        sensitivity=None,
    )
    verdicts = {reason.number: reason.verdict for reason in found}
    assert verdicts == {1: CONFIRMED, 2: INCONCLUSIVE, 3: NOT_MEASURED, 4: REFUTED, 5: INCONCLUSIVE}
    assert (
        "RM held-out accuracy 0.710" in found[0].evidence
        and "greedy: 0.725 [0.550, 0.900]; ppo vs chosen, sample" in found[0].evidence
    )


def test_reason_two_is_refuted_when_rl_beats_the_combined_loss_on_single_answers():
    """The claim is that the combined loss works for single answers: RL beating it there refutes it."""
    found = five_reasons(evaluation(combined=((0.6, 0.7), (0.55, 0.6))), None, None)
    assert found[1].verdict == REFUTED
    assert five_reasons(evaluation(combined=((0.3, 0.4), (0.2, 0.45))), None, None)[1].verdict == CONFIRMED


def test_reason_five_needs_sft_plus_rl_to_beat_both_halves_where_rl_without_sft_was_trained():
    found = five_reasons(evaluation(sft=((0.6, 0.7), (0.6, 0.7))), None, None)
    assert found[4].verdict == CONFIRMED and "rl_without_sft" not in found[4].evidence
    both = evaluation(sft=((0.6, 0.7), (0.6, 0.7)), rl_without_sft=((0.45, 0.7), (0.9, 1.0)))
    assert five_reasons(both, None, None)[4].verdict == INCONCLUSIVE  # RL alone not beaten under sampling
    both = evaluation(sft=((0.6, 0.7), (0.6, 0.7)), rl_without_sft=((0.8, 0.9), (0.9, 1.0)))
    assert five_reasons(both, None, None)[4].verdict == CONFIRMED


def pair(gold: tuple[float, float], loss: tuple[float, float], rm: tuple[float, float]) -> EditedPair:
    return EditedPair("p", "a b", "a c", gold, loss, rm)


def test_the_summary_by_hand():
    """Four edits; the judge: better, worse, better, worse. SFT's loss falls (it likes the edit) on 1 and rises on 2,
    3, 4: it agrees on 1, 2, 4 (3/4). The RM rises on 1 and 3, falls on 2, stays put on 4 (no order, no agreement):
    it agrees on 1, 2, 3 (3/4). Paired differences (RM - SFT) 0, 0, +1, -1: mean 0."""
    pairs = [
        pair((0.0, 1.0), (2.0, 1.5), (0.0, 0.5)),
        pair((1.0, 0.0), (2.0, 2.5), (0.0, -0.5)),
        pair((0.0, 2.0), (2.0, 2.2), (0.0, 0.3)),
        pair((2.0, 1.0), (1.0, 1.4), (0.1, 0.1)),
    ]
    summary = summarise(pairs)
    assert summary["pairs"] == 4
    assert summary["sft_loss_agrees"]["value"] == 0.75 and summary["rm_agrees"]["value"] == 0.75
    assert summary["rm_minus_sft_agreement"]["value"] == pytest.approx(0.0)
    # the judge's changes 1, 1, 2, 1 over the spread of 0, 1, 0, 2 (population variance 11/16): median 1 / sqrt(11/16)
    assert summary["median_change_in_spreads"]["gold"] == pytest.approx(1 / math.sqrt(11 / 16), rel=1e-12)


def test_an_edit_replaces_exactly_one_token():
    tokenizer = build_word_tokenizer(frozenset(["the", "phone", "is", "good", "bad", "great", "ok"]))
    candidates = [tokenizer.convert_tokens_to_ids(w) for w in ("good", "bad", "great", "ok")]
    edits = one_token_edits("the phone is good", tokenizer, candidates, tries=20, rng=random.Random(0))
    assert len(edits) >= 10
    for edit in edits:
        assert len(edit.split()) == 4 and sum(a != b for a, b in zip(edit.split(), ["the", "phone", "is", "good"])) == 1


def test_reason_two_on_a_two_turn_task_is_its_conversational_half_and_rl_winning_confirms_it():
    """One turn: RL beating the combined loss refutes "a combined loss works for single answers"; two turns: the same
    win confirms "coherent conversations need cumulative rewards"."""
    win = evaluation(combined=((0.6, 0.7), (0.55, 0.6)))
    one, two = five_reasons(win, None, None)[1], five_reasons(win, None, None, turns=2)[1]
    assert one.verdict == REFUTED and "single answers" in one.claim
    assert two.verdict == CONFIRMED and "cumulative rewards" in two.claim
    assert five_reasons(evaluation(combined=((0.3, 0.4), (0.2, 0.45))), None, None, turns=2)[1].verdict == REFUTED
