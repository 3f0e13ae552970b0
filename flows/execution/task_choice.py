"""The one place that picks the preference task: the embedded one for ``data.source: synthetic``, none for the
user's files. Imported lazily, so a run on the user's files never loads the embedded task."""

from __future__ import annotations

from components.config import Config
from components.data.environment import Environment


def environment_for(cfg: Config) -> Environment | None:
    if cfg.data.source != "synthetic":
        return None
    from components.task.review_task import ReviewTask

    return ReviewTask(cfg)
