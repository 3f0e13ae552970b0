"""Puts the configured data set on disk as a DVC version, refusing drift and never landing bad data.

Two steps, with validation between them:
1. ``stage``: the data set is built in a staging directory. If ``data.dvc`` records the same
   recipe (generator, seed, params or input files), the build must hash to the recorded version
   and the data on disk must too (hand edits are drift); then the data on disk are validated in
   place. Otherwise the staged copy is the candidate.
2. ``commit`` (only after validation passed): the staged data replace ``data/`` and are recorded
   by ``dvc add`` (and pushed).
A candidate that fails validation is ``discard``-ed: ``data/`` and ``data.dvc`` stay as they were.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components import io
from components.adapters import versioning
from components.adapters.versioning import DataDrift, DataVersion
from components.config import Config
from components.data.dataset import recipe_hash, source_manifest, write_candidate
from components.data.environment import Environment
from components.io import replace_directory

VERIFIED, REBUILT, NEW_VERSION = "verified", "rebuilt", "new version"
STAGING_DIR = ".staging"  # under the repository root, git-ignored
REBUILD_REPORT = Path("reports/data/rebuild.json")


def write_rebuild_report(root: Path, recorded: str | None, rebuilt: str) -> bool:
    """The ``generate`` stage's output: what data.dvc records, what the params rebuild to, and whether they match."""
    match = recorded is not None and recorded == rebuilt
    io.write_json(Path(root) / REBUILD_REPORT, {"recorded": recorded, "rebuilt": rebuilt, "match": match})
    return match


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
    push_error: str | None = None  # why the remote does not hold this version yet; the next run pushes again

    def as_dict(self) -> dict:
        return {
            "md5": self.version.md5,
            "path": self.version.path,
            "action": self.action,
            "previous_md5": self.previous_md5,
            "push_error": self.push_error,
            **self.version.meta,
        }


def stage(cfg: Config, root: str | Path, environment: Environment | None) -> Candidate:
    """Build the configured data set (the embedded task's, from ``environment``; or the user's files) in a staging
    directory and compare it with what data.dvc records."""
    root = Path(root)
    data_dir = root / cfg.data.dir
    source = source_manifest(cfg, environment)
    recipe = recipe_hash(source)
    versioning.ensure_repo(root, cfg.versioning)
    recorded = versioning.recorded_version(root, cfg.data.dir)
    same_recipe = recorded is not None and recorded.meta.get("recipe") == recipe
    if same_recipe and data_dir.is_dir():
        versioning.check_drift(root, cfg.data.dir)  # hand edits

    (root / STAGING_DIR).mkdir(exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="data-", dir=root / STAGING_DIR)) / Path(cfg.data.dir).name
    candidate = Candidate(directory, recipe, source, recorded, in_place=False)
    try:
        write_candidate(cfg, directory, environment)
        if same_recipe:
            rebuilt = versioning.directory_md5(directory)
            if rebuilt != recorded.md5:
                raise DataDrift(
                    f"data drift: rebuilding {cfg.data.dir}/ from the recipe {cfg.data.dir}.dvc records gives md5 "
                    f"{rebuilt}, but {cfg.data.dir}.dvc records {recorded.md5}. The generator's output changed "
                    "without a new GENERATOR_VERSION, or generation is not deterministic on this machine.",
                    recorded,
                    None,
                )
    except BaseException:
        discard(candidate)
        raise
    if same_recipe and data_dir.is_dir():
        discard(candidate)  # identical to what is on disk: validate that in place
        return Candidate(data_dir, recipe, source, recorded, in_place=True)
    return candidate


def discard(candidate: Candidate) -> None:
    if not candidate.in_place:
        shutil.rmtree(candidate.directory.parent, ignore_errors=True)


def commit(cfg: Config, root: str | Path, candidate: Candidate) -> VersionedData:
    """Record a validated candidate as the data version (call only after validation passed)."""
    root = Path(root)
    previous = candidate.recorded.md5 if candidate.recorded else None
    if candidate.in_place:
        return VersionedData(candidate.recorded, VERIFIED, previous, _push(root, cfg))
    rebuilding = candidate.recorded is not None and candidate.recorded.meta.get("recipe") == candidate.recipe
    replace_directory(candidate.directory, root / cfg.data.dir)
    discard(candidate)
    meta = {"recipe": candidate.recipe, "source": candidate.source["source"]}
    if "seed" in candidate.source:
        meta.update(seed=candidate.source["seed"], generator=candidate.source["generator"])
    version = versioning.track(root, cfg.data.dir, meta)
    return VersionedData(version, REBUILT if rebuilding else NEW_VERSION, previous, _push(root, cfg))


def _push(root: Path, cfg: Config) -> str | None:
    """Push the cache to the remote on every run, verified versions too, so a version whose push failed (remote
    down) goes up with the next run. A failed push does not stop this run: the version is recorded and in the local
    cache. Returns the push's error, or None."""
    if not cfg.versioning.push:
        return None
    try:
        versioning.push(root, cfg.versioning)
    except versioning.DvcError as error:
        return str(error)
    return None
