"""Prompts of the embedded task: a product, a requested sentiment and two aspects to cover."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from components.task.lexicon import PRODUCTS, PROMPT_TEMPLATE, SENTIMENTS

_PROMPT_RE = re.compile(
    r"^write a (?P<sentiment>\w+) review of the (?P<product>\w+) "
    r"that mentions the (?P<first>\w+) and the (?P<second>\w+)\.$"
)


@dataclass(frozen=True)
class Prompt:
    product: str
    sentiment: str  # "positive" | "negative"
    aspects: tuple[str, str]

    @property
    def polarity(self) -> int:
        return SENTIMENTS[self.sentiment]

    @property
    def text(self) -> str:
        first, second = self.aspects
        return PROMPT_TEMPLATE.format(sentiment=self.sentiment, product=self.product, first=first, second=second)

    @property
    def prompt_id(self) -> str:
        return f"{self.product}-{self.sentiment}-{self.aspects[0]}-{self.aspects[1]}"


def parse_prompt(text: str) -> Prompt | None:
    """The Prompt a text asks for, or None when it is not a prompt of the embedded task."""
    match = _PROMPT_RE.match(text.strip().lower())
    if not match or match["product"] not in PRODUCTS or match["sentiment"] not in SENTIMENTS:
        return None
    aspects = (match["first"], match["second"])
    if aspects[0] == aspects[1] or any(a not in PRODUCTS[match["product"]].aspects for a in aspects):
        return None
    return Prompt(match["product"], match["sentiment"], aspects)


def all_prompts() -> list[Prompt]:
    """Every prompt of the task in a fixed order (products x sentiments x aspect pairs)."""
    return [
        Prompt(product.name, sentiment, pair)
        for product in PRODUCTS.values()
        for sentiment in SENTIMENTS
        for pair in itertools.combinations(product.aspects, 2)
    ]
