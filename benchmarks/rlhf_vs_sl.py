"""Does RLHF beat supervised learning? The whole default recipe on CPU, measured against the gold judge.

    python benchmarks/rlhf_vs_sl.py [--profile default] [--seed N] [--set key=value ...]

Trains SFT, collects comparisons from SFT samples, trains the reward model, the supervised
baselines (SFT on chosen, combined likelihood/unlikelihood loss, DPO) and PPO, adds best-of-n
as a non-training reference, then decodes every policy on the held-out prompts under each
configured decoding mode. Prints a table and writes benchmarks/results/rlhf_vs_sl.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES
from components.data.gold_judge import gold_score
from components.data.synthetic import generate_synthetic
from components.evaluation.report import evaluate_policies, format_table, gold_monitor, reward_model_gold_accuracy
from components.offline import stay_offline
from components.training import recipe

RESULTS = Path(__file__).resolve().parent / "results" / "rlhf_vs_sl.json"


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[stage] = round(time.perf_counter() - started, 1)
        print(f"[{stage}] {self.seconds[stage]:.1f} s", flush=True)
        return result


def train_everything(cfg, watch: Stopwatch):
    """The same stage functions the pipeline's flow calls, timed one by one."""
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg)
    train_prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})

    sft = watch("sft", recipe.sft_stage, cfg, tokenizer, rows[DEMONSTRATIONS]).model
    if cfg.comparisons.source == "sft_samples":
        comparisons = watch("comparisons", recipe.comparisons_stage, cfg, tokenizer, sft, train_prompts, recipe.labeler_ranker(cfg)).model
    else:
        comparisons = rows[PREFERENCES]
    reward = watch("reward", recipe.reward_stage, cfg, tokenizer, sft, comparisons, train_prompts)
    _, valid = recipe.labelled_split(cfg, comparisons)
    reward.metrics["accuracy_gold"] = reward_model_gold_accuracy(reward.model, tokenizer, valid, cfg.model, gold_score)

    policies = {"sft": sft}
    for name in recipe.SUPERVISED_BASELINES:
        policies[name] = watch(name, recipe.baseline_stage, cfg, name, tokenizer, sft, comparisons).model
    ppo = watch("ppo", recipe.ppo_stage, cfg, tokenizer, sft, reward.model, train_prompts, rows[DEMONSTRATIONS], monitor=gold_monitor(gold_score))
    policies["ppo"] = ppo.model
    return rows, tokenizer, policies, reward.model, reward.metrics, ppo.history


def evaluate_everything(cfg, rows, tokenizer, policies, rm) -> dict:
    eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
    return evaluate_policies(policies, tokenizer, eval_prompts, cfg.evaluation, cfg.model, cfg.seed, rm, gold_score, cfg.baselines.best_of_n)


def print_table(result: dict) -> None:
    print(format_table(result["evaluation"]))
    print(f"\nRM held-out accuracy: {result['rm_accuracy']:.3f} vs labels, {result['rm_accuracy_gold']:.3f} vs gold")
    print("stage seconds:", result["stage_seconds"], f"(training total {sum(v for k, v in result['stage_seconds'].items() if k != 'evaluation'):.0f} s)")
    print(f"peak RSS: {result['peak_rss_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    overrides = args.overrides + ([f"seed={args.seed}"] if args.seed is not None else [])
    cfg = load_config(args.profile, overrides)
    watch = Stopwatch()
    rows, tokenizer, policies, rm, rm_metrics, ppo_history = train_everything(cfg, watch)
    evaluation = watch("evaluation", evaluate_everything, cfg, rows, tokenizer, policies, rm)

    result = {
        "profile": cfg.profile,
        "seed": cfg.seed,
        "overrides": overrides,
        "evaluation": evaluation,
        "rm_accuracy": rm_metrics.get("valid_accuracy"),
        "rm_accuracy_gold": rm_metrics["accuracy_gold"],
        "rm_offset": rm_metrics.get("reward_offset"),
        "stage_seconds": watch.seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ppo_history": ppo_history,
    }
    # the headline fields, under the first configured decoding mode (sampling by default)
    headline = evaluation[cfg.evaluation.modes[0]]
    result["policies"] = {
        name: {"gold_mean": s["gold"]["value"], "gold_ci": s["gold"]["ci"], "kl": s.get("kl")} for name, s in headline["policies"].items()
    }
    result["ppo_win_rate"] = {name: {"rate": w["value"], "ci": w["ci"]} for name, w in headline["ppo_win_rate"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
