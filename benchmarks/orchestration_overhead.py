"""What Prefect + MLflow + DVC + Great Expectations cost on top of the math.

    python benchmarks/orchestration_overhead.py [--profile smoke] [--out PATH]

Runs the same profile twice: (1) the components called directly (data generated in memory, the
recipe's stages with the flow's snapshot selection, PPO's gold monitor and the RM's gold accuracy, and the
evaluation; nothing written, nothing tracked), and (2) the main job,
the Prefect flow in ephemeral mode with DVC versioning, Great Expectations, MLflow (a fresh local
store) and the registry, in a fresh project directory, as a subprocess, so its wall time includes
interpreter start and the temporary Prefect server. (2) runs twice with one Prefect home: the first
run on a machine pays for Prefect's database and block registration once; the second is what every
later run costs, and the ratio is its. Stage reuse is off in (2), so every run trains everything.
Prints the times, the ratio and orchestration's share of the main job; writes
benchmarks/results/orchestration_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.io import write_json
from components.offline import stay_offline

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "orchestration_overhead.json"

from benchmarks.recipe_stages import Stopwatch  # noqa: E402
from benchmarks.rlhf_vs_sl import evaluate_trained, train_everything  # noqa: E402
from flows.execution import runtimes  # noqa: E402


def direct(profile: str) -> tuple[float, dict[str, float]]:
    """Seconds of the math the flow runs, called directly: every stage with its snapshot selection, PPO's gold
    monitor, the reward model's gold accuracy and the evaluation (the same functions as benchmarks/rlhf_vs_sl.py,
    without its best-of-n diagnostic); and each stage's seconds."""
    started = time.perf_counter()
    cfg = load_config(profile)
    watch = Stopwatch()
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        watch("evaluation", evaluate_trained, cfg, train_everything(cfg, watch, runtime))
    return time.perf_counter() - started, watch.seconds


def orchestrated(profile: str) -> tuple[float, float]:
    """Seconds of the main job: the first on a machine (a fresh Prefect home: Prefect creates its database and
    registers its block types) and the next one, each in its own fresh project."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect-home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        seconds = []
        for run in ("first", "second"):
            root = Path(tmp) / run
            root.mkdir()
            subprocess.run(["git", "init", "-q"], cwd=root, check=True)
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "flows.pipeline",
                    "--profile",
                    profile,
                    "--root",
                    str(root),
                    "--set",
                    "orchestration.reuse_finished_stages=false",
                ],
                cwd=REPO,
                env=env,
                check=True,
                capture_output=True,
            )
            seconds.append(time.perf_counter() - started)
        return seconds[0], seconds[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    direct_s, stage_seconds = direct(args.profile)
    first_s, orchestrated_s = orchestrated(args.profile)
    result = {
        "profile": args.profile,
        "direct_seconds": round(direct_s, 1),
        "direct_stage_seconds": stage_seconds,
        "first_run_seconds": round(first_s, 1),
        "orchestrated_seconds": round(orchestrated_s, 1),
        "overhead_seconds": round(orchestrated_s - direct_s, 1),
        "ratio": round(orchestrated_s / direct_s, 2),
        "overhead_share": round((orchestrated_s - direct_s) / orchestrated_s, 3),
        "cpu_count": os.cpu_count(),
    }
    print(f"{'run':<40} {'seconds':>8}")
    print(f"{'components called directly':<40} {direct_s:8.1f}")
    print(f"{'main job, first on the machine':<40} {first_s:8.1f}")
    print(f"{'main job (Prefect + MLflow + DVC + GE)':<40} {orchestrated_s:8.1f}")
    print(f"{'ratio':<40} {result['ratio']:8.2f}")
    print(f"{'orchestration share of the main job':<40} {result['overhead_share']:8.1%}")
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
