"""Stage progress as people watch it: a line with the step, the total, the share done and the time left (in the
terminal and the task's log), and per stage a Prefect progress artefact, the bar the run's page shows.

The lines are written where the stage trains (rank 0 of a launch, or the flow's own process); the flow reads them
back, whichever process wrote them, to move the stage's bar.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

LINE = re.compile(r"^(?P<stage>.+?) (?:step|iteration) (?P<done>\d+)/(?P<total>\d+) ")


class Clock:
    """Time since a stage's first step, and what is left at its pace so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def describe(self, done: int, total: int) -> str:
        elapsed = time.monotonic() - self.started
        left = elapsed / max(done, 1) * (total - done)
        return f"{100 * done / total:.0f}%, {_seconds(elapsed)} in, ~{_seconds(left)} left"


def progress_line(stage: str, unit: str, done: int, total: int, clock: Clock, shown: str) -> str:
    """``sft step 40/200 (20%, 12 s in, ~48 s left): loss 3.210``"""
    return f"{stage} {unit} {done}/{total} ({clock.describe(done, total)}): {shown}"


def _seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressBars:
    """The Prefect progress artefact of each stage whose progress lines pass through ``read``: created at a stage's
    first line, updated when its whole percentage moves. Best effort: a Prefect API that fails stops the bars (said
    once in the log), never the training."""

    def __init__(self) -> None:
        self.bars: dict[str, tuple[object, int]] = {}  # stage: (artefact id, percentage shown)
        self.stopped = False

    def read(self, line: str) -> None:
        match = LINE.match(line)
        if match is None or self.stopped:
            return
        stage, done, total = match["stage"], int(match["done"]), int(match["total"])
        percent = min(100, round(100 * done / max(total, 1)))
        try:
            self._show(stage, percent)
        except Exception as error:  # the bar is a view: it never fails the stage it shows
            from prefect import get_run_logger

            self.stopped = True
            get_run_logger().warning("progress bars stopped: %s: %s", type(error).__name__, str(error)[:200])

    def _show(self, stage: str, percent: int) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if stage not in self.bars:
            key = "progress-" + re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")
            artifact = create_progress_artifact(percent, key=key, description=f"{stage}: share of its steps done")
            self.bars[stage] = (artifact, percent)
        elif self.bars[stage][1] != percent:
            update_progress_artifact(self.bars[stage][0], percent)
            self.bars[stage] = (self.bars[stage][0], percent)


def logged_with_bars(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` for each line, and every progress line moves its stage's bar."""
    bars = ProgressBars()

    def on_line(line: str) -> None:
        log(line)
        bars.read(line)

    return on_line
