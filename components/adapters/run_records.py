"""Each run's record (``run.json`` in its own run directory) and the lock that says the run is alive.

A run holds ``run.lock`` from the moment its record says "running" until the record says how the
run ended. The operating system drops a lock when its holder dies, so a "running" record under a
free lock belongs to a run that was killed (SIGKILL, the OOM killer, a lost machine) and will never
finish: later runs find it and close what it left open.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components import locks
from components.io import write_json

RECORD, LOCK = "run.json", "run.lock"
RUNNING, COMPLETED, FAILED, ABANDONED = "running", "completed", "failed", "abandoned"
SUSPENDED = (
    "suspended"  # a deployment's run that left its process while people label (flows/labelling/human_judging.py)
)


@contextmanager
def alive(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock while it runs; its record must say how it ended before this exits."""
    with locks.exclusive(Path(run_dir) / LOCK):
        yield


def write(run_dir: str | Path, record: dict[str, Any]) -> None:
    write_json(Path(run_dir) / RECORD, record)


def left_open(record: dict[str, Any]) -> bool:
    """A run that died while running, or one that ended but could not close its tracking run."""
    return record.get("status") == RUNNING or bool(record.get("mlflow_open"))


def _read(run_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((run_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # not a record this project wrote (its writes are atomic)
    return record if isinstance(record, dict) else None


def unfinished(runs_dir: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run directory, record) of every run that is not alive and left something open.

    Each is yielded while its lock is held here, and its record is read again after taking the
    lock, so a run that finishes meanwhile is never mistaken for a dead one.
    """
    for record_path in sorted(Path(runs_dir).glob(f"*/{RECORD}")):
        run_dir = record_path.parent
        if not left_open(_read(run_dir) or {}):
            continue  # ended and closed: never locked, never touched
        with locks.exclusive_if_free(run_dir / LOCK) as free:
            record = _read(run_dir) if free else None
            if record is not None and left_open(record):
                yield run_dir, record
