"""The pipeline's MLflow session: one parent run per pipeline run, opened first and closed last."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger

from components.config import Config
from components.tracking.mlflow_store import StageRun, Tracker, flatten
from components.tracking.provenance import git_commit


@dataclass
class Tracking:
    tracker: Tracker
    parent: StageRun
    run_dir: Path  # this run's own directory (named by the parent run id): PPO job, run record


    def stage(self, name: str) -> StageRun:
        return self.tracker.start_run(name, tags={"stage": name}, parent=self.parent)


def open_tracking(cfg: Config, root: str) -> Tracking:
    tracker = Tracker(cfg.tracking, root)
    parent = tracker.start_run(f"pipeline-{cfg.profile}", tags={"profile": cfg.profile, "seed": cfg.seed, **git_commit(root)})
    parent.log_params(flatten(cfg.model_dump(mode="json")))
    run_dir = Path(root) / cfg.orchestration.runs_dir / parent.run_id
    parent.set_tags({"run_dir": str(run_dir)})
    return Tracking(tracker, parent, run_dir)


def close_tracking(tracking: Tracking, error: BaseException | None) -> None:
    """Finish the parent run. After a failure this must not replace the run's own error: when the
    tracking server cannot be told (it may be what failed), say so and let the first error stand."""
    if error is None:
        tracking.parent.finish("FINISHED")
        return
    try:
        tracking.parent.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        tracking.parent.finish("FAILED")
    except Exception as closing:  # noqa: BLE001 - reported, and the original error is re-raised by the caller
        get_run_logger().error("could not mark MLflow run %s FAILED at %s (%s: %s); it stays RUNNING there",
                               tracking.parent.run_id, tracking.tracker.uri, type(closing).__name__, str(closing)[:300])
