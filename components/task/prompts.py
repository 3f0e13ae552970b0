"""Prompts of the embedded task: a product, a requested sentiment and two aspects to cover; in the two-turn
variant also the user's follow-up, a third aspect to tell about after the review."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from components.task.lexicon import FOLLOW_UP_TEMPLATE, PRODUCTS, PROMPT_TEMPLATE, SENTIMENTS

_PROMPT_RE = re.compile(
    r"^write a (?P<sentiment>\w+) review of the (?P<product>\w+) "
    r"that mentions the (?P<first>\w+) and the (?P<second>\w+)\."
    r"(?: then tell me about the (?P<third>\w+)\.)?$"
)


@dataclass(frozen=True)
class Prompt:
    product: str
    sentiment: str  # "positive" | "negative"
    aspects: tuple[str, str]
    follow_up: str | None = None  # the aspect the second turn asks about; None: a one-turn prompt

    @property
    def polarity(self) -> int:
        return SENTIMENTS[self.sentiment]

    @property
    def text(self) -> str:
        first, second = self.aspects
        text = PROMPT_TEMPLATE.format(sentiment=self.sentiment, product=self.product, first=first, second=second)
        return f"{text} {FOLLOW_UP_TEMPLATE.format(third=self.follow_up)}" if self.follow_up else text

    @property
    def prompt_id(self) -> str:
        turn = f"-then-{self.follow_up}" if self.follow_up else ""
        return f"{self.product}-{self.sentiment}-{self.aspects[0]}-{self.aspects[1]}{turn}"

    @property
    def first_turn(self) -> Prompt:
        return Prompt(self.product, self.sentiment, self.aspects)


def parse_prompt(text: str) -> Prompt | None:
    """The Prompt a text asks for, or None when it is not a prompt of the embedded task."""
    match = _PROMPT_RE.match(text.strip().lower())
    if not match or match["product"] not in PRODUCTS or match["sentiment"] not in SENTIMENTS:
        return None
    aspects, third = (match["first"], match["second"]), match["third"]
    named = [*aspects, third] if third else aspects
    if len(set(named)) < len(named) or any(a not in PRODUCTS[match["product"]].aspects for a in named):
        return None
    return Prompt(match["product"], match["sentiment"], aspects, third)


def all_prompts(turns: int = 1) -> list[Prompt]:
    """Every prompt of the task in a fixed order (products x sentiments x aspect pairs). Two turns: each pair's
    follow-up asks about one of the product's other aspects, taken in turn, so both variants have as many prompts."""
    prompts = []
    for product in PRODUCTS.values():
        for sentiment in SENTIMENTS:
            for i, pair in enumerate(itertools.combinations(product.aspects, 2)):
                others = [a for a in product.aspects if a not in pair]
                prompts.append(Prompt(product.name, sentiment, pair, others[i % len(others)] if turns == 2 else None))
    return prompts
