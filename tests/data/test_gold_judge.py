"""The gold judge prefers a clean on-request review to each kind of flawed one."""

import pytest

from components.task.gold_judge import WEIGHTS, judge
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
    assert j.score == pytest.approx(WEIGHTS.maximum - 1.0)
    assert judge(PROMPT, FLAWED["stock_closing"] + " i hope this review helps.").repetitions == 1


def test_clean_review_gets_the_maximum_score():
    """Both aspects with predicates of their own ("lasts all day", "very clear"): 2 x (1 + 0.5) + 1 + 1 + 0.5."""
    j = judge(PROMPT, CLEAN)
    assert j.aspects_covered == 2 and j.aspects_detailed == 2 and j.verdict and j.terminated
    assert j.grammatical == 1.0 and j.sentiment_match == 1.0
    assert WEIGHTS.maximum == 5.5
    assert j.score == pytest.approx(5.5)


@pytest.mark.parametrize(
    ("battery", "sound", "detailed"),
    [
        ("lasts all day", "is very clear", 2),
        ("is great", "is very clear", 1),
        ("lasts all day", "is really good", 1),
        ("is great", "is very good", 0),
    ],
)
def test_each_aspect_described_only_generically_costs_its_detail_weight(battery, sound, detailed):
    """The same clean review with "great"/"good" in place of an aspect's own predicate: 0.5 less per aspect, and
    covering the aspect still counts (a generic word of the right sentiment covers it)."""
    review = f"i bought these headphones last week. the battery {battery}. the sound {sound}. i love these headphones."
    j = judge(PROMPT, review)
    assert (j.aspects_covered, j.aspects_detailed) == (2, detailed)
    assert j.score == pytest.approx(5.5 - 0.5 * (2 - detailed))


def test_detail_counts_only_for_requested_aspects_with_the_requested_sentiment():
    """ "the battery dies fast" is specific but negative: in a positive review it is a contradiction, not detail."""
    j = judge(PROMPT, "the battery lasts all day. the battery dies fast. the sound is great. i love these headphones.")
    assert j.aspects_detailed == 1 and j.contradictions == 1


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
