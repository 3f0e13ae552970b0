"""The data stages as plain functions of (config, repository root): what the flow and dvc.yaml run; and landing
the comparisons collected from the SFT policy only once Great Expectations passed them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from components.adapters.validation import ValidationReport, validate_data_dir
from components.config import Config, ValidationConfig
from components.data import files
from components.data.dataset import DataSummary, load_rows
from components.data.environment import Environment
from components.data.prepare import prepare, write_prepared
from components.io import replace_directory, write_jsonl


class DataValidationFailed(RuntimeError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


def validate(
    cfg: Config,
    root: str | Path,
    vocabulary: frozenset[str] | None,
    directory: str | Path | None = None,
    file_labels: dict[str, str] | None = None,
) -> ValidationReport:
    """Run the expectation suites on ``directory`` (default: the raw data directory); ``vocabulary``: the words every
    text must use (``checked_vocabulary``), or None.

    Raises DataValidationFailed, carrying the report, on any failure.
    """
    root = Path(root)
    directory = Path(directory) if directory is not None else root / cfg.data.dir
    # name files where they live (or will live) in the repository, or by the user's own paths
    file_labels = file_labels or {name: f"{cfg.data.dir}/{files.file_name(name)}" for name in files.DATASETS}
    report = validate_data_dir(directory, cfg.validation, vocabulary, root / cfg.validation.report_dir, file_labels)
    if not report.success:
        raise DataValidationFailed(report)
    return report


# what a run did to the data version, not what the data are
RUN_FIELDS = ("path", "action", "previous_md5", "push_error")


def prepare_training_inputs(cfg: Config, root: str | Path, data_version: dict) -> dict[str, int]:
    """The training inputs, tied to the data version they came from (the same files whichever run prepared them)."""
    root = Path(root)
    prepared = prepare(load_rows(root / cfg.data.dir), cfg.prepare, cfg.seed)
    identity = {key: value for key, value in data_version.items() if key not in RUN_FIELDS}
    write_prepared(root / cfg.prepare.dir, prepared, identity)
    return {name: len(rows) for name, rows in prepared.items()}


def data_summary(cfg: Config, root: str | Path, environment: Environment | None) -> DataSummary:
    """Row counts and, for the embedded task, how often the simulated labels agree with the gold judge."""
    rows = load_rows(Path(root) / cfg.data.dir)
    description = environment.describe(rows) if environment is not None else {}
    return DataSummary({name: len(r) for name, r in rows.items()}, description)


def checked_vocabulary(cfg: Config, environment: Environment | None) -> frozenset[str] | None:
    """The words every text must use: the embedded task's, when ``validation.check_vocabulary``; none for user files."""
    return environment.vocabulary if environment is not None and cfg.validation.check_vocabulary else None


def save_comparisons(
    rows: list[dict],
    directory: str | Path,
    validation: ValidationConfig,
    vocabulary: frozenset[str] | None,
    report_dir: str | Path | None = None,
    eval_prompts: frozenset[str] | None = None,
):
    """Write ``directory/preferences.jsonl`` (``directory`` is ``comparisons.dir``) only if it passes
    the preferences suite of Great Expectations; returns the ValidationReport.

    The file is written into a staging directory beside ``directory`` and validated there; on
    success it is swapped in, on failure the staging copy is removed and DataValidationFailed
    (carrying the report) is raised, so a bad collection never lands. ``eval_prompts`` are checked
    not to appear among the comparison prompts. ``report_dir`` defaults to
    ``<validation.report_dir>/comparisons``: apart from the raw data's report, whose summary.json
    is a DVC metric.
    """
    directory = Path(directory)
    report_dir = Path(report_dir) if report_dir is not None else Path(validation.report_dir) / "comparisons"
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write_jsonl(staging / files.file_name(files.PREFERENCES), rows)
        report = validate_data_dir(
            staging,
            validation,
            vocabulary,
            report_dir,
            file_labels={files.PREFERENCES: str(directory / files.file_name(files.PREFERENCES))},
            datasets=(files.PREFERENCES,),
            eval_prompts=eval_prompts,
        )
        if not report.success:
            raise DataValidationFailed(report)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report
