"""Data tasks: stage -> validate (Great Expectations) -> version (DVC) -> prepare -> describe."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import locks
from components.adapters import data_versioning, versioning
from components.adapters.data_stages import (
    DataValidationFailed,
    checked_vocabulary,
    data_summary,
    prepare_training_inputs,
    validate,
)
from components.adapters.data_versioning import write_rebuild_report
from components.config import Config, load_config
from components.data.dataset import DataSummary, load_rows
from flows.execution.handoff import task
from flows.execution.run_context import PreparedData, ValidationSummary
from flows.execution.run_tracking import Tracking
from flows.execution.task_choice import environment_for

VALIDATION_ARTIFACT = "data-validation"
DVC_STAGES = ("generate", "validate", "prepare")  # dvc.yaml's data stages, which this flow runs as tasks
DVC_PARAMS = ("seed", "data", "validation", "prepare")  # the params.yaml sections those stages read


@task(name="stage data", cache_policy=NO_CACHE)
def stage_data(cfg: Config, root: str) -> data_versioning.Candidate:
    candidate = data_versioning.stage(cfg, root, environment_for(cfg))
    where = "in place" if candidate.in_place else f"staged at {candidate.directory}"
    get_run_logger().info("data %s (recipe %s)", where, candidate.recipe[:12])
    return candidate


@task(name="validate data", cache_policy=NO_CACHE)
def validate_data(
    cfg: Config, root: str, candidate: data_versioning.Candidate, tracking: Tracking
) -> ValidationSummary:
    run = tracking.stage("data-validation")
    try:
        vocabulary = checked_vocabulary(cfg, environment_for(cfg))
        report = validate(cfg, root, vocabulary, candidate.directory, candidate.file_labels())
    except DataValidationFailed as failed:
        data_versioning.discard(candidate)
        create_markdown_artifact(
            key=VALIDATION_ARTIFACT, markdown=f"# Data validation FAILED\n\n```\n{failed.report.summary()}\n```"
        )
        run.log_text(failed.report.summary(), "validation/summary.txt")
        run.set_tags({"validation.success": "false"})
        run.finish("FAILED")
        raise
    create_markdown_artifact(
        key=VALIDATION_ARTIFACT, markdown=f"# Data validation passed\n\n```\n{report.summary()}\n```"
    )
    run.log_text(report.summary(), "validation/summary.txt")
    if report.data_docs_index:
        run.log_artifacts(Path(report.data_docs_index).parent, "validation/data_docs")
    run.log_metrics({f"rows.{name}": n for name, n in report.rows.items()})
    run.set_tags({"validation.success": "true", "validation.reused": str(report.reused).lower()})
    run.finish()
    return ValidationSummary(report.success, report.data_docs_index, report.rows, report.reused)


@task(name="version data", cache_policy=NO_CACHE)
def version_data(cfg: Config, root: str, candidate: data_versioning.Candidate) -> data_versioning.VersionedData:
    result = data_versioning.commit(cfg, root, candidate)
    logger = get_run_logger()
    logger.info("data %s: md5 %s (%s.dvc)", result.action, result.version.md5, result.version.path)
    if result.push_error:
        logger.warning("data: not pushed to the DVC remote; the next run pushes again. %s", result.push_error)
    return result


@task(name="prepare data", cache_policy=NO_CACHE)
def prepare_data(cfg: Config, root: str, data_version: data_versioning.VersionedData) -> dict[str, int]:
    return prepare_training_inputs(cfg, root, data_version.as_dict())


@task(name="lock data stages", cache_policy=NO_CACHE)
def lock_data_stages(cfg: Config, root: str, data_version: data_versioning.VersionedData) -> bool:
    """Record in dvc.lock that dvc.yaml's data stages ran, as this flow just ran them, so `dvc status` is clean.

    Only when the run read params.yaml's own values for those stages: dvc.lock names the params.yaml values a
    stage ran with, and a run with another profile or overrides did not run with them.
    """
    root_path = Path(root)
    if not (root_path / "dvc.yaml").is_file() or not (root_path / "params.yaml").is_file():
        return False
    declared = load_config("default", [], root_path / "params.yaml")
    if any(getattr(cfg, section) != getattr(declared, section) for section in DVC_PARAMS):
        get_run_logger().info("dvc.lock left as it is: this run's data settings are not params.yaml's defaults")
        return False
    md5 = data_version.version.md5
    write_rebuild_report(root_path, md5, md5)  # the staged rebuild matched it
    versioning.lock_stages(root_path, DVC_STAGES)
    return True


@task(name="describe data", cache_policy=NO_CACHE)
def describe_data(cfg: Config, root: str) -> DataSummary:
    return data_summary(cfg, root, environment_for(cfg))


def data_stages(cfg: Config, root: str, tracking: Tracking) -> PreparedData:
    """The validated, versioned data set: its rows, version, validation result and summary.

    One run at a time per project root stages, validates, versions and reads the data (runs at
    once would otherwise write the same data directory and data.dvc); the rows are then in memory.
    """

    def waiting() -> None:
        get_run_logger().info("data: another run on %s is versioning its data; waiting", root)

    with locks.exclusive(locks.project_lock(root, "data"), waiting):
        candidate = stage_data(cfg, root)
        validation = validate_data(cfg, root, candidate, tracking)
        version = version_data(cfg, root, candidate)
        tracking.parent.set_tags({"data.md5": version.version.md5, "data.action": version.action})
        prepared = prepare_data(cfg, root, version)
        lock_data_stages(cfg, root, version)
        summary = describe_data(cfg, root)
        rows = load_rows(Path(root) / cfg.data.dir)
    tracking.parent.log_metrics(summary.numbers(), prefix="data.")
    return PreparedData(rows, version.as_dict(), validation, prepared, summary)
