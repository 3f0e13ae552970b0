"""Write the lock files infra/setup.sh installs from: every package at one version, with its file's sha256.

    .venv/bin/python infra/lock.py

pip resolves what ``pyproject.toml`` asks (the project, then with its ``dev`` extra) under
``infra/constraints-cpu.txt`` without installing anything (``--dry-run --report``), and each file it would fetch is
written with its hash. DeepSpeed gets a file of its own: it builds against the torch already installed, so it is
installed after the rest. The files are for the machine class they were made on (Linux x86_64, CPython 3.11, the
CPU torch); elsewhere infra/setup.sh resolves from pyproject.toml instead, and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = REPO / "infra" / "lock"
CONSTRAINTS = REPO / "infra" / "constraints-cpu.txt"
DEEPSPEED = REPO / "infra" / "requirements-deepspeed.txt"
PROJECT = "rlhf-pipeline"
HEADER = (
    "# written by infra/lock.py from pyproject.toml{extra} and infra/constraints-cpu.txt; do not edit\n"
    "# for Linux x86_64, CPython 3.11 (infra/setup.sh installs it there with --require-hashes)\n"
)


def resolve(requirements: list[str]) -> list[dict]:
    """What pip would install for ``requirements`` into an empty environment: one entry per package."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        options = ["--disable-pip-version-check", "--report", str(report), "-c", str(CONSTRAINTS)]
        subprocess.run([*pip, *options, *requirements], check=True, cwd=REPO)
        return json.loads(report.read_text())["install"]


def lines(packages: list[dict], leave_out: set[str]) -> list[str]:
    written = []
    for package in sorted(packages, key=lambda p: p["metadata"]["name"].lower()):
        name, version = package["metadata"]["name"], package["metadata"]["version"]
        if name.lower() in leave_out:
            continue
        hashes = package["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"{name} {version}: pip reports no sha256 for {package['download_info']['url']}")
        written.append(f"{name}=={version} \\\n    --hash=sha256:{hashes['sha256']}\n")
    return written


def main() -> int:
    LOCK_DIR.mkdir(exist_ok=True)
    # setuptools builds the project (and wheel DeepSpeed) in the environment itself: --no-build-isolation
    runtime = resolve(["-e", ".", "setuptools"])
    dev = resolve(["-e", ".[dev]", "setuptools", "wheel", "-r", str(DEEPSPEED)])
    (LOCK_DIR / "runtime.txt").write_text(HEADER.format(extra="") + "".join(lines(runtime, {PROJECT})))
    (LOCK_DIR / "dev.txt").write_text(HEADER.format(extra=" [dev]") + "".join(lines(dev, {PROJECT, "deepspeed"})))
    deepspeed = [p for p in dev if p["metadata"]["name"].lower() == "deepspeed"]
    (LOCK_DIR / "deepspeed.txt").write_text(
        HEADER.format(extra=" [dev], infra/requirements-deepspeed.txt") + "".join(lines(deepspeed, set()))
    )
    print(f"locked: runtime {len(runtime) - 1} packages, dev {len(dev) - 2} and deepspeed, in {LOCK_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
