"""The raw data directory: building it (embedded generator or user files) and writing it atomically."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from components.config import Config, UserFilesConfig
from components.data import files
from components.data.synthetic import Dataset, generate_synthetic


def build_dataset(cfg: Config) -> Dataset:
    if cfg.data.source == "synthetic":
        return generate_synthetic(cfg)
    return import_user_files(cfg.data.files)


def import_user_files(spec: UserFilesConfig) -> Dataset:
    """Read the user's JSONL files or HF datasets saved to disk into the canonical schema."""
    rows, sources = {}, {}
    for dataset in files.DATASETS:
        path = Path(getattr(spec, dataset))
        rows[dataset] = _read_user_file(path, dataset)
        sources[dataset] = {"path": str(path), "sha256": _content_hash(path)}
    return Dataset(rows, {"source": "files", "inputs": sources})


def _read_user_file(path: Path, dataset: str) -> list[dict]:
    if path.is_dir():  # a Hugging Face dataset saved with save_to_disk
        from datasets import load_from_disk

        table = load_from_disk(str(path))
        records = [dict(row) for row in table]
        for line, row in enumerate(records, start=1):
            for field in files.REQUIRED_FIELDS[dataset]:
                if not isinstance(row.get(field), str):
                    raise files.DataFileError(path, line, f"field '{field}' is a string", f"got {type(row.get(field)).__name__}")
        return records
    return [record.data for record in files.read_jsonl(path, dataset)]


def _content_hash(path: Path) -> str:
    if path.is_file():
        return files.sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode() + b"\0" + files.sha256_file(child).encode())
    return digest.hexdigest()


def recipe_hash(manifest: dict) -> str:
    """Identifies what the data were built from (generator, seed, params or input files)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def write_dataset(directory: str | Path, dataset: Dataset) -> dict:
    """Write all files to a sibling temp dir, then swap it in: readers never see a half-written set.

    Returns the manifest as written (with each file's row count and sha256).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        manifest = dict(dataset.manifest, recipe=recipe_hash(dataset.manifest), files={})
        for name, rows in dataset.rows.items():
            path = staging / files.file_name(name)
            files.write_jsonl(path, rows)
            manifest["files"][files.file_name(name)] = {"rows": len(rows), "sha256": files.sha256_file(path)}
        files.write_json(staging / files.MANIFEST, manifest)
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / files.MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_rows(directory: str | Path) -> dict[str, list[dict]]:
    """The validated data set, as plain rows (call only after validation passed)."""
    directory = Path(directory)
    return {name: [r.data for r in files.read_jsonl(directory / files.file_name(name), name)] for name in files.DATASETS}
