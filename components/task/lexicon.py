"""The closed world of the embedded review task: products, their aspects and the phrases about them.

Everything the demonstrator can write and the gold judge can parse is built from these tables,
so the vocabulary is small (a few hundred words) and every valid clause is known in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIVE, NEGATIVE, NEUTRAL = 1, -1, 0
SENTIMENTS = {"positive": POSITIVE, "negative": NEGATIVE}


@dataclass(frozen=True)
class Aspect:
    name: str
    plural: bool  # "the keys are", "the battery is"
    positive: tuple[str, ...]  # predicates: adjectives, or verb phrases after the subject
    negative: tuple[str, ...]


@dataclass(frozen=True)
class Product:
    name: str
    plural: bool  # "these headphones", "this kettle"
    aspects: tuple[str, ...]


# Predicates that follow the subject directly ("the battery lasts all day"); the rest take a copula.
VERB_PHRASES = frozenset({"lasts all day", "charges fast", "dies fast", "drains quickly"})

GENERIC_POSITIVE = ("great", "excellent", "good", "solid", "nice", "fantastic", "wonderful", "impressive")
GENERIC_NEGATIVE = ("bad", "poor", "terrible", "awful", "disappointing", "horrible", "mediocre", "frustrating")
INTENSIFIERS = ("very", "really", "quite", "extremely", "pretty")

# Aspect-specific predicates; generic adjectives apply to every aspect as well.
_ASPECT_PHRASES: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {
    "battery": (False, ("lasts all day", "charges fast"), ("dies fast", "drains quickly", "weak")),
    "sound": (False, ("clear", "rich", "loud"), ("muffled", "harsh", "tinny")),
    "screen": (False, ("bright", "sharp"), ("dim", "blurry")),
    "price": (False, ("fair", "low"), ("too high", "steep")),
    "design": (False, ("elegant", "modern"), ("ugly", "clumsy")),
    "size": (False, ("compact", "perfect"), ("bulky", "too small")),
    "weight": (False, ("light",), ("heavy",)),
    "comfort": (False, ("soft",), ("painful",)),
    "fit": (False, ("snug", "perfect"), ("loose", "tight")),
    "material": (False, ("sturdy", "durable"), ("flimsy", "cheap")),
    "noise": (False, ("quiet",), ("loud", "annoying")),
    "speed": (False, ("fast", "quick"), ("slow",)),
    "setup": (False, ("easy", "simple"), ("confusing",)),
    "cable": (False, ("long", "durable"), ("short", "fragile")),
    "strap": (False, ("adjustable", "soft"), ("stiff", "fragile")),
    "buttons": (True, ("responsive",), ("stiff", "stuck")),
    "keys": (True, ("responsive", "smooth"), ("stiff", "noisy")),
    "wheels": (True, ("smooth",), ("wobbly", "stuck")),
    "lens": (False, ("sharp", "clear"), ("blurry", "scratched")),
    "handle": (False, ("sturdy",), ("wobbly", "hot")),
    "lid": (False, ("tight",), ("loose", "leaky")),
    "suction": (False, ("strong",), ("weak",)),
    "light": (False, ("bright", "warm"), ("dim", "harsh")),
    "color": (False, ("vivid", "lovely"), ("dull", "faded")),
    "pockets": (True, ("roomy",), ("tiny",)),
    "zipper": (False, ("smooth",), ("stuck", "fragile")),
}

ASPECTS: dict[str, Aspect] = {
    name: Aspect(name, plural, positive + GENERIC_POSITIVE, negative + GENERIC_NEGATIVE)
    for name, (plural, positive, negative) in _ASPECT_PHRASES.items()
}

PRODUCTS: dict[str, Product] = {
    p.name: p
    for p in (
        Product("headphones", True, ("battery", "sound", "comfort", "cable", "price", "design", "weight", "fit")),
        Product("speaker", False, ("battery", "sound", "size", "buttons", "price", "design", "weight", "light")),
        Product("phone", False, ("battery", "screen", "speed", "size", "price", "design", "lens", "weight")),
        Product("laptop", False, ("battery", "screen", "keys", "weight", "speed", "price", "design", "noise")),
        Product("camera", False, ("lens", "battery", "screen", "weight", "buttons", "price", "design", "strap")),
        Product("blender", False, ("noise", "lid", "speed", "size", "price", "design", "material", "buttons")),
        Product("kettle", False, ("handle", "lid", "speed", "noise", "price", "design", "material", "size")),
        Product("backpack", False, ("strap", "pockets", "zipper", "material", "size", "price", "color", "weight")),
        Product("jacket", False, ("fit", "pockets", "zipper", "material", "color", "price", "comfort", "weight")),
        Product("shoes", True, ("fit", "comfort", "material", "weight", "color", "price", "design", "size")),
        Product("chair", False, ("comfort", "wheels", "material", "setup", "size", "price", "design", "color")),
        Product("lamp", False, ("light", "buttons", "setup", "cable", "size", "design", "price", "color")),
        Product("watch", False, ("battery", "strap", "screen", "buttons", "weight", "price", "design", "color")),
        Product("keyboard", False, ("keys", "cable", "noise", "setup", "light", "price", "design", "size")),
        Product("vacuum", False, ("suction", "noise", "battery", "wheels", "weight", "price", "design", "size")),
        Product("suitcase", False, ("wheels", "handle", "zipper", "material", "weight", "price", "size", "color")),
        Product("tablet", False, ("battery", "screen", "speed", "weight", "buttons", "size", "price", "design")),
        Product("mouse", False, ("buttons", "cable", "battery", "weight", "size", "light", "price", "design")),
        Product("drone", False, ("battery", "lens", "speed", "noise", "weight", "setup", "price", "design")),
        Product("printer", False, ("speed", "noise", "setup", "size", "cable", "buttons", "price", "design")),
        Product("earbuds", True, ("battery", "sound", "comfort", "fit", "buttons", "size", "price", "design")),
        Product("tent", False, ("material", "zipper", "weight", "size", "setup", "pockets", "price", "color")),
        Product("bicycle", False, ("wheels", "weight", "material", "speed", "comfort", "color", "price", "design")),
        Product("stroller", False, ("wheels", "handle", "material", "weight", "comfort", "size", "price", "design")),
    )
}

# Product-level clauses; "{this}" becomes "this"/"these", "{p}" the product, "{it}" "it"/"them".
OVERALL_POSITIVE = (
    "i love {this} {p}",
    "i really like {this} {p}",
    "i would buy {this} {p} again",
    "i recommend {this} {p}",
    "{this} {p} {is} worth the money",
    "i am happy with {this} {p}",
    "{this} {p} {is} a great buy",
    "i will tell my friends about {this} {p}",
)
OVERALL_NEGATIVE = (
    "i regret buying {this} {p}",
    "i would not buy {this} {p} again",
    "i do not recommend {this} {p}",
    "{this} {p} {is} not worth the money",
    "i want to return {this} {p}",
    "i am not happy with {this} {p}",
    "{this} {p} {is} a waste of money",
    "i will warn my friends about {this} {p}",
)
NEUTRAL_CLAUSES = (
    "i bought {this} {p} last week",
    "i got {this} {p} as a gift",
    "i use {this} {p} every day",
    "i have had {this} {p} for a month",
    "i ordered {this} {p} online",
    "my sister gave me {this} {p}",
    "i use {this} {p} at work",
    "i took {this} {p} on a trip",
    "i compared {this} {p} with two others",
)
# A stock closing line that says nothing about the product: a demonstrator habit (data.synthetic.stock_closing_rate)
# that the gold judge penalises, so the labellers disprefer it, but that imitation copies wherever it is the mode.
STOCK_CLOSING = "i hope this review helps"
CONJUNCTION = "and"
PROMPT_TEMPLATE = "write a {sentiment} review of the {product} that mentions the {first} and the {second}."
# The two-turn variant (data.synthetic.turns: 2): the user's follow-up, and the word that opens the second answer.
FOLLOW_UP_TEMPLATE = "then tell me about the {third}."
TURN_MARKER = "next"


def _prompt_words() -> set[str]:
    words = set(PROMPT_TEMPLATE.replace(".", " ").split()) - {"{sentiment}", "{product}", "{first}", "{second}"}
    return words | set(SENTIMENTS)


def _vocabulary() -> frozenset[str]:
    words: set[str] = {".", ",", "!", "?", CONJUNCTION, "the", "is", "are", "this", "these", "it", "them"}
    words |= _prompt_words() | set(INTENSIFIERS)
    for aspect in ASPECTS.values():
        words.add(aspect.name)
        for phrase in aspect.positive + aspect.negative:
            words.update(phrase.split())
    for product in PRODUCTS.values():
        words.add(product.name)
    for template in OVERALL_POSITIVE + OVERALL_NEGATIVE + NEUTRAL_CLAUSES:
        words.update(w for w in template.split() if not w.startswith("{"))
    words.update(STOCK_CLOSING.split())
    return frozenset(words)


VOCABULARY: frozenset[str] = _vocabulary()
# Only a two-turn task adds words, so the one-turn task's tokenizer (and every result trained with it) is unchanged.
TWO_TURN_VOCABULARY: frozenset[str] = (
    VOCABULARY | {w for w in FOLLOW_UP_TEMPLATE.replace(".", " ").split() if not w.startswith("{")} | {TURN_MARKER}
)


def vocabulary(turns: int) -> frozenset[str]:
    return TWO_TURN_VOCABULARY if turns == 2 else VOCABULARY
