"""Soak: the smoke flow N times back to back against real Prefect and MLflow servers on 127.0.0.1.

    python benchmarks/soak.py [--runs 5] [--profile smoke] [--reuse]

Each run is the main job (`python -m flows.pipeline`) as a fresh process, tracking to one MLflow
server and reporting to one Prefect server, retraining every stage (``--reuse`` lets runs 2..N reuse
the finished stages, as a nightly run on unchanged data does) (both started here on free ports, SQLite, stopped at
the end). Reports per run: exit code, wall seconds, peak RSS of the run's whole process tree
(sampled every 0.2 s); overall: failures (expected 0) and the memory trend across runs (least-
squares slope of peak RSS per run; growth = a leak that a nightly schedule would accumulate only
if state lived across runs, e.g. in the servers). Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "soak.json"

from components.io import write_json  # noqa: E402
from components.offline import stay_offline  # noqa: E402
from infra.servers import mlflow_server, prefect_env, prefect_server  # noqa: E402


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def one_run(profile: str, root: Path, env: dict[str, str], reuse: bool) -> dict:
    started = time.perf_counter()
    command = [sys.executable, "-m", "flows.pipeline", "--profile", profile, "--root", str(root)]
    if not reuse:
        command += ["--set", "orchestration.reuse_finished_stages=false"]
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, watched = 0, psutil.Process(child.pid)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(child.stdout), daemon=True)
    reader.start()
    while child.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.2)
    reader.join()
    return {
        "exit_code": child.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "tail": "".join(output[-5:]) if child.returncode else "",
    }


def slope(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--reuse", action="store_true", help="let later runs reuse finished stages")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "mlflow").mkdir()
        (scratch / "prefect").mkdir()
        root = scratch / "project"
        root.mkdir()
        for command in (["init", "-q"], ["config", "user.name", "soak"], ["config", "user.email", "soak@example.com"]):
            subprocess.run(["git", *command], cwd=root, check=True)
        with mlflow_server(scratch / "mlflow") as uri, prefect_server(scratch / "prefect") as api:
            env = {**os.environ, **prefect_env(scratch / "prefect", api), "MLFLOW_TRACKING_URI": uri}
            runs = []
            for index in range(args.runs):
                runs.append(one_run(args.profile, root, env, args.reuse))
                print(
                    f"run {index + 1}/{args.runs}: exit {runs[-1]['exit_code']}, {runs[-1]['seconds']} s, "
                    f"peak RSS {runs[-1]['peak_rss_mb']} MB",
                    flush=True,
                )
    peaks = [r["peak_rss_mb"] for r in runs]
    result = {
        "profile": args.profile,
        "reuse": args.reuse,
        "runs": runs,
        "failures": sum(r["exit_code"] != 0 for r in runs),
        "peak_rss_mb": {"min": min(peaks), "max": max(peaks)},
        "peak_rss_slope_mb_per_run": round(slope(peaks), 2),
    }
    print(
        f"failures {result['failures']}/{args.runs}; peak RSS {min(peaks)}-{max(peaks)} MB; "
        f"trend {result['peak_rss_slope_mb_per_run']:+.2f} MB per run"
    )
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
