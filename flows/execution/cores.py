"""Torch threads for each pipeline run from the cores it may use, shared with the other runs on the machine.

Two torch processes spinning two threads each on two cores ran 5x slower than one, so a run holds a slot (a lock
file under the machine's lock directory, dropped by the operating system if the run dies) for its lifetime, and
each task starts with ``usable cores // runs holding a slot`` threads, never more than ``OMP_NUM_THREADS`` when that
is set. A run that starts later takes its share from the next task of the runs already going.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from components import locks

RUN_SLOTS = locks.MACHINE_LOCKS / "run-slots"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0))


@contextmanager
def run_slot(slots: Path = RUN_SLOTS) -> Iterator[Path]:
    """Hold the first free slot until the block ends."""
    for index in itertools.count():
        with locks.exclusive_if_free(slots / f"{index}.lock") as free:
            if free:
                yield slots / f"{index}.lock"
                return


def runs_holding_slots(slots: Path = RUN_SLOTS) -> int:
    held = 0
    for path in slots.glob("*.lock"):
        with locks.exclusive_if_free(path) as free:
            held += not free
    return held


def fair_threads(slots: Path = RUN_SLOTS) -> int:
    share = max(1, usable_cores() // max(1, runs_holding_slots(slots)))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def take_fair_threads(slots: Path = RUN_SLOTS) -> int:
    threads = fair_threads(slots)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
