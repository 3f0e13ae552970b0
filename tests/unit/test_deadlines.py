"""The in-process progress deadline (flows/execution/deadlines.py) and a python judge's call deadline, on work whose
progress
is known: beats that come in time never stop it; work that stops beating is stopped, naming itself."""

import threading
import time

import pytest

from components.evaluation.judges import JudgeError, python_judge
from flows.execution.deadlines import StageTimeout, progress_deadline

SECONDS = 0.5


def test_work_that_beats_in_time_is_never_stopped():
    with progress_deadline("sft", SECONDS, grace=5) as beat:
        for _ in range(10):  # 2 s in all, 4x the deadline, a beat every 0.2 s
            time.sleep(0.2)
            beat()


def test_work_that_stops_beating_is_stopped_naming_itself_and_the_setting():
    stopped_after = []
    message = r"^ppo: no progress for 0\.5 s \(timeouts\.progress_seconds\); stopped$"
    with pytest.raises(StageTimeout, match=message), progress_deadline("ppo", SECONDS, grace=5) as beat:
        beat()
        started = time.monotonic()
        try:
            while True:  # a Python loop that never beats again
                time.sleep(0.01)
        finally:
            stopped_after.append(time.monotonic() - started)
    assert stopped_after[0] >= SECONDS  # not before its deadline
    assert [t.name for t in threading.enumerate() if t.name.startswith("deadline ")] == []  # the watcher is gone


def test_a_python_judge_that_answers_in_time_is_unchanged_and_one_that_hangs_is_given_up():
    prompts, responses, ended = ["p"] * 2, ["great good", "bad"], [True, True]
    assert python_judge("tests.judges:words_of_praise", call_seconds=60)(prompts, responses, ended) == [2.0, 0.0]
    with pytest.raises(JudgeError, match=r"broken raised ConnectionError"):  # its own error, from its thread
        python_judge("tests.judges:broken", call_seconds=60)(prompts, responses, ended)
    with pytest.raises(JudgeError, match=r"tests\.judges:hangs did not return within 0\.5 s .* scoring 2 responses"):
        python_judge("tests.judges:hangs", call_seconds=SECONDS)(prompts, responses, ended)
