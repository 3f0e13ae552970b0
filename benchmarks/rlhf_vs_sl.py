"""Does RLHF beat supervised learning? The whole default recipe on CPU, measured against the gold judge.

    python benchmarks/rlhf_vs_sl.py [--profile default] [--seed N] [--set key=value ...]

Trains SFT, collects comparisons from SFT samples, trains the reward model, the supervised
baselines (SFT on chosen, combined likelihood/unlikelihood loss, DPO) and PPO, adds best-of-n
as a non-training reference, then decodes every policy on the held-out prompts under each
configured decoding mode. Prints a table and writes benchmarks/results/rlhf_vs_sl.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES
from components.data.gold_judge import gold_score
from components.data.labeler import SimulatedLabeler
from components.data.lexicon import VOCABULARY
from components.data.synthetic import generate_synthetic
from components.evaluation.intervals import win_rate
from components.evaluation.policy_eval import DecodingMode, Responses, sample_responses, summarise
from components.models.builders import build_policy
from components.models.tokenizer import build_word_tokenizer
from components.offline import stay_offline
from components.training.best_of_n import best_of_n
from components.training.chosen import train_chosen
from components.training.combined import train_combined
from components.training.comparisons import collect_sft_comparisons, draw_prompts, sample_reference, simulated_ranker
from components.models.builders import frozen_copy
from components.training.dpo import train_dpo
from components.training.ppo import train_ppo
from components.training.reward import gold_accuracy, score_comparisons, split_comparisons, train_reward_model
from components.training.sft import train_sft

RESULTS = Path(__file__).resolve().parent / "results" / "rlhf_vs_sl.json"
BASELINES = ("sft", "chosen", "combined", "dpo")


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[stage] = round(time.perf_counter() - started, 1)
        print(f"[{stage}] {self.seconds[stage]:.1f} s", flush=True)
        return result


def gold_monitor(prompts, texts, ended):
    return {"gold": statistics.fmean(gold_score(p, t, e) for p, t, e in zip(prompts, texts, ended))}


def train_everything(cfg, watch: Stopwatch):
    rows = generate_synthetic(cfg).rows
    tokenizer = build_word_tokenizer(VOCABULARY)
    train_prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})

    sft = build_policy(cfg.model, tokenizer, cfg.seed)
    sft, _, _ = watch("sft", train_sft, sft, tokenizer, rows[DEMONSTRATIONS], cfg.sft, cfg.model, cfg.seed)

    if cfg.comparisons.source == "sft_samples":
        labeler = SimulatedLabeler(cfg.data.synthetic.labeler_temperature, random.Random(f"{cfg.seed}/labeler"))
        prompts = draw_prompts(train_prompts, cfg.comparisons.n_prompts, cfg.seed)
        comparisons = watch(
            "comparisons", collect_sft_comparisons, sft, tokenizer, prompts, cfg.comparisons, cfg.model,
            simulated_ranker(labeler), cfg.seed, min_words=cfg.validation.min_response_words,
        )
    else:
        comparisons = rows[PREFERENCES]
    reference_prompts = draw_prompts(train_prompts, cfg.reward.reference_samples, cfg.seed + 1)
    reference_samples = sample_reference(sft, tokenizer, reference_prompts, cfg.model, cfg.comparisons.temperature, cfg.comparisons.batch_size, cfg.seed)
    rm, rm_metrics, _ = watch("reward", train_reward_model, sft, tokenizer, comparisons, cfg.reward, cfg.model, cfg.seed, reference_samples=reference_samples)
    _, valid = split_comparisons(comparisons, cfg.reward.valid_fraction, cfg.seed)
    chosen_r, rejected_r = score_comparisons(rm, tokenizer, valid, cfg.model)
    rm_metrics["accuracy_gold"] = gold_accuracy(
        chosen_r, rejected_r,
        [gold_score(c["prompt"], c["chosen"], c.get("chosen_ended", True)) for c in valid],
        [gold_score(c["prompt"], c["rejected"], c.get("rejected_ended", True)) for c in valid],
    )

    policies = {"sft": sft}
    policies["chosen"], _, _ = watch("chosen", train_chosen, sft, tokenizer, comparisons, cfg.baselines.chosen, cfg.model, cfg.seed)
    policies["combined"], _, _ = watch("combined", train_combined, sft, tokenizer, comparisons, cfg.baselines.combined, cfg.model, cfg.seed)
    policies["dpo"], _, _ = watch("dpo", train_dpo, sft, tokenizer, comparisons, cfg.baselines.dpo, cfg.model, cfg.seed)
    ppo_policy, ref, critic = copy.deepcopy(sft), frozen_copy(sft), copy.deepcopy(rm)
    policies["ppo"], _, ppo_history = watch(
        "ppo", train_ppo, ppo_policy, ref, critic, rm, tokenizer, train_prompts, cfg.ppo, cfg.model, cfg.seed,
        ptx_examples=rows[DEMONSTRATIONS], monitor=gold_monitor,
    )
    return rows, tokenizer, policies, rm, rm_metrics, ppo_history


def evaluate_everything(cfg, rows, tokenizer, policies, rm, watch: Stopwatch) -> dict:
    eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
    sft = policies["sft"]
    report = {}
    for mode_name in cfg.evaluation.modes:
        greedy = mode_name == "greedy"
        mode = DecodingMode(mode_name, greedy, 1 if greedy else cfg.evaluation.samples_per_prompt, cfg.evaluation.temperature)
        responses: dict[str, Responses] = {}
        for name, policy in policies.items():
            out = sample_responses(policy, tokenizer, eval_prompts, mode, cfg.model, cfg.seed, cfg.evaluation.batch_size, reference=sft, reward_model=rm)
            out.gold = [gold_score(p, t, e) for p, t, e in zip(out.prompts, out.texts, out.ended)]
            responses[name] = out
        if not greedy:
            expanded = [p for p in eval_prompts for _ in range(mode.samples_per_prompt)]
            texts, ended, scores = best_of_n(sft, rm, tokenizer, expanded, cfg.baselines.best_of_n.n, cfg.model, mode.temperature, cfg.seed)
            responses["best_of_n"] = Responses(expanded, texts, ended, scores, [], [gold_score(p, t, e) for p, t, e in zip(expanded, texts, ended)])
        report[mode_name] = {
            "policies": {name: summarise(out) for name, out in responses.items()},
            "ppo_win_rate": {name: win_rate(responses["ppo"].gold, out.gold).as_dict() for name, out in responses.items() if name != "ppo"},
        }
    return report


def print_table(result: dict) -> None:
    for mode, block in result["evaluation"].items():
        print(f"\n== {mode} decoding (held-out prompts) ==")
        print(f"{'policy':<10} {'gold mean [95% CI]':<26} {'RM':>7} {'KL':>7} {'len':>5} {'unterm':>7} {'PPO wins [95% CI]':<22}")
        for name, s in block["policies"].items():
            g = s["gold"]
            wr = block["ppo_win_rate"].get(name)
            wins = f"{wr['value']:.3f} [{wr['ci'][0]:.3f}, {wr['ci'][1]:.3f}]" if wr else "-"
            kl = f"{s['kl']:7.2f}" if "kl" in s else "      -"
            print(f"{name:<10} {g['value']:6.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]{'':<6} {s['rm']['value']:7.3f} {kl} {s['length']:5.1f} {s['unterminated']:7.3f} {wins:<22}")
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
    evaluation = watch("evaluation", evaluate_everything, cfg, rows, tokenizer, policies, rm, watch)

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
