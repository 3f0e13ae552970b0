"""The two-turn variant of the embedded task (data.synthetic.turns: 2, seed reason 2): a review, then the answer to
a follow-up whose gold counts its consistency with the review, so a conversation's gold adds up over both turns.

Every score below is computed by hand from the judge's weights (gold_judge.JudgeWeights)."""

import random
import statistics
from pathlib import Path

import pytest

from components.adapters.validation import validate_data_dir
from components.config import load_config
from components.data import files
from components.data.dataset import write_dataset
from components.data.text import words
from components.task.demonstrator import write_conversation, write_demonstration
from components.task.gold_judge import WEIGHTS, gold_score, judge
from components.task.lexicon import TURN_MARKER, TWO_TURN_VOCABULARY, VOCABULARY
from components.task.prompts import Prompt, all_prompts, parse_prompt
from components.task.review_task import ReviewTask

PROMPT = Prompt("headphones", "positive", ("battery", "sound"), follow_up="comfort")
REVIEW = (
    "i bought these headphones last week. the battery lasts all day. the sound is very clear. i love these headphones."
)
FOLLOW_UP = "the comfort is soft."  # the follow-up aspect, as requested, with a predicate of its own


def conversation(second: str, first: str = REVIEW) -> str:
    return f"{first} {TURN_MARKER} {second}"


def test_a_clean_conversation_gets_the_two_turn_maximum():
    """The review's 5.5 plus the follow-up's covered (1) + detailed (0.5) + grammatical (1)."""
    j = judge(PROMPT, conversation(FOLLOW_UP))
    assert WEIGHTS.maximum_for(2) == 8.0 == WEIGHTS.maximum + 2.5
    assert j.score == pytest.approx(8.0) and j.terminated and j.aspects_covered == 3 and j.aspects_detailed == 3


@pytest.mark.parametrize(
    ("second", "penalty"),
    [
        (f"{FOLLOW_UP} the battery lasts all day.", 0.75 + 0.75),  # the review's clause again, and not the question
        (f"{FOLLOW_UP} the battery dies fast.", 1.0 + 0.75),  # the review's battery the other way, off the question
        ("the comfort is painful.", 1.0 + 0.5),  # the follow-up aspect, but not as requested: neither covered
        ("the comfort is great.", 0.5),  # covered, but generically
        ("the comfort is soft", 1.5),  # the second answer never ends
        (f"{FOLLOW_UP} i hope this review helps.", 1.0),  # a stock line (about nothing: not off the question)
    ],
)
def test_each_flaw_of_the_second_answer_costs_its_weights(second, penalty):
    assert judge(PROMPT, conversation(second)).score == pytest.approx(8.0 - penalty)


def test_the_same_second_answer_scores_by_what_the_first_one_said():
    """Cumulative gold: "the sound is muffled" contradicts a review that praised the sound (-1) and costs only its
    being off the question (-0.75) after one that never named it."""
    second = f"{FOLLOW_UP} the sound is muffled."
    without_sound = "i bought these headphones last week. the battery lasts all day. i love these headphones."
    after_praise = judge(PROMPT, conversation(second)).score - judge(PROMPT.first_turn, REVIEW).score
    after_silence = (
        judge(PROMPT, conversation(second, without_sound)).score - judge(PROMPT.first_turn, without_sound).score
    )
    assert after_praise == pytest.approx(2.5 - 0.75 - 1.0)
    assert after_silence == pytest.approx(2.5 - 0.75)


def test_a_conversation_without_its_second_answer_loses_that_answer_and_its_ending():
    """No turn marker: the review keeps its 5.5; the missing answer covers nothing, never ended (-1.5) and is 3 words
    short of the follow-up's least (-0.3)."""
    assert judge(PROMPT, REVIEW).score == pytest.approx(5.5 - 1.5 - 0.3)
    assert judge(PROMPT, conversation(FOLLOW_UP), ended=False).score == pytest.approx(8.0 - 1.5)


def test_two_turn_prompts_round_trip_and_ask_about_another_aspect_of_the_product():
    one, two = all_prompts(), all_prompts(2)
    assert len(two) == len(one) == len({p.text for p in two})
    assert all(parse_prompt(p.text) == p for p in two)
    assert [p.first_turn for p in two] == one  # the same reviews, each with a follow-up
    assert all(p.follow_up not in p.aspects for p in two)
    assert parse_prompt("write a positive review of the headphones that mentions the battery and the sound.") == (
        PROMPT.first_turn
    )
    assert parse_prompt(PROMPT.text.replace("comfort", "battery")) is None  # a follow-up on a reviewed aspect
    assert parse_prompt(PROMPT.text.replace("comfort", "screen")) is None  # the headphones have no screen


def test_a_careful_writer_answers_the_follow_up_cleanly_and_consistently():
    """Carelessness 0: every second answer covers the follow-up aspect as requested, repeats and contradicts nothing,
    so it adds exactly 2.5 (a predicate of its own) or 2.0 (only generic ones) to the review's score."""
    rng = random.Random(3)
    for prompt in all_prompts(2)[::7]:
        text = write_conversation(prompt, 0.0, rng)
        first = text.split(f" {TURN_MARKER} ")[0]
        added = gold_score(prompt, text) - gold_score(prompt.first_turn, first)
        assert added == pytest.approx(2.5) or added == pytest.approx(2.0), text


def test_careless_conversations_score_lower_and_use_only_the_two_turn_words():
    rng = random.Random(4)
    prompts = all_prompts(2)
    careful = [gold_score(p, write_conversation(p, 0.0, rng)) for p in prompts]
    careless = [gold_score(p, write_conversation(p, 1.0, rng)) for p in prompts]
    # margin: careless conversations lose at least 2 gold points on average (max 8; one-turn reviews lose > 1.5 of 5.5)
    assert statistics.fmean(careful) - statistics.fmean(careless) > 2.0
    used = {w for p in prompts[:200] for w in words(p.text) + words(write_conversation(p, 1.0, rng))}
    assert used <= TWO_TURN_VOCABULARY and TURN_MARKER in used and not used <= VOCABULARY
    one_turn = {w for p in all_prompts()[:200] for w in words(p.text) + words(write_demonstration(p, 1.0, rng))}
    assert one_turn <= VOCABULARY  # the one-turn task's words, and so its tokenizer, are unchanged


def test_two_turn_data_pass_the_data_gate_with_the_tasks_vocabulary_and_not_without(tmp_path):
    cfg = load_config("smoke", ["data.synthetic.turns=2", "validation.max_response_words=80"])
    task = ReviewTask(cfg)
    dataset = task.generate()
    assert all(parse_prompt(r["prompt"]).follow_up for r in dataset.rows[files.EVAL_PROMPTS])
    data_dir = tmp_path / "data"
    write_dataset(data_dir, dataset)
    assert validate_data_dir(data_dir, cfg.validation, task.vocabulary, tmp_path / "ok").success
    refused = validate_data_dir(data_dir, cfg.validation, VOCABULARY, tmp_path / "refused")
    assert not refused.success
    assert ("demonstrations.jsonl", "every word of 'response' is in the task's vocabulary") in {
        (Path(f.file).name, f.rule) for f in refused.failures
    }
    described = task.describe(dataset.rows)
    assert described["gold_maximum"] == 8.0
    # labels read the conversation's gold: Bradley-Terry at T = 0.6 agrees with it as often as expected (+-0.05)
    assert abs(described["label_accuracy_vs_gold"] - described["label_accuracy_expected"]) < 0.05
