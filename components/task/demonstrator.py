"""The noisy demonstrator: writes reviews of mixed quality for SFT.

Each demonstration draws its own carelessness c in [0, 1]; every kind of mistake the gold
judge punishes happens with a probability proportional to c. Token-level imitation of these
demonstrations reproduces the average carelessness; only a sequence-level signal can remove it.

Apart from the random slips, the demonstrators share one habit whatever their care: with probability
``stock_closing`` a review ends with a stock line ("i hope this review helps."), which says nothing
about the product and which the gold judge penalises. Above 0.5 it is the demonstrations' mode, so
imitation (and greedy decoding of it) keeps it: a systematic gap that labellers' rankings can close.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from components.data.text import END_OF_SENTENCE, join_words
from components.task.grammar import aspect_clauses, product_clauses
from components.task.lexicon import (
    ASPECTS,
    CONJUNCTION,
    NEUTRAL_CLAUSES,
    OVERALL_NEGATIVE,
    OVERALL_POSITIVE,
    POSITIVE,
    PRODUCTS,
    STOCK_CLOSING,
    TURN_MARKER,
)
from components.task.prompts import Prompt


@dataclass(frozen=True)
class DemonstratorStyle:
    """How a careful writer structures a review, and how often each mistake happens per unit of carelessness."""

    opener: float = 0.5  # a neutral first sentence
    extra_aspect: float = 0.25  # a third, unrequested aspect of the product
    join_aspects: float = 0.35  # both aspects in one sentence with "and"
    verdict: float = 0.8  # an overall closing sentence
    flip_sentiment: float = 0.5
    drop_aspect: float = 0.4
    repeat_sentence: float = 0.4
    contradict: float = 0.3
    off_topic: float = 0.3
    grammar_slip: float = 0.4
    unterminated: float = 0.3


STYLE = DemonstratorStyle()


def _clause_about(aspect: str, polarity: int, rng: random.Random) -> str:
    return rng.choice(aspect_clauses(aspect, polarity))


def _product_clause(prompt: Prompt, templates: tuple[str, ...], rng: random.Random) -> str:
    return rng.choice(product_clauses(PRODUCTS[prompt.product], templates))


def _grammar_slip(sentence: list[str], rng: random.Random) -> list[str]:
    """Break agreement if the sentence has a copula, else swap or drop a word."""
    sentence = list(sentence)
    copulas = [i for i, w in enumerate(sentence) if w in ("is", "are")]
    if copulas and rng.random() < 0.5:
        i = rng.choice(copulas)
        sentence[i] = "are" if sentence[i] == "is" else "is"
    elif len(sentence) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(sentence) - 1)
        sentence[i], sentence[i + 1] = sentence[i + 1], sentence[i]
    elif len(sentence) > 1:
        del sentence[rng.randrange(len(sentence))]
    return sentence


def _written(
    sentences: list[str], slip: Callable[[float], bool], style: DemonstratorStyle, rng: random.Random, break_off: bool
) -> str:
    """The sentences as text, with the writer's last two slips: a grammar slip in one sentence, and no final period
    (``break_off``: the last sentence may then stop mid-way too; a review keeps 3 words, the data contract's least)."""
    tokens_per_sentence = [s.split() for s in sentences]
    if slip(style.grammar_slip):
        i = rng.randrange(len(tokens_per_sentence))
        tokens_per_sentence[i] = _grammar_slip(tokens_per_sentence[i], rng)
    tokens: list[str] = []
    for sentence in tokens_per_sentence:
        tokens.extend([*sentence, END_OF_SENTENCE])
    if slip(style.unterminated):
        tokens.pop()  # the final period
        if break_off and len(tokens_per_sentence[-1]) > 2 and len(tokens) > 3 and rng.random() < 0.5:
            tokens.pop()
    return join_words(tokens)


def write_demonstration(
    prompt: Prompt,
    carelessness: float,
    rng: random.Random,
    style: DemonstratorStyle = STYLE,
    stock_closing: float = 0.0,
) -> str:
    c = carelessness
    polarity = prompt.polarity
    product = PRODUCTS[prompt.product]
    slip = lambda p: rng.random() < p * c  # noqa: E731 - one mistake draw, read as a verb below

    aspects = list(prompt.aspects)
    rng.shuffle(aspects)
    if slip(style.drop_aspect):
        aspects.pop()
    if rng.random() < style.extra_aspect:
        # a careful writer of a conversation keeps the follow-up's aspect for the follow-up
        aspects.append(rng.choice([a for a in product.aspects if a not in prompt.aspects and a != prompt.follow_up]))
    aspect_text = [_clause_about(a, -polarity if slip(style.flip_sentiment) else polarity, rng) for a in aspects]

    sentences: list[str] = []
    if rng.random() < style.opener:
        sentences.append(_product_clause(prompt, NEUTRAL_CLAUSES, rng))
    if len(aspect_text) >= 2 and rng.random() < style.join_aspects:
        sentences.append(f"{aspect_text[0]} {CONJUNCTION} {aspect_text[1]}")
        sentences.extend(aspect_text[2:])
    else:
        sentences.extend(aspect_text)
    if slip(style.contradict):
        sentences.append(_clause_about(rng.choice(prompt.aspects), -polarity, rng))
    if slip(style.off_topic):
        elsewhere = sorted(set(ASPECTS) - set(product.aspects))
        sentences.append(_clause_about(rng.choice(elsewhere), polarity, rng))
    if rng.random() < style.verdict:
        verdict_polarity = -polarity if slip(style.flip_sentiment) else polarity
        sentences.append(
            _product_clause(prompt, OVERALL_POSITIVE if verdict_polarity == POSITIVE else OVERALL_NEGATIVE, rng)
        )
    if slip(style.repeat_sentence):
        i = rng.randrange(len(sentences))
        sentences.insert(i + 1, sentences[i])
    if (
        stock_closing > 0 and rng.random() < stock_closing
    ):  # no draw at 0: the data of a habit-free task stay as they were
        sentences.append(STOCK_CLOSING)

    return _written(sentences, slip, style, rng, break_off=True)


def write_follow_up(
    prompt: Prompt, first_answer: str, carelessness: float, rng: random.Random, style: DemonstratorStyle = STYLE
) -> str:
    """The second turn's answer: a clause about the follow-up aspect, with the same mistakes per unit of
    carelessness as the review, some of which only a reader of the first answer can see (saying one of its
    sentences again, saying the opposite of it)."""
    c, polarity = carelessness, prompt.polarity
    slip = lambda p: rng.random() < p * c  # noqa: E731 - one mistake draw, read as a verb below

    subject = rng.choice(prompt.aspects) if slip(style.off_topic) else prompt.follow_up  # answers the wrong question
    sentences = [_clause_about(subject, -polarity if slip(style.flip_sentiment) else polarity, rng)]
    if slip(style.contradict):
        sentences.append(_clause_about(rng.choice(prompt.aspects), -polarity, rng))
    earlier = [s.strip() for s in first_answer.split(END_OF_SENTENCE) if s.strip()]
    if earlier and slip(style.repeat_sentence):
        sentences.append(rng.choice(earlier))

    return _written(sentences, slip, style, rng, break_off=False)


def write_conversation(
    prompt: Prompt,
    carelessness: float,
    rng: random.Random,
    style: DemonstratorStyle = STYLE,
    stock_closing: float = 0.0,
) -> str:
    """Both answers of a two-turn prompt, the second opened by the turn marker; one carelessness for the writer."""
    first = write_demonstration(prompt, carelessness, rng, style, stock_closing)
    return f"{first} {TURN_MARKER} {write_follow_up(prompt, first, carelessness, rng, style)}"


def write_answer(
    prompt: Prompt,
    carelessness: float,
    rng: random.Random,
    style: DemonstratorStyle = STYLE,
    stock_closing: float = 0.0,
) -> str:
    """What the demonstrator writes for ``prompt``: a review, or a conversation's two answers."""
    writer = write_conversation if prompt.follow_up else write_demonstration
    return writer(prompt, carelessness, rng, style, stock_closing)


def draw_carelessness(rng: random.Random, alpha: float, beta: float) -> float:
    return round(rng.betavariate(alpha, beta), 4)
