"""What Prefect + MLflow + DVC + Great Expectations cost on top of the math.

    python benchmarks/orchestration_overhead.py [--profile smoke] [--out PATH]

Runs the same profile twice: (1) the components called directly (data generated in memory, the
recipe's stages, evaluation and the gate; nothing written, nothing tracked), and (2) the main job,
the Prefect flow in ephemeral mode with DVC versioning, Great Expectations, MLflow (a fresh local
store) and the registry, in a fresh project directory, as a subprocess, so its wall time includes
interpreter start and the temporary Prefect server. (2) runs twice with one Prefect home: the first
run on a machine pays for Prefect's database and block registration once; the second is what every
later run costs, and the ratio is its. Stage reuse is off in (2), so every run trains everything.
Prints the times and the ratio; writes benchmarks/results/orchestration_overhead.json.
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
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS
from components.evaluation.judges import gold_judge
from components.evaluation.report import evaluate_policies
from components.io import write_json
from components.offline import stay_offline
from components.task.environment import ReviewTask
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.lexicon import VOCABULARY
from components.training import recipe

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "orchestration_overhead.json"


def direct(profile: str) -> float:
    started = time.perf_counter()
    cfg = load_config(profile)
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
    sft, comparisons, reward = recipe.up_to_reward_model(
        cfg,
        tokenizer,
        rows[DEMONSTRATIONS],
        recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), rows[DEMONSTRATIONS]),
    )
    policies = {
        "sft": sft,
        **{n: recipe.baseline_stage(cfg, n, tokenizer, sft, comparisons).model for n in recipe.SUPERVISED_BASELINES},
    }
    policies["ppo"] = recipe.ppo_stage(cfg, tokenizer, sft, reward, prompts, rows[DEMONSTRATIONS]).model
    evaluate_policies(
        policies,
        tokenizer,
        [r["prompt"] for r in rows[EVAL_PROMPTS]],
        cfg.evaluation,
        cfg.model,
        cfg.seed,
        reward,
        gold_judge(gold_score),
        cfg.baselines.best_of_n,
    )
    return time.perf_counter() - started


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
    direct_s = direct(args.profile)
    first_s, orchestrated_s = orchestrated(args.profile)
    result = {
        "profile": args.profile,
        "direct_seconds": round(direct_s, 1),
        "first_run_seconds": round(first_s, 1),
        "orchestrated_seconds": round(orchestrated_s, 1),
        "overhead_seconds": round(orchestrated_s - direct_s, 1),
        "ratio": round(orchestrated_s / direct_s, 2),
        "cpu_count": os.cpu_count(),
    }
    print(f"{'run':<40} {'seconds':>8}")
    print(f"{'components called directly':<40} {direct_s:8.1f}")
    print(f"{'main job, first on the machine':<40} {first_s:8.1f}")
    print(f"{'main job (Prefect + MLflow + DVC + GE)':<40} {orchestrated_s:8.1f}")
    print(f"{'ratio':<40} {result['ratio']:8.2f}")
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
