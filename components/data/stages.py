"""The data stages as plain functions of (config, repository root): what the flow and dvc.yaml run."""

from __future__ import annotations

from pathlib import Path

from components.config import Config
from components.data import files
from components.data.dataset import load_rows
from components.data.lexicon import VOCABULARY
from components.data.prepare import prepare, write_prepared
from components.data.synthetic import describe
from components.tracking.great_expectations import ValidationReport, validate_data_dir


class DataValidationFailed(RuntimeError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


def validate(
    cfg: Config, root: str | Path, directory: str | Path | None = None, file_labels: dict[str, str] | None = None
) -> ValidationReport:
    """Run the expectation suites on ``directory`` (default: the raw data directory).

    Raises DataValidationFailed, carrying the report, on any failure.
    """
    root = Path(root)
    vocabulary = VOCABULARY if cfg.validation.check_vocabulary else None
    directory = Path(directory) if directory is not None else root / cfg.data.dir
    # name files where they live (or will live) in the repository, or by the user's own paths
    file_labels = file_labels or {name: f"{cfg.data.dir}/{files.file_name(name)}" for name in files.DATASETS}
    report = validate_data_dir(directory, cfg.validation, vocabulary, root / cfg.validation.report_dir, file_labels)
    if not report.success:
        raise DataValidationFailed(report)
    return report


RUN_FIELDS = ("path", "action", "previous_md5")  # what a run did to the data version, not what the data are


def prepare_training_inputs(cfg: Config, root: str | Path, data_version: dict) -> dict[str, int]:
    """The training inputs, tied to the data version they came from (the same files whichever run prepared them)."""
    root = Path(root)
    prepared = prepare(load_rows(root / cfg.data.dir), cfg.prepare, cfg.seed)
    identity = {key: value for key, value in data_version.items() if key not in RUN_FIELDS}
    write_prepared(root / cfg.prepare.dir, prepared, identity)
    return {name: len(rows) for name, rows in prepared.items()}


def data_summary(cfg: Config, root: str | Path) -> dict:
    """Row counts and, for the embedded task, how often the simulated labels agree with the gold judge."""
    rows = load_rows(Path(root) / cfg.data.dir)
    summary: dict = {"rows": {name: len(r) for name, r in rows.items()}}
    if cfg.data.source == "synthetic":
        summary.update(
            describe(rows[files.DEMONSTRATIONS], rows[files.PREFERENCES], cfg.data.synthetic.labeler_temperature)
        )
    return summary
