"""Where a run came from: the git commit of the code (and whether the work tree was dirty)."""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(root: str | Path) -> dict[str, str]:
    """{"git.commit": sha or "unknown", "git.dirty": "true"/"false"/"unknown"} for the code in ``root``."""
    root = Path(root)
    sha = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "git.commit": sha or UNKNOWN,
        "git.dirty": UNKNOWN if status is None else str(bool(status)).lower(),
    }
