"""The pipeline's MLflow session: one parent run per pipeline run, opened first and closed last."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger

from components.adapters import run_records
from components.adapters.provenance import git_commit
from components.adapters.tracking import DataInput, StageRun, Tracker, flatten
from components.config import Config

# the stage runs that read the data version, by name (a labelling round's too), and in what role
TRAINING_STAGES = ("sft", "comparisons", "reward_model", "baseline_", "ppo")
EVALUATION_STAGES = ("evaluation",)
# version keys that say what this run did to the data, not what the data is
RUN_ACTIONS = ("action", "previous_md5", "push_error")


@dataclass
class Tracking:
    tracker: Tracker
    parent: StageRun
    run_dir: Path  # this run's own directory (named by the parent run id): PPO job, run record
    data: DataInput | None = None  # the data version, once versioned: the input of every stage that reads it

    def stage(self, name: str, round_index: int | None = None) -> StageRun:
        """A stage's run under the pipeline's; a labelling round's stages are named and tagged by their round.

        A stage that reads the data has its version as its ``mlflow.data`` input."""
        if round_index is None:
            run = self.tracker.start_run(name, tags={"stage": name}, parent=self.parent)
        else:
            tags = {"stage": name, "round": round_index}
            run = self.tracker.start_run(f"round {round_index} {name}", tags=tags, parent=self.parent)
        context = data_context(name)
        if self.data is not None and context is not None:
            run.log_data_input(self.data, context)
        return run

    def use_data(self, version: dict, root: str, remote: str | None) -> None:
        """The versioned data (``PreparedData.version``) this run trains on: the pipeline run's input now, each
        stage's that reads it when it opens. ``remote`` is the URL of the DVC remote the data are pushed to."""
        self.data = DataInput(
            name=version["path"],
            md5=version["md5"],
            dvc_file=str((Path(root) / f"{version['path']}.dvc").resolve()),
            remote=remote,
            profile={k: v for k, v in version.items() if k not in RUN_ACTIONS},
        )
        self.parent.log_data_input(self.data, "training")


def data_context(stage: str) -> str | None:
    """The role the data plays for a stage's run: "training", "evaluation", or None where it reads no data."""
    if stage.startswith(TRAINING_STAGES):
        return "training"
    if stage in EVALUATION_STAGES:
        return "evaluation"
    return None


def open_tracking(cfg: Config, root: str) -> Tracking:
    tracker = Tracker(cfg.tracking, root)
    parent = tracker.start_run(
        f"pipeline-{cfg.profile}", tags={"profile": cfg.profile, "seed": cfg.seed, **git_commit(root)}
    )
    parent.log_params(flatten(cfg.model_dump(mode="json")))
    run_dir = Path(root) / cfg.orchestration.runs_dir / parent.run_id
    parent.set_tags({"run_dir": str(run_dir)})
    return Tracking(tracker, parent, run_dir)


def close_tracking(tracking: Tracking, error: BaseException | None) -> bool:
    """Finish the parent run; returns whether MLflow was told. After a failure this must not replace
    the run's own error: when the tracking server cannot be told (it may be what failed), say so and
    let the first error stand (the next run on this root closes it, see ``close_abandoned_runs``)."""
    if error is None:
        tracking.parent.finish("FINISHED")
        return True
    try:
        tracking.parent.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        tracking.parent.finish("FAILED")
        return True
    except Exception as closing:
        get_run_logger().error(
            "could not mark MLflow run %s FAILED at %s (%s: %s); it stays RUNNING there until the next run",
            tracking.parent.run_id,
            tracking.tracker.uri,
            type(closing).__name__,
            str(closing)[:300],
        )
        return False


def suspend_tracking(tracking: Tracking) -> None:
    """The parent run of a flow run that left its process while people label: KILLED, tagged so; the resumed flow run
    records itself as a new parent run."""
    tracking.parent.set_tags({"suspended": "waiting for people's labels; the resumed run is a new MLflow run"})
    tracking.parent.finish("KILLED")


def close_abandoned_runs(tracking: Tracking) -> list[str]:
    """Close what earlier runs on this root left open: a run killed mid-way (its record says
    "running" and nobody holds its lock) becomes "abandoned", FAILED in MLflow with its stage runs,
    and Crashed in Prefect; a run that failed while MLflow was away gets its MLflow run closed.
    Best effort: nothing here fails this run. Returns the MLflow run ids of the runs it handled."""
    logger = get_run_logger()
    handled = []
    for run_dir, record in run_records.unfinished(tracking.run_dir.parent):
        run_id, uri = record["mlflow"]["run_id"], record["mlflow"]["uri"]
        died = record["status"] == run_records.RUNNING
        reason = (
            f"the run stopped without finishing (killed, or its machine lost); found by run {tracking.parent.run_id}"
            if died
            else record.get("error") or "failed"
        )
        mlflow_open = True
        if uri == tracking.tracker.uri:
            try:
                tracking.tracker.fail_if_running(run_id, reason)
                mlflow_open = False
            except Exception as error:
                logger.warning(
                    "could not close MLflow run %s at %s: %s: %s", run_id, uri, type(error).__name__, str(error)[:300]
                )
        if died and record.get("flow_run_id"):
            crash_flow_run(record["flow_run_id"], reason)
        run_records.write(
            run_dir,
            {
                **record,
                "mlflow_open": mlflow_open,
                **({"status": run_records.ABANDONED, "error": reason} if died else {}),
            },
        )
        logger.warning(
            "run %s (%s) %s; its MLflow run at %s %s",
            run_id,
            run_dir,
            "stopped without finishing: marked abandoned" if died else "failed and could not close its MLflow run",
            uri,
            "stays RUNNING (another tracking server)" if mlflow_open else "is now FAILED",
        )
        handled.append(run_id)
    return handled


def crash_flow_run(flow_run_id: str, message: str) -> None:
    """Set a dead run's Prefect flow run Crashed unless it already reached a final state."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is None or not state.is_final():
                client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as error:
        get_run_logger().warning(
            "could not mark Prefect flow run %s Crashed: %s: %s", flow_run_id, type(error).__name__, str(error)[:300]
        )
