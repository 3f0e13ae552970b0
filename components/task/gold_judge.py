"""The hidden gold judge: scores a whole response on sequence-level properties.

A two-turn conversation (data.synthetic.turns: 2) scores its review as a one-turn response and adds the follow-up
answer's score, which counts what contradicts or repeats the review: the second answer is only as good as it is
consistent with the first, so a conversation's gold is cumulative.

It stands in for human raters (the synthetic-gold setup of Gao et al. 2022): it labels
preferences through the simulated labeler and scores policies in evaluation. No training
step may call it; a test guards that.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from components.data.text import words
from components.task.grammar import ASPECT, OVERALL, STOCK, Clause, parse_sentence, split_sentences
from components.task.lexicon import NEUTRAL, PRODUCTS, TURN_MARKER
from components.task.prompts import Prompt, parse_prompt


@dataclass(frozen=True)
class JudgeWeights:
    per_aspect_covered: float = 1.0  # each requested aspect praised/criticised as requested
    per_aspect_detailed: float = 0.5  # ... with a predicate of its own ("the sound is muffled", not "bad")
    sentiment_match: float = 1.0  # times the share of polar clauses with the requested sentiment
    grammatical: float = 1.0  # times the share of sentences that parse
    verdict: float = 0.5  # an overall verdict with the requested sentiment
    per_contradiction: float = 1.0  # a subject described both ways
    per_repetition: float = 0.75  # a clause or sentence said again
    per_off_topic: float = 0.75  # a clause about another product or an aspect it lacks
    per_stutter: float = 0.25  # a word right after itself ("the the")
    per_stock_phrase: float = 1.0  # a stock closing line that says nothing about the product
    unterminated: float = 1.5  # no final period, or generation never ended
    per_word_outside_length: float = 0.1
    min_words: int = 10
    max_words: int = 25
    follow_up_min_words: int = 3
    follow_up_max_words: int = 12

    @property
    def maximum(self) -> float:
        """A clean, detailed, on-request review's score: the top of the judge's range."""
        per_aspect = self.per_aspect_covered + self.per_aspect_detailed
        return 2 * per_aspect + self.sentiment_match + self.grammatical + self.verdict

    @property
    def follow_up_maximum(self) -> float:
        """A clean, detailed follow-up answer's score, added to the review's in a two-turn conversation."""
        return self.per_aspect_covered + self.per_aspect_detailed + self.grammatical

    def maximum_for(self, turns: int) -> float:
        return self.maximum + (self.follow_up_maximum if turns == 2 else 0.0)


WEIGHTS = JudgeWeights()


@dataclass(frozen=True)
class Judgement:
    score: float
    n_words: int
    n_sentences: int
    grammatical: float
    sentiment_match: float
    aspects_covered: int
    aspects_detailed: int
    verdict: bool
    contradictions: int
    repetitions: int
    off_topic: int
    stutters: int
    stock_phrases: int
    terminated: bool


def judge(prompt: Prompt | str, response: str, ended: bool = True, weights: JudgeWeights = WEIGHTS) -> Judgement:
    """Score ``response`` to ``prompt``; ``ended`` is False when generation stopped without EOS."""
    if isinstance(prompt, str):
        parsed = parse_prompt(prompt)
        if parsed is None:
            raise ValueError(f"not a prompt of the embedded task: {prompt!r}")
        prompt = parsed
    tokens = words(response)
    if prompt.follow_up is None:
        return judge_review(prompt, tokens, ended, weights)
    first, second = split_turns(tokens)
    return judge_conversation(prompt, first, second, ended, weights)


def split_turns(tokens: list[str]) -> tuple[list[str], list[str] | None]:
    """The first answer and the second (None when the turn marker never comes)."""
    if TURN_MARKER not in tokens:
        return tokens, None
    at = tokens.index(TURN_MARKER)
    return tokens[:at], tokens[at + 1 :]


def judge_review(prompt: Prompt, tokens: list[str], ended: bool, weights: JudgeWeights) -> Judgement:
    """A one-turn review's score."""
    product = PRODUCTS[prompt.product]
    sentences, remainder = split_sentences(tokens)
    terminated = ended and not remainder and bool(sentences)
    if remainder:
        sentences = [*sentences, remainder]

    n_grammatical = 0
    seen_clauses: set = set()
    seen_ungrammatical: set[tuple[str, ...]] = set()
    repetitions = off_topic = on_sentiment = polar = stock_phrases = 0
    polarities: dict[tuple[str, str], set[int]] = {}
    covered: set[str] = set()
    detailed: set[str] = set()
    verdict = False
    for sentence in sentences:
        clauses = parse_sentence(sentence)
        if clauses is None:
            key = tuple(sentence)
            repetitions += key in seen_ungrammatical
            seen_ungrammatical.add(key)
            continue
        n_grammatical += 1
        for clause in clauses:
            repetitions += clause in seen_clauses
            seen_clauses.add(clause)
            if clause.kind == STOCK:
                stock_phrases += 1
                continue
            about_product = (
                clause.subject in product.aspects if clause.kind == ASPECT else clause.subject == product.name
            )
            if not about_product:
                off_topic += 1
                continue
            if clause.polarity == NEUTRAL:
                continue
            polar += 1
            polarities.setdefault((clause.kind, clause.subject), set()).add(clause.polarity)
            if clause.polarity == prompt.polarity:
                on_sentiment += 1
                if clause.kind == ASPECT and clause.subject in prompt.aspects:
                    covered.add(clause.subject)
                    if clause.specific:
                        detailed.add(clause.subject)
                elif clause.kind != ASPECT:
                    verdict = True
    contradictions = sum(len(p) > 1 for p in polarities.values())

    stutters = sum(a == b for a, b in itertools.pairwise(tokens))
    n_words = sum(t.isalpha() for t in tokens)
    outside = max(0, weights.min_words - n_words) + max(0, n_words - weights.max_words)
    grammatical = n_grammatical / len(sentences) if sentences else 0.0
    sentiment_match = on_sentiment / polar if polar else 0.0
    score = (
        weights.per_aspect_covered * len(covered)
        + weights.per_aspect_detailed * len(detailed)
        + weights.sentiment_match * sentiment_match
        + weights.grammatical * grammatical
        + weights.verdict * verdict
        - weights.per_contradiction * contradictions
        - weights.per_repetition * repetitions
        - weights.per_off_topic * off_topic
        - weights.per_stutter * stutters
        - weights.per_stock_phrase * stock_phrases
        - weights.unterminated * (not terminated)
        - weights.per_word_outside_length * outside
    )
    return Judgement(
        score=round(score, 6),
        n_words=n_words,
        n_sentences=len(sentences),
        grammatical=grammatical,
        sentiment_match=sentiment_match,
        aspects_covered=len(covered),
        aspects_detailed=len(detailed),
        verdict=verdict,
        contradictions=contradictions,
        repetitions=repetitions,
        off_topic=off_topic,
        stutters=stutters,
        stock_phrases=stock_phrases,
        terminated=terminated,
    )


def said(tokens: list[str]) -> list[Clause]:
    """The clauses of every grammatical sentence, in order (a sentence left unterminated counts)."""
    sentences, remainder = split_sentences(tokens)
    parsed = (parse_sentence(sentence) for sentence in [*sentences, remainder] if sentence)
    return [clause for clauses in parsed if clauses for clause in clauses]


def judge_follow_up(
    prompt: Prompt, first: list[str], second: list[str], ended: bool, weights: JudgeWeights
) -> Judgement:
    """The second answer's score and counts: it must tell about the follow-up aspect as requested and stay
    consistent with the first answer (a clause of it said again is a repetition, a subject of it described the other
    way a contradiction)."""
    sentences, remainder = split_sentences(second)
    terminated = ended and not remainder and bool(sentences)
    if remainder:
        sentences = [*sentences, remainder]
    earlier = said(first)
    seen = set(earlier)
    earlier_polarities: dict[tuple[str, str], set[int]] = {}
    for clause in earlier:
        if clause.kind == ASPECT or clause.kind == OVERALL:
            earlier_polarities.setdefault((clause.kind, clause.subject), set()).add(clause.polarity)
    polarities = {key: set(value) for key, value in earlier_polarities.items()}
    n_grammatical = repetitions = off_topic = stock_phrases = 0
    covered = detailed = False
    for sentence in sentences:
        clauses = parse_sentence(sentence)
        if clauses is None:
            continue
        n_grammatical += 1
        for clause in clauses:
            repetitions += clause in seen
            seen.add(clause)
            if clause.kind == STOCK:
                stock_phrases += 1
            elif clause.kind != ASPECT or clause.subject != prompt.follow_up:
                off_topic += 1  # the follow-up asked about one aspect
            if clause.kind in (ASPECT, OVERALL):
                polarities.setdefault((clause.kind, clause.subject), set()).add(clause.polarity)
            if clause.kind == ASPECT and clause.subject == prompt.follow_up and clause.polarity == prompt.polarity:
                covered, detailed = True, detailed or clause.specific
    # only what the second answer adds: the review's own contradictions are counted in its score
    contradictions = sum(len(p) > 1 for p in polarities.values()) - sum(len(p) > 1 for p in earlier_polarities.values())
    stutters = sum(a == b for a, b in itertools.pairwise(second))
    n_words = sum(t.isalpha() for t in second)
    outside = max(0, weights.follow_up_min_words - n_words) + max(0, n_words - weights.follow_up_max_words)
    grammatical = n_grammatical / len(sentences) if sentences else 0.0
    score = (
        weights.per_aspect_covered * covered
        + weights.per_aspect_detailed * detailed
        + weights.grammatical * grammatical
        - weights.per_contradiction * contradictions
        - weights.per_repetition * repetitions
        - weights.per_off_topic * off_topic
        - weights.per_stutter * stutters
        - weights.per_stock_phrase * stock_phrases
        - weights.unterminated * (not terminated)
        - weights.per_word_outside_length * outside
    )
    return Judgement(
        score=score,
        n_words=n_words,
        n_sentences=len(sentences),
        grammatical=grammatical,
        sentiment_match=0.0,
        aspects_covered=int(covered),
        aspects_detailed=int(detailed),
        verdict=False,
        contradictions=contradictions,
        repetitions=repetitions,
        off_topic=off_topic,
        stutters=stutters,
        stock_phrases=stock_phrases,
        terminated=terminated,
    )


def judge_conversation(
    prompt: Prompt, first: list[str], second: list[str] | None, ended: bool, weights: JudgeWeights
) -> Judgement:
    """A two-turn conversation: the review (the turn marker ends it, as EOS ends a one-turn response) plus the
    follow-up; a conversation without the second answer scores that answer as empty and never ended."""
    review = judge_review(prompt.first_turn, first, ended if second is None else True, weights)
    follow = judge_follow_up(prompt, first, second or [], ended and second is not None, weights)
    sentences = review.n_sentences + follow.n_sentences
    return Judgement(
        score=round(review.score + follow.score, 6),
        n_words=review.n_words + follow.n_words,
        n_sentences=sentences,
        grammatical=(review.grammatical * review.n_sentences + follow.grammatical * follow.n_sentences) / sentences
        if sentences
        else 0.0,
        sentiment_match=review.sentiment_match,
        aspects_covered=review.aspects_covered + follow.aspects_covered,
        aspects_detailed=review.aspects_detailed + follow.aspects_detailed,
        verdict=review.verdict,
        contradictions=review.contradictions + follow.contradictions,
        repetitions=review.repetitions + follow.repetitions,
        off_topic=review.off_topic + follow.off_topic,
        stutters=review.stutters + follow.stutters,
        stock_phrases=review.stock_phrases + follow.stock_phrases,
        terminated=review.terminated and follow.terminated,
    )


def gold_score(prompt: Prompt | str, response: str, ended: bool = True) -> float:
    return judge(prompt, response, ended).score
