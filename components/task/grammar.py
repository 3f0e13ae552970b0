"""The grammar of the embedded task: every valid clause, enumerated, with what it says.

A sentence is one clause or two clauses joined by "and", ended by a period. Parsing is a
table look-up, so the judge and the demonstrator agree exactly on what is grammatical.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from components.data.text import END_OF_SENTENCE
from components.task.lexicon import (
    ASPECTS,
    CONJUNCTION,
    GENERIC_NEGATIVE,
    GENERIC_POSITIVE,
    INTENSIFIERS,
    NEGATIVE,
    NEUTRAL,
    NEUTRAL_CLAUSES,
    OVERALL_NEGATIVE,
    OVERALL_POSITIVE,
    POSITIVE,
    PRODUCTS,
    STOCK_CLOSING,
    VERB_PHRASES,
    Product,
)

ASPECT, OVERALL, NEUTRAL_KIND, STOCK = "aspect", "overall", "neutral", "stock"


@dataclass(frozen=True)
class Clause:
    kind: str  # aspect | overall | neutral | stock
    subject: str  # the aspect, or the product for overall/neutral clauses ("" for the stock closing)
    polarity: int  # POSITIVE, NEGATIVE or NEUTRAL
    specific: bool = False  # an aspect described by a predicate of its own ("the battery lasts all day"), not "great"


def predicate_clauses(aspect: str, predicate: str) -> list[str]:
    """Every grammatical clause giving ``aspect`` the ``predicate`` (with each intensifier where one fits)."""
    if predicate in VERB_PHRASES:
        return [f"the {aspect} {predicate}"]
    copula = "are" if ASPECTS[aspect].plural else "is"
    clauses = [f"the {aspect} {copula} {predicate}"]
    if " " not in predicate:
        clauses.extend(f"the {aspect} {copula} {adverb} {predicate}" for adverb in INTENSIFIERS)
    return clauses


def aspect_clauses(aspect: str, polarity: int) -> list[str]:
    """Every grammatical clause saying something of ``polarity`` about ``aspect``."""
    spec = ASPECTS[aspect]
    predicates = spec.positive if polarity == POSITIVE else spec.negative
    return [clause for predicate in predicates for clause in predicate_clauses(aspect, predicate)]


def is_specific(predicate: str) -> bool:
    return predicate not in GENERIC_POSITIVE + GENERIC_NEGATIVE


def product_clauses(product: Product, templates: tuple[str, ...]) -> list[str]:
    this, is_ = ("these", "are") if product.plural else ("this", "is")
    return [t.format(this=this, p=product.name, **{"is": is_}) for t in templates]


@lru_cache(maxsize=1)
def clause_table() -> dict[tuple[str, ...], Clause]:
    table: dict[tuple[str, ...], Clause] = {}
    for aspect, spec in ASPECTS.items():
        for polarity, predicates in ((POSITIVE, spec.positive), (NEGATIVE, spec.negative)):
            for predicate in predicates:
                for text in predicate_clauses(aspect, predicate):
                    table[tuple(text.split())] = Clause(ASPECT, aspect, polarity, is_specific(predicate))
    for product in PRODUCTS.values():
        for templates, kind, polarity in (
            (OVERALL_POSITIVE, OVERALL, POSITIVE),
            (OVERALL_NEGATIVE, OVERALL, NEGATIVE),
            (NEUTRAL_CLAUSES, NEUTRAL_KIND, NEUTRAL),
        ):
            for text in product_clauses(product, templates):
                table[tuple(text.split())] = Clause(kind, product.name, polarity)
    table[tuple(STOCK_CLOSING.split())] = Clause(STOCK, "", NEUTRAL)
    return table


def split_sentences(tokens: list[str]) -> tuple[list[list[str]], list[str]]:
    """Sentences ended by a period, and the unterminated remainder (empty if the text ends cleanly)."""
    sentences, current = [], []
    for token in tokens:
        if token == END_OF_SENTENCE:
            sentences.append(current)
            current = []
        else:
            current.append(token)
    return sentences, current


def parse_sentence(tokens: list[str]) -> list[Clause] | None:
    """The clauses of a sentence (without its period), or None when it is not grammatical."""
    table = clause_table()
    clauses: list[Clause] = []
    part: list[str] = []
    for token in [*tokens, CONJUNCTION]:
        if token != CONJUNCTION:
            part.append(token)
            continue
        clause = table.get(tuple(part))
        if clause is None:
            return None
        clauses.append(clause)
        part = []
    return clauses if len(clauses) <= 2 else None
