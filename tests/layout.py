"""Where a pipeline run leaves things in a project root (see components/models/stage_store.py)."""

import json
from pathlib import Path

MODELS = "artifacts/models"
RUNS = "artifacts/runs"


def stage_dirs(root: Path, stage: str, home: str = MODELS) -> list[Path]:
    """The finished outputs of ``stage``, one directory per stage key."""
    base = Path(root) / home / stage
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []


def stage_dir(root: Path, stage: str, home: str = MODELS) -> Path:
    """The one finished output of ``stage`` (a test that ran the stage once)."""
    (only,) = stage_dirs(root, stage, home)
    return only


def run_records(root: Path) -> list[dict]:
    """Every run's run.json, oldest first."""
    records = [json.loads(p.read_text()) for p in (Path(root) / RUNS).glob("*/run.json")]
    return sorted(records, key=lambda r: r["started"])
