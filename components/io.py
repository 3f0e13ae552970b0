"""Small file helpers every package may use: atomic writes, canonical JSON and JSONL, file digests and
swapping a directory into place. Standard library only; the data-set schemas live in components/data/files.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def dumps(row: dict[str, Any]) -> str:
    """Canonical JSON line: same row, same bytes."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write to a temp file beside ``path`` and rename it into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(dumps(row) + "\n" for row in rows).encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """A file's or a directory's contents (a directory's: its entries) on disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def flush_tree(tree: Path) -> None:
    """Every file and directory under ``tree``, and ``tree`` itself, on disk: before a rename publishes it."""
    for path in sorted(tree.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(tree)


def replace_directory(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing what was there; the old contents are dropped only after the swap.
    ``source`` is on disk before it is published, and the swap after."""
    flush_tree(source)
    if not target.exists():
        os.replace(source, target)
        fsync_path(target.parent)
        return
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(target, retired)
    os.replace(source, target)
    fsync_path(target.parent)
    shutil.rmtree(retired, ignore_errors=True)
