"""Word-level text handling shared by the task, the judge and the validators."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+|[.,!?]")
END_OF_SENTENCE = "."


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, in order."""
    return _WORD.findall(text.lower())


def join_words(tokens: list[str]) -> str:
    """Inverse of ``words`` for the embedded task: punctuation sticks to the word before it."""
    out = ""
    for token in tokens:
        if token in ".,!?" and out:
            out += token
        else:
            out += (" " if out else "") + token
    return out


def unknown_characters(text: str) -> str:
    """Characters that ``words`` would silently drop (anything but letters, space and . , ! ?)."""
    return "".join(sorted(set(re.sub(r"[a-z .,!?]", "", text.lower()))))
