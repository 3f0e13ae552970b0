"""Progress lines (step, total, share done, time in and left) and the stage bars read back from them."""

from __future__ import annotations

import pytest

from flows.execution import progress
from flows.execution.progress import LINE, Clock, ProgressBars, progress_line


class FrozenClock(Clock):
    def __init__(self, elapsed: float):
        super().__init__()
        self.started -= elapsed


def test_a_progress_line_says_the_step_the_total_the_share_and_the_time_left_at_the_pace_so_far():
    # 40 of 200 steps in 12 s: 0.3 s a step, 160 to go, 48 s left
    line = progress_line("sft", "step", 40, 200, FrozenClock(12.0), "loss 3.210")
    assert line == "sft step 40/200 (20%, 12 s in, ~48 s left): loss 3.210"
    # 3 of 80 iterations in 600 s: 200 s each, 77 to go: 15400 s, said in hours
    assert progress_line("ppo", "iteration", 3, 80, FrozenClock(600.0), "kl 0.1") == (
        "ppo iteration 3/80 (4%, 10 min in, ~4.3 h left): kl 0.1"
    )


def test_the_bars_move_only_when_the_whole_percentage_does(monkeypatch):
    shown = []
    monkeypatch.setattr(ProgressBars, "_show", lambda self, stage, percent: shown.append((stage, percent)))
    bars = ProgressBars()
    for line in [
        "round 2 baseline dpo step 1/3 (33%, 1 s in, ~2 s left): loss 0.693",
        "rank 0/2 pid 4075 device cpu:0 threads 1",
        "ppo iteration 6/6 (100%, 4 s in, ~0 s left): rm_score 0.125",
    ]:
        bars.read(line)
    assert shown == [("round 2 baseline dpo", 33), ("ppo", 100)]
    assert LINE.match("rank 0/2 pid 1") is None


def test_a_failing_prefect_api_stops_the_bars_not_the_stage(monkeypatch):
    def refuse(self, stage, percent):
        raise ConnectionError("server gone")

    warned = []
    monkeypatch.setattr(ProgressBars, "_show", refuse)
    monkeypatch.setattr("prefect.get_run_logger", lambda: type("L", (), {"warning": lambda *a: warned.append(a)})())
    bars = ProgressBars()
    bars.read("sft step 1/2 (50%, 1 s in, ~1 s left): loss 1.000")
    bars.read("sft step 2/2 (100%, 2 s in, ~0 s left): loss 0.500")
    assert bars.stopped and len(warned) == 1


@pytest.mark.parametrize(
    "seconds, said", [(0.4, "0 s"), (89, "89 s"), (90, "2 min"), (5399, "90 min"), (5400, "1.5 h")]
)
def test_durations_read_at_a_glance(seconds, said):
    assert progress._seconds(seconds) == said
