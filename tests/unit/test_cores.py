"""Each run's torch threads: the usable cores divided among the runs holding a slot on the machine
(flows/execution/cores.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from components import locks
from flows.execution import cores


@pytest.fixture
def four_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(cores, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return tmp_path / "slots"


def test_the_cores_are_divided_among_the_runs_holding_slots(four_cores):
    slots = four_cores
    with cores.run_slot(slots) as mine:
        assert mine.name == "0.lock" and cores.fair_threads(slots) == 4  # alone: every core
        with locks.exclusive(slots / "1.lock"):  # another run (a lock held through another open file)
            assert cores.runs_holding_slots(slots) == 2 and cores.fair_threads(slots) == 2
            with locks.exclusive(slots / "2.lock"), locks.exclusive(slots / "3.lock"):
                assert cores.fair_threads(slots) == 1
                with locks.exclusive(slots / "4.lock"):
                    assert cores.fair_threads(slots) == 1  # five runs on four cores: never fewer than one
            assert cores.fair_threads(slots) == 2
    assert cores.runs_holding_slots(slots) == 0


def test_a_run_takes_the_first_free_slot(four_cores):
    slots = four_cores
    with locks.exclusive(slots / "0.lock"), cores.run_slot(slots) as mine:
        assert mine.name == "1.lock"
    with cores.run_slot(slots) as again:
        assert again.name == "0.lock"


def test_omp_num_threads_caps_the_share(four_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with cores.run_slot(four_cores):
        assert cores.fair_threads(four_cores) == 1


def test_the_slot_of_a_run_that_died_is_free(four_cores):
    slots = four_cores
    slots.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import fcntl, time; h = open({str(slots / '0.lock')!r}, 'a+b'); "
            "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cores.runs_holding_slots(slots) == 1 and cores.fair_threads(slots) == 4
        with cores.run_slot(slots):
            assert cores.fair_threads(slots) == 2
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while cores.runs_holding_slots(slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cores.runs_holding_slots(slots) == 0


def test_a_task_starts_with_the_runs_share(four_cores):
    before = torch.get_num_threads()
    try:
        with cores.run_slot(four_cores), locks.exclusive(four_cores / "1.lock"):
            assert cores.take_fair_threads(four_cores) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
