"""PPO throughput for 1 and N data-parallel processes: where an iteration's time goes and tokens per second.

    python benchmarks/ppo_throughput.py [--profile default] [--iterations 10] [--processes 1 2]
    python benchmarks/ppo_throughput.py --accelerate-config \\
        infra/accelerate/cpu-1proc.yaml infra/accelerate/single-gpu.yaml

Uses the SFT policy and reward model of the newest completed main-job run of the profile (its
``artifacts/runs/<id>/run.json`` names them; ``--runs`` to look elsewhere) when there is one, else
trains them with the profile first (not timed).
Each process count runs ``--iterations`` PPO iterations of the profile exactly as the pipeline
runs them: `accelerate launch` of the PPO worker (cpu-1proc / cpu-2proc profiles); or each profile
given with ``--accelerate-config`` runs them with its own process count (CPU against GPU on one
machine, from the same SFT and RM). Reported per iteration, after the first (warm-up): seconds, split into generation
(sampling the rollouts), scoring (policy, reference, critic and reward model forward passes, GAE,
whitening) and update (the PPO epochs, gradient all-reduce included), measured on rank 0; rollout
tokens/s = all ranks' response tokens / generation seconds; update tokens/s = all ranks' response
tokens x ppo_epochs / update seconds; launch seconds = the whole launch, start-up included; the
last iteration's RM score, KL and gold score show that each setting learned alike.
Writes benchmarks/results/ppo_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.data.files import DEMONSTRATIONS
from components.io import write_json
from components.models.saving import save_model
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe
from flows.execution import ppo_worker
from flows.execution.launcher import AccelerateProfile, accelerate_command, run_logged
from flows.execution.ppo_worker import PPOJob, read_result

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "ppo_throughput.json"


def main_job_models(runs: Path, profile: str) -> tuple[Path, Path] | None:
    """SFT and reward model of the newest completed main-job run of ``profile`` (its run.json)."""
    records = [json.loads(path.read_text()) for path in runs.glob("*/run.json")]
    finished = [r for r in records if r["status"] == "completed" and r["profile"] == profile]
    if not finished:
        return None
    stages = max(finished, key=lambda r: r["started"])["stages"]
    return Path(stages["sft"]["directory"]), Path(stages["reward_model"]["directory"])


def sft_and_reward_model(cfg, runs: Path, scratch: Path, tokenizer, rows) -> tuple[Path, Path, str]:
    found = main_job_models(runs, cfg.profile)
    if found and all((directory / "config.json").is_file() for directory in found):
        return *found, "loaded"
    sft, _, reward_model = recipe.up_to_reward_model(
        cfg,
        tokenizer,
        rows[DEMONSTRATIONS],
        recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), rows[DEMONSTRATIONS]),
    )
    save_model(sft, tokenizer, scratch / "sft", {})
    save_model(reward_model, tokenizer, scratch / "reward_model", {})
    return scratch / "sft", scratch / "reward_model", "trained"


def measure(cfg, profile: Path, processes: int, sft: Path, reward_model: Path, prompts, rows, job_dir: Path) -> dict:
    PPOJob(cfg, sft, reward_model, prompts, rows[DEMONSTRATIONS], vocabulary=VOCABULARY).write(job_dir)
    command, env = accelerate_command(
        AccelerateProfile.read(profile), ppo_worker.__name__, ["--job", str(job_dir)], processes
    )
    started = time.perf_counter()
    run_logged(command, cfg.timeouts.launch_seconds, env=env, cwd=REPO)
    launch_seconds = time.perf_counter() - started
    outcome = read_result(job_dir)
    history = outcome["history"]
    steady = history[1:] if len(history) > 1 else history  # the first iteration pays one-off warm-up
    mean = lambda key: statistics.fmean(h[key] for h in steady)  # noqa: E731
    generation, scoring, update = mean("generation_seconds"), mean("scoring_seconds"), mean("update_seconds")
    tokens = mean("response_tokens")
    last = history[-1]
    return {
        "processes": outcome["world_size"],
        "accelerate_config": str(profile.relative_to(REPO)) if profile.is_relative_to(REPO) else str(profile),
        "torch_threads_per_process": outcome["threads_per_process"],
        "device": outcome["device"],
        "mixed_precision": outcome["mixed_precision"],
        "iterations_measured": len(steady),
        "seconds_per_iteration": generation + scoring + update,
        "generation_seconds": generation,
        "scoring_seconds": scoring,
        "update_seconds": update,
        "response_tokens_per_iteration": tokens,
        "rollout_tokens_per_second": tokens / generation,
        "update_tokens_per_second": tokens * cfg.ppo.ppo_epochs / update,
        "launch_seconds": launch_seconds,
        **{f"last_{key}": last[key] for key in ("rm_score", "kl", "gold") if key in last},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--accelerate-config",
        type=Path,
        nargs="+",
        default=None,
        help="profiles to measure, each at its own process count (default: cpu-1proc / cpu-2proc per --processes)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=REPO / "artifacts" / "runs",
        help="run records of the main job, whose SFT and RM are reused",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    cfg = load_config(args.profile, [f"ppo.iterations={args.iterations}"])
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
    with tempfile.TemporaryDirectory() as scratch:
        sft, reward_model, origin = sft_and_reward_model(cfg, args.runs, Path(scratch), tokenizer, rows)
        if args.accelerate_config:
            settings = [(path, AccelerateProfile.read(path).num_processes) for path in args.accelerate_config]
        else:
            settings = [
                (REPO / "infra" / "accelerate" / ("cpu-1proc.yaml" if n == 1 else "cpu-2proc.yaml"), n)
                for n in args.processes
            ]
        runs = [
            measure(cfg, profile.resolve(), processes, sft, reward_model, prompts, rows, Path(scratch) / f"job-{i}")
            for i, (profile, processes) in enumerate(settings)
        ]

    result = {
        "profile": cfg.profile,
        "cpu_count": os.cpu_count(),
        "models": origin,
        "rollout_batch_size": cfg.ppo.rollout_batch_size,
        "ppo_epochs": cfg.ppo.ppo_epochs,
        "runs": runs,
    }
    print(
        f"PPO throughput, profile {cfg.profile}, {cfg.ppo.rollout_batch_size} rollouts per iteration, "
        f"mean of {runs[0]['iterations_measured']} iterations after warm-up"
    )
    columns = [
        ("accelerate_config", "{}"),
        ("device", "{}"),
        ("mixed_precision", "{}"),
        ("processes", "{:d}"),
        ("torch_threads_per_process", "{:d}"),
        ("seconds_per_iteration", "{:.2f}"),
        ("generation_seconds", "{:.2f}"),
        ("scoring_seconds", "{:.2f}"),
        ("update_seconds", "{:.2f}"),
        ("rollout_tokens_per_second", "{:.0f}"),
        ("update_tokens_per_second", "{:.0f}"),
        ("launch_seconds", "{:.1f}"),
        ("last_rm_score", "{:.3f}"),
        ("last_kl", "{:.2f}"),
        ("last_gold", "{:.3f}"),
    ]
    print(" | ".join(name.replace("_per_", "/").replace("_seconds", " s").replace("_", " ") for name, _ in columns))
    for run in runs:
        print(" | ".join(fmt.format(run[name]) if name in run else "-" for name, fmt in columns))
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
