"""What generic code may ask of a preference task, like a gym environment: the data it generates, the words it is
written in, a labeller that ranks responses, and a gold judge for evaluation only.

The embedded task (``components.task``) is one; with ``data.source: files`` there is none, and nothing of the task is
imported. The one labeller type is ``components.data.ranking.Ranker``:
``(prompt, responses, ended) -> indices, best first``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a type only: the data stages do not load torch for it
    from components.data.ranking import Ranker


@dataclass
class Dataset:
    rows: dict[str, list[dict]]  # demonstrations, preferences, eval_prompts (components.data.files names)
    manifest: dict  # what the rows are made from (generator, params, seed, prompt split)


class Environment(Protocol):
    name: str  # the generator's version: bumped whenever its output changes for the same params
    vocabulary: frozenset[str]  # every word and punctuation mark its texts use

    def manifest(self) -> dict:
        """What ``generate`` would build from, cheap (no rows generated)."""
        ...

    def generate(self) -> Dataset:
        """The prompts, the demonstrations and the preference pairs; same config, same bytes."""
        ...

    def labeller(self, stream: str) -> Ranker:
        """A labeller ranking responses (``rank(prompt, responses, ended)``); each ``stream`` its own noise."""
        ...

    def gold(self, prompt: str, response: str, ended: bool = True) -> float:
        """The hidden judge's score: evaluation and reporting only, never a training signal."""
        ...

    def describe(self, rows: dict[str, list[dict]]) -> dict:
        """What a person wants to know about the generated data (reporting only)."""
        ...
