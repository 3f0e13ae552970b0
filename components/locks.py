"""Exclusive file locks for runs that share a machine: the operating system drops a lock when its holder dies."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MACHINE_LOCKS = Path(tempfile.gettempdir()) / "rlhf-pipeline-locks"
PROJECT_LOCKS = ".locks"


@contextmanager
def exclusive(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``path`` exclusively; ``on_wait`` is called once if another process holds it first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def exclusive_if_free(path: str | Path) -> Iterator[bool]:
    """Hold ``path`` if nobody does; yields whether it is held (never waits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def machine_lock_path(*names: str) -> Path:
    """A lock every process on this machine finds from the same names (a tracking URI and a model name)."""
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]
    return MACHINE_LOCKS / f"{digest}.lock"


def project_lock(root: str | Path, name: str) -> Path:
    """A lock of one project root (its data, one stage key), held by runs that share the root."""
    return Path(root) / PROJECT_LOCKS / f"{name}.lock"
