"""Finished stage outputs, one directory per stage key, shared safely by runs on the same project root.

    <root>/<artifacts_dir>/<stage>/<key>/   one finished output (model + card): written once, by an atomic rename
    <root>/.locks/<key>.lock                held while a run computes that key (keys hash the stage name too)

A run that needs a key another live run is computing waits for it and then reuses it; runs with
different keys never touch each other's directories, so a model cannot change under a reader.
Old keys are pruned: each stage keeps its most recently used outputs (reuse counts as use).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from components import locks
from components.models.saving import CARD, read_card


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

    def touch(self, home: str, key: str) -> None:
        """Mark a finished output as just used (reuse keeps it among the most recent)."""
        (self.path(home, key) / CARD).touch()

    def prune(self, home: str, keep: int, in_use: set[str]) -> list[Path]:
        """Remove all but the ``keep`` most recently used finished outputs under ``home``. A key in
        ``in_use`` or claimed by a live run (its lock held) stays; returns what was removed."""
        base = self.root / home
        if not base.is_dir():
            return []
        outputs = sorted(
            (p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=last_used, reverse=True
        )
        removed = []
        for directory in outputs[keep:]:
            if directory.name in in_use:
                continue
            with locks.exclusive_if_free(locks.project_lock(self.root, directory.name)) as free:
                if free:
                    retired = directory.with_name(f".{directory.name}.pruned")
                    os.replace(
                        directory, retired
                    )  # out of sight at once; a crash mid-delete leaves only a hidden directory
                    shutil.rmtree(retired, ignore_errors=True)
                    removed.append(directory)
        return removed


def last_used(directory: Path) -> float:
    card = directory / CARD
    return card.stat().st_mtime if card.exists() else 0.0
