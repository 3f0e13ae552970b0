"""The model-size ladder: PPO's peak memory per rank, seconds per iteration and tokens per second at several model
sizes, on each accelerate profile that fits.

    python benchmarks/model_ladder.py [--sizes 10m 124m] [--profiles cpu-1proc cpu-2proc] [--iterations 3]

Each size is a GPT-2 shape with random weights (the ladder measures cost, not learning): the policy, its frozen SFT
copy, the critic and the reward model, all of that size, PPO launched the way the pipeline launches it (`accelerate
launch` of the PPO worker). Sizes: 10m (6 x 384), 124m (GPT-2 small's 12 x 768 blocks; its 50k-token embedding is
the task's word vocabulary here, so the count is below 124M), 1b (24 x 2048, a GPU's). Reported per iteration after
the first (warm-up), on rank 0: seconds, rollout tokens/s (all ranks' response tokens / generation seconds), update
tokens/s (x ppo_epochs / update seconds), and every rank's peak memory (resident set on the CPU, allocated on a GPU).
A setting that does not finish (out of memory, over --timeout) is recorded as not fitting, with the reason.
Writes benchmarks/results/model_ladder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.data.files import DEMONSTRATIONS
from components.io import write_json
from components.models.builders import build_policy, scalar_model_from
from components.models.saving import save_model
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.training import recipe
from flows.execution import ppo_worker
from flows.execution.launcher import AccelerateProfile, LaunchError, accelerate_command, run_logged
from flows.execution.ppo_worker import PPOJob, read_result

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "model_ladder.json"
SIZES = {  # n_layer, n_embd, n_head
    "10m": (6, 384, 6),
    "124m": (12, 768, 12),
    "1b": (24, 2048, 16),
}
# a small rollout so that the CPU rungs finish in minutes; the same for every size, so the rungs compare
PPO_SETTINGS = ["ppo.rollout_batch_size=32", "ppo.minibatch_size=16", "ppo.ppo_epochs=1", "selection.candidates=1"]


def random_models(cfg, tokenizer, directory: Path) -> tuple[Path, Path, int]:
    """A random policy (also the SFT reference) and a reward model of the same shape; the policy's parameters."""
    policy = build_policy(cfg.model, tokenizer, cfg.seed)
    save_model(policy, tokenizer, directory / "sft", {})
    save_model(scalar_model_from(policy), tokenizer, directory / "reward_model", {})
    return directory / "sft", directory / "reward_model", sum(p.numel() for p in policy.parameters())


def measure(cfg, profile: Path, sft: Path, reward_model: Path, prompts, rows, job_dir: Path, timeout: float) -> dict:
    demonstrations = rows[DEMONSTRATIONS]
    PPOJob(cfg, sft, reward_model, prompts, demonstrations, vocabulary=VOCABULARY).write(job_dir)
    command, env = accelerate_command(AccelerateProfile.read(profile), ppo_worker.__name__, ["--job", str(job_dir)])
    started = time.perf_counter()
    try:
        run_logged(command, timeout, env=env, cwd=REPO, tail_lines=5)
    except LaunchError as error:
        return {"fits": False, "reason": str(error).splitlines()[0][:300]}
    outcome = read_result(job_dir)
    steady = outcome["history"][1:] or outcome["history"]  # the first iteration pays one-off warm-up
    mean = lambda key: statistics.fmean(h[key] for h in steady)  # noqa: E731
    generation, scoring, update, tokens = (
        mean(k) for k in ("generation_seconds", "scoring_seconds", "update_seconds", "response_tokens")
    )
    return {
        "fits": True,
        "processes": outcome["world_size"],
        "device": outcome["device"],
        "mixed_precision": outcome["mixed_precision"],
        "threads_per_process": outcome["threads_per_process"],
        "peak_memory_mib_per_rank": [round(b / 2**20) for b in outcome["rank_peak_memory_bytes"]],
        "seconds_per_iteration": generation + scoring + update,
        "rollout_tokens_per_second": tokens / generation,
        "update_tokens_per_second": tokens * cfg.ppo.ppo_epochs / update,
        "launch_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["10m", "124m"])
    parser.add_argument("--profiles", nargs="+", default=["cpu-1proc", "cpu-2proc"], help="names in infra/accelerate")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="a launch past this does not fit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    runs = []
    for size in args.sizes:
        n_layer, n_embd, n_head = SIZES[size]
        overrides = [f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}"]
        cfg = load_config("default", [*overrides, *PPO_SETTINGS, f"ppo.iterations={args.iterations}"])
        rows = generate_synthetic(cfg).rows
        tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
        prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
        with tempfile.TemporaryDirectory() as scratch:
            sft, reward_model, parameters = random_models(cfg, tokenizer, Path(scratch))
            for name in args.profiles:
                profile = REPO / "infra" / "accelerate" / f"{name}.yaml"
                job = Path(scratch) / f"job-{name}"
                run = measure(cfg, profile, sft, reward_model, prompts, rows, job, args.timeout)
                runs.append({"size": size, "parameters": parameters, "profile": name, **run})
                print(json.dumps(runs[-1]), flush=True)

    result = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ppo": PPO_SETTINGS,
        "iterations": args.iterations,
        "runs": runs,
    }
    print("size | parameters | profile | device | processes | peak MiB/rank | s/iter | rollout tok/s | update tok/s")
    for run in runs:
        if not run["fits"]:
            print(f"{run['size']} | {run['parameters'] / 1e6:.1f}M | {run['profile']} | does not fit: {run['reason']}")
            continue
        print(
            f"{run['size']} | {run['parameters'] / 1e6:.1f}M | {run['profile']} | {run['device']} | "
            f"{run['processes']} | "
            f"{', '.join(map(str, run['peak_memory_mib_per_rank']))} | {run['seconds_per_iteration']:.2f} | "
            f"{run['rollout_tokens_per_second']:.0f} | {run['update_tokens_per_second']:.0f}"
        )
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
