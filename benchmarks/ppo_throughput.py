"""PPO throughput: where an iteration's time goes (generation / scoring / update) and tokens per second.

    python benchmarks/ppo_throughput.py [--profile default] [--iterations 10] [--models artifacts/models]

Uses the SFT policy and reward model the main job saved under ``--models`` (``sft/`` and
``reward_model/``) when they are there, else trains them with the profile first (not timed).
Runs ``--iterations`` PPO iterations of the profile in this one process and reports, per
iteration: seconds, and the split into generation (sampling the rollouts), scoring (policy,
reference, critic and reward model forward passes, GAE) and update (the PPO epochs); rollout
tokens/s = response tokens / generation seconds, update tokens/s = response tokens x ppo_epochs /
update seconds. Writes benchmarks/results/ppo_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

from components.config import load_config
from components.data.files import DEMONSTRATIONS
from components.data.synthetic import generate_synthetic
from components.models.builders import load_causal_lm, load_scalar_model
from components.offline import stay_offline
from components.training import recipe

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "ppo_throughput.json"


def sft_and_reward_model(cfg, models: Path, tokenizer, rows, prompts):
    if (models / "sft" / "config.json").is_file() and (models / "reward_model" / "config.json").is_file():
        return load_causal_lm(models / "sft"), load_scalar_model(models / "reward_model"), "loaded"
    sft = recipe.sft_stage(cfg, tokenizer, rows[DEMONSTRATIONS]).model
    comparisons = recipe.comparisons_stage(cfg, tokenizer, sft, prompts, recipe.labeler_ranker(cfg)).model
    return sft, recipe.reward_stage(cfg, tokenizer, sft, comparisons, prompts).model, "trained"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--models", type=Path, default=REPO / "artifacts" / "models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    cfg = load_config(args.profile, [f"ppo.iterations={args.iterations}"])
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg)
    prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
    sft, reward_model, origin = sft_and_reward_model(cfg, args.models, tokenizer, rows, prompts)
    history = recipe.ppo_stage(cfg, tokenizer, sft, reward_model, prompts, rows[DEMONSTRATIONS]).history

    steady = history[1:] if len(history) > 1 else history  # the first iteration pays one-off warm-up
    mean = lambda key: statistics.fmean(h[key] for h in steady)  # noqa: E731
    generation, scoring, update = mean("generation_seconds"), mean("scoring_seconds"), mean("update_seconds")
    tokens = mean("response_tokens")
    result = {
        "profile": cfg.profile,
        "processes": 1,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "models": origin,
        "iterations_measured": len(steady),
        "rollout_batch_size": cfg.ppo.rollout_batch_size,
        "seconds_per_iteration": generation + scoring + update,
        "generation_seconds": generation,
        "scoring_seconds": scoring,
        "update_seconds": update,
        "response_tokens_per_iteration": tokens,
        "rollout_tokens_per_second": tokens / generation,
        "update_tokens_per_second": tokens * cfg.ppo.ppo_epochs / update,
    }
    print(f"PPO throughput, profile {cfg.profile}, 1 process, {result['torch_threads']} torch threads, {len(steady)} iterations after warm-up")
    print(f"{'seconds / iteration':<28} {result['seconds_per_iteration']:8.2f}")
    for phase in ("generation", "scoring", "update"):
        seconds = result[f"{phase}_seconds"]
        print(f"{'  ' + phase:<28} {seconds:8.2f}  ({seconds / result['seconds_per_iteration']:.0%})")
    print(f"{'rollout tokens / s':<28} {result['rollout_tokens_per_second']:8.0f}")
    print(f"{'update tokens / s':<28} {result['update_tokens_per_second']:8.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
