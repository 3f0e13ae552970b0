"""Puts the configured data set on disk as a DVC version, refusing drift and never landing bad data.

Two steps, with validation between them:
1. ``stage``: if ``data.dvc`` records the same recipe (generator, seed, params or input files) and
   the data are on disk, they must be byte-for-byte the recorded version (hand edits are drift)
   and are validated in place. Otherwise the data set is written to a staging directory.
2. ``commit`` (only after validation passed): the staged data replace ``data/`` and are recorded
   by ``dvc add`` (and pushed). Rebuilt from the recorded recipe (a fresh clone), they must hash
   to what ``data.dvc`` records.
A candidate that fails validation is ``discard``-ed: ``data/`` and ``data.dvc`` stay as they were.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.config import Config
from components.data.dataset import recipe_hash, replace_directory, source_manifest, write_candidate
from components.tracking import dvc_store
from components.tracking.dvc_store import DataDrift, DataVersion

VERIFIED, REBUILT, NEW_VERSION = "verified", "rebuilt", "new version"
STAGING_DIR = ".staging"  # under the repository root, git-ignored


@dataclass(frozen=True)
class Candidate:
    directory: Path  # the files to validate: data/ itself when verified, else a staging copy
    recipe: str
    source: dict  # source_manifest(cfg)
    recorded: DataVersion | None
    in_place: bool

    def file_labels(self) -> dict[str, str]:
        """What to call each file in a validation report: the user's own path for imported files."""
        if self.source.get("source") != "files":
            return {}
        return {dataset: spec["path"] for dataset, spec in self.source["inputs"].items()}


@dataclass(frozen=True)
class VersionedData:
    version: DataVersion
    action: str  # verified | rebuilt | new version
    previous_md5: str | None  # the version data.dvc recorded before, if any

    def as_dict(self) -> dict:
        return {"md5": self.version.md5, "path": self.version.path, "action": self.action, "previous_md5": self.previous_md5, **self.version.meta}


def stage(cfg: Config, root: str | Path) -> Candidate:
    root = Path(root)
    source = source_manifest(cfg)
    recipe = recipe_hash(source)
    dvc_store.ensure_repo(root, cfg.versioning)
    recorded = dvc_store.recorded_version(root, cfg.data.dir)
    if recorded is not None and recorded.meta.get("recipe") == recipe and (root / cfg.data.dir).is_dir():
        dvc_store.check_drift(root, cfg.data.dir)
        return Candidate(root / cfg.data.dir, recipe, source, recorded, in_place=True)
    (root / STAGING_DIR).mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="data-", dir=root / STAGING_DIR)) / Path(cfg.data.dir).name
    try:
        write_candidate(cfg, directory)
    except BaseException:
        shutil.rmtree(directory.parent, ignore_errors=True)
        raise
    return Candidate(directory, recipe, source, recorded, in_place=False)


def discard(candidate: Candidate) -> None:
    if not candidate.in_place:
        shutil.rmtree(candidate.directory.parent, ignore_errors=True)


def commit(cfg: Config, root: str | Path, candidate: Candidate) -> VersionedData:
    """Record a validated candidate as the data version (call only after validation passed)."""
    root = Path(root)
    previous = candidate.recorded.md5 if candidate.recorded else None
    if candidate.in_place:
        return VersionedData(candidate.recorded, VERIFIED, previous)
    rebuilding = candidate.recorded is not None and candidate.recorded.meta.get("recipe") == candidate.recipe
    if rebuilding:
        rebuilt_md5 = dvc_store.directory_md5(candidate.directory)
        if rebuilt_md5 != candidate.recorded.md5:
            discard(candidate)
            raise DataDrift(
                f"rebuilding {cfg.data.dir}/ from the recipe {cfg.data.dir}.dvc records did not reproduce it: "
                f"md5 {rebuilt_md5} (rebuilt) != {candidate.recorded.md5} ({cfg.data.dir}.dvc); "
                "is generation deterministic on this machine?",
                candidate.recorded,
                None,
            )
    replace_directory(candidate.directory, root / cfg.data.dir)
    discard(candidate)
    meta = {"recipe": candidate.recipe, "source": candidate.source["source"]}
    if "seed" in candidate.source:
        meta.update(seed=candidate.source["seed"], generator=candidate.source["generator"])
    version = dvc_store.track(root, cfg.data.dir, meta)
    if cfg.versioning.push:
        dvc_store.push(root, cfg.versioning)
    return VersionedData(version, REBUILT if rebuilding else NEW_VERSION, previous)
