"""The gold judge prefers a clean on-request review to each kind of flawed one."""

import pytest

from components.task.gold_judge import judge
from components.task.prompts import Prompt

PROMPT = Prompt("headphones", "positive", ("battery", "sound"))
CLEAN = (
    "i bought these headphones last week. the battery lasts all day. the sound is very clear. i love these headphones."
)

FLAWED = {
    "repetitive": "the battery lasts all day. the battery lasts all day. the battery lasts all day. the sound is clear.",
    "contradictory": "i bought these headphones last week. the battery lasts all day. the sound is clear. the battery dies fast.",
    "unterminated": "i bought these headphones last week. the battery lasts all day. the sound is very clear. i love these",
    "off_topic": "i bought these headphones last week. the screen is bright. the wheels are smooth. i love these headphones.",
    "wrong_sentiment": "i bought these headphones last week. the battery dies fast. the sound is muffled. i regret buying these headphones.",
    "ungrammatical": "i bought these headphones last week. battery the lasts all day. the sound are very clear. love i these headphones.",
    "missing_aspect": "i bought these headphones last week. the battery lasts all day. i love these headphones.",
    "stock_closing": CLEAN + " i hope this review helps.",
}


def test_a_stock_closing_line_costs_exactly_its_weight():
    """25 words: inside the length window, so the only change from the clean review is the stock line (-1.0);
    it is grammatical and about nothing, so it is neither off-topic nor a grammar slip."""
    j = judge(PROMPT, FLAWED["stock_closing"])
    assert j.stock_phrases == 1 and j.n_words == 25 and j.grammatical == 1.0 and j.off_topic == 0
    assert j.score == pytest.approx(4.5 - 1.0)
    assert judge(PROMPT, FLAWED["stock_closing"] + " i hope this review helps.").repetitions == 1


def test_clean_review_gets_the_maximum_score():
    j = judge(PROMPT, CLEAN)
    assert j.aspects_covered == 2 and j.verdict and j.terminated
    assert j.grammatical == 1.0 and j.sentiment_match == 1.0
    assert j.score == pytest.approx(4.5)


@pytest.mark.parametrize("kind", sorted(FLAWED))
def test_clean_review_beats_flawed_one(kind):
    assert judge(PROMPT, CLEAN).score - judge(PROMPT, FLAWED[kind]).score >= 0.5


def test_generation_that_never_ended_is_unterminated_even_with_a_period():
    assert judge(PROMPT, CLEAN, ended=True).terminated
    assert not judge(PROMPT, CLEAN, ended=False).terminated
    assert judge(PROMPT, CLEAN, ended=False).score < judge(PROMPT, CLEAN).score


def test_judge_reads_the_prompt_text_and_rejects_foreign_prompts():
    assert judge(PROMPT.text, CLEAN) == judge(PROMPT, CLEAN)
    with pytest.raises(ValueError, match="not a prompt"):
        judge("summarise this article.", CLEAN)


def test_degenerate_word_salad_scores_far_below_clean():
    assert judge(PROMPT, "the the the the the the the the the the the.").score < 0
