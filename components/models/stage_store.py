"""Finished stage outputs, one directory per stage key, shared safely by runs on the same project root.

    <root>/<artifacts_dir>/<stage>/<key>/   one finished output (model + card): written once, by an atomic rename
    <root>/.locks/<key>.lock                held while a run computes that key (keys hash the stage name too)

A run that needs a key another live run is computing waits for it and then reuses it; runs with
different keys never touch each other's directories, so a model cannot change under a reader.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from components import locks
from components.models.saving import read_card


class StageStore:
    """``home``: a stage's directory relative to the root (``artifacts/models/sft``), one subdirectory per key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, home: str, key: str) -> Path:
        return self.root / home / key

    def finished(self, home: str, key: str) -> dict | None:
        """The card of the finished output for ``key``, or None."""
        card = read_card(self.path(home, key))
        return card if card and card.get("stage_key") == key else None

    @contextmanager
    def claim(self, home: str, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[Path]:
        """Hold the key while computing it; yields the directory its output belongs in."""
        with locks.exclusive(locks.project_lock(self.root, key), on_wait):
            yield self.path(home, key)
