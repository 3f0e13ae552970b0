"""Puts the configured data set on disk as a DVC version, refusing drift.

- Same recipe (generator, seed, params or input files) as ``data.dvc`` records and the data on
  disk: verify it is byte-for-byte the recorded version (hand edits are drift).
- Same recipe, data missing (a fresh clone): rebuild it; it must hash to what ``data.dvc`` records.
- A new recipe: write the new data set and record it as a new version.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.config import Config
from components.data.dataset import build_dataset, recipe_hash, write_dataset
from components.tracking import dvc_store
from components.tracking.dvc_store import DataDrift, DataVersion

VERIFIED, REBUILT, NEW_VERSION = "verified", "rebuilt", "new version"


@dataclass(frozen=True)
class VersionedData:
    version: DataVersion
    action: str  # verified | rebuilt | new version
    previous_md5: str | None  # the version data.dvc recorded before, if any

    def as_dict(self) -> dict:
        return {"md5": self.version.md5, "path": self.version.path, "action": self.action, "previous_md5": self.previous_md5, **self.version.meta}


def materialize(cfg: Config, root: str | Path) -> VersionedData:
    root = Path(root)
    data_dir = root / cfg.data.dir
    dataset = build_dataset(cfg)
    recipe = recipe_hash(dataset.manifest)
    dvc_store.ensure_repo(root, cfg.versioning)
    recorded = dvc_store.recorded_version(root, cfg.data.dir)
    previous = recorded.md5 if recorded else None
    same_recipe = recorded is not None and recorded.meta.get("recipe") == recipe

    if same_recipe and data_dir.is_dir():
        return VersionedData(dvc_store.check_drift(root, cfg.data.dir), VERIFIED, previous)

    write_dataset(data_dir, dataset)
    if same_recipe:
        try:
            dvc_store.check_drift(root, cfg.data.dir)
        except DataDrift as drift:
            raise DataDrift(
                f"rebuilding {cfg.data.dir}/ from the recipe data.dvc records did not reproduce it "
                f"(is generation deterministic on this machine?)\n{drift}",
                drift.recorded,
                drift.workspace,
            ) from None
    meta = {"recipe": recipe, "source": dataset.manifest["source"]}
    if "seed" in dataset.manifest:
        meta.update(seed=dataset.manifest["seed"], generator=dataset.manifest["generator"])
    version = dvc_store.track(root, cfg.data.dir, meta)
    return VersionedData(version, REBUILT if same_recipe else NEW_VERSION, previous)
