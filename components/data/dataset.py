"""The raw data directory: what it is built from (its recipe) and writing it atomically."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import io
from components.config import Config, UserFilesConfig
from components.data import files
from components.data.environment import Dataset, Environment


def source_manifest(cfg: Config, environment: Environment | None) -> dict:
    """What the data set is built from: the environment's generator and its params, or the user's files and their
    hashes."""
    if environment is not None:
        return environment.manifest()
    inputs = {}
    for dataset in files.DATASETS:
        path = Path(getattr(cfg.data.files, dataset))
        inputs[dataset] = {"path": str(path), "sha256": _content_hash(path) if path.exists() else None}
    return {"source": "files", "inputs": inputs}


def recipe_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def write_candidate(cfg: Config, directory: Path, environment: Environment | None) -> dict:
    """Write the configured data set into a new ``directory``: the environment's, or a copy of the user's files;
    returns the manifest written with it."""
    if environment is not None:
        return write_dataset(directory, environment.generate())
    return _copy_user_files(cfg.data.files, directory, source_manifest(cfg, None))


def _copy_user_files(spec: UserFilesConfig, directory: Path, manifest: dict) -> dict:
    """Copy JSONL files byte for byte (so reports quote the user's own line numbers); convert HF datasets.

    Nothing is parsed here: validation judges the copies, and a missing input stays missing.
    """
    directory.mkdir(parents=True)
    for dataset in files.DATASETS:
        source, target = Path(getattr(spec, dataset)), directory / files.file_name(dataset)
        if source.is_dir():  # a Hugging Face dataset saved with save_to_disk
            from datasets import load_from_disk

            io.write_jsonl(target, (dict(row) for row in load_from_disk(str(source))))
        elif source.is_file():
            shutil.copyfile(source, target)
    return _finish_manifest(directory, manifest)


def _content_hash(path: Path) -> str:
    if path.is_file():
        return io.sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode() + b"\0" + io.sha256_file(child).encode())
    return digest.hexdigest()


def _finish_manifest(directory: Path, manifest: dict) -> dict:
    manifest = dict(manifest, recipe=recipe_hash(manifest), files={})
    for dataset in files.DATASETS:
        path = directory / files.file_name(dataset)
        if path.is_file():
            manifest["files"][path.name] = {"sha256": io.sha256_file(path)}
    io.write_json(directory / files.MANIFEST, manifest)
    return manifest


def write_dataset(directory: str | Path, dataset: Dataset) -> dict:
    """Write all files to a sibling temp dir, then swap it in: readers never see a half-written set."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name, rows in dataset.rows.items():
            io.write_jsonl(staging / files.file_name(name), rows)
        manifest = _finish_manifest(staging, dataset.manifest)
        io.replace_directory(staging, directory)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_rows(directory: str | Path) -> dict[str, list[dict]]:
    """The validated data set, as plain rows (call only after validation passed)."""
    directory = Path(directory)
    return {
        name: [r.data for r in files.read_jsonl(directory / files.file_name(name), name)] for name in files.DATASETS
    }


@dataclass(frozen=True)
class DataSummary:
    """The data set as a run read it: rows per data set and, for the embedded task, ``Environment.describe``'s
    description (the demonstrations' gold, the labels' agreement with it)."""

    rows: dict[str, int]
    description: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"rows": self.rows, **self.description}

    def numbers(self) -> dict[str, float]:
        """The record's numbers (not the row counts), as metrics."""
        return {key: value for key, value in self.as_record().items() if isinstance(value, (int, float))}
