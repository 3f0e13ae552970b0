"""Which reward model: each lever against the default on held-out label agreement, on the tuning seed.

    python benchmarks/reward_levers.py [--profile default] [--seed TUNING_SEED] [--only LEVER ...] [--set k=v ...]

SFT and its ranked comparisons are made once on the tuning seed (none of the evaluation seeds). Then one reward model
per lever, each on the same training comparisons and judged on the same held-out ranked groups:

    default        InstructGPT's pairwise loss, one reward model on SFT's transformer (params.yaml)
    plackett_luce  the listwise loss: the likelihood of each group's whole ranking (reward.loss)
    ensemble3      three members on SFT's transformer, independent heads and data orders (Coste et al. 2023)
    seeded3        three members, member k on its own SFT trained from seed + k: differently seeded backbones
    larger         one reward model on a transformer twice as wide (and twice the heads) as the policy, SFT-trained on
                   the same demonstrations first (reward.model; Gao et al. 2022: gold at a given KL improves with RM
                   size)

An ensemble is read as its members' mean. Agreement with the held-out labels is counted per held-out group (the
share of its pairs the model orders as labelled): the mean over groups with a t-interval, and each lever's paired
difference from the default over the same groups. A lever wins only where that difference's interval is above 0.
Agreement with gold on the same pairs is printed for the record; nothing reads it. Writes
benchmarks/results/reward_levers.json (and .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from components.config import Config, apply_overrides, load_config
from components.evaluation.intervals import mean_ci
from components.evaluation.report import reward_model_gold_accuracy
from components.models.ensemble import RewardEnsemble
from components.models.scoring import score_samples
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.review_task import ReviewTask
from components.training import recipe
from components.training.comparisons import draw_prompts, sample_reference
from components.training.loop import Harness
from components.training.reward import group_comparisons, normalised_on, train_reward_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "reward_levers.json"

from benchmarks.recipe_stages import BenchmarkStages, Stopwatch  # noqa: E402
from flows.execution import runtimes  # noqa: E402

LEVERS = ("default", "plackett_luce", "ensemble3", "seeded3", "larger")
MEMBERS = 3


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    return Config.model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides))


def group_agreement(model, tokenizer, groups: list[list[dict]], cfg: Config) -> list[float]:
    """Per held-out group, the share of its pairs the model orders as labelled (a tie counts as wrong)."""
    rows = [row for group in groups for row in group]
    chosen = score_samples(model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows], cfg.model).tolist()
    rejected = score_samples(model, tokenizer, [(r["prompt"], r["rejected"]) for r in rows], cfg.model).tolist()
    right = iter(float(c > r) for c, r in zip(chosen, rejected))
    return [statistics.fmean(next(right) for _ in group) for group in groups]


def members(cfg: Config, backbones: list, tokenizer, comparisons, reference, runtime):
    """One reward model per backbone (member k: seed + k for its head and data order), the ensemble of them."""
    trained = [
        train_reward_model(backbone, tokenizer, comparisons, cfg.reward, cfg.model, cfg.seed, k, Harness(runtime))[0]
        for k, backbone in enumerate(backbones)
    ]
    for model in trained:
        normalised_on(model, tokenizer, reference, cfg.model, runtime)
    return RewardEnsemble(trained)


def pull_levers(cfg: Config, seed: int, levers: list[str], runtime) -> tuple[dict, list]:
    """SFT and its comparisons (benchmarks/recipe_stages.py's), then each lever's reward model: the recipe's reward
    stage with the lever's settings, or for ``seeded3`` (backbones the stage cannot give) members trained apart."""
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, ReviewTask(cfg).vocabulary)
    stages = BenchmarkStages(cfg, rows, tokenizer, Stopwatch(runtime.device), runtime, ("ppo", cfg))
    started = time.perf_counter()
    sft = stages.sft()
    comparisons = stages.comparisons(sft)
    _, held_out = recipe.labelled_split(cfg, comparisons.model)
    groups = group_comparisons(held_out)
    print(
        f"shared start on seed {seed}: {time.perf_counter() - started:.0f} s; {len(groups)} held-out groups", flush=True
    )

    def reward_stage(overrides: list[str], size: int = 1):
        lever = with_overrides(cfg, [*overrides, f"reward.ensemble_size={size}"])
        return dataclasses.replace(stages, cfg=lever).reward_model(sft, comparisons).model

    def seeded3():
        reference = sample_reference(
            sft.model,
            tokenizer,
            draw_prompts(stages.train_prompts, cfg.reward.reference_samples, cfg.seed + 1),
            cfg.model,
            cfg.comparisons.temperature,
            cfg.comparisons.batch_size,
            cfg.seed,
            runtime,
        )
        backbones = [sft.model] + [
            dataclasses.replace(stages, cfg=with_overrides(cfg, [f"seed={cfg.seed + k}"])).sft().model
            for k in range(1, MEMBERS)
        ]
        return members(cfg, backbones, tokenizer, comparisons.model, reference, runtime)

    wide = f"reward.model={{n_embd: {2 * cfg.model.n_embd}, n_head: {2 * cfg.model.n_head}}}"
    build = {
        "default": lambda: reward_stage([]),
        "plackett_luce": lambda: reward_stage(["reward.loss=plackett_luce"]),
        "ensemble3": lambda: reward_stage([], MEMBERS),
        "seeded3": seeded3,
        "larger": lambda: reward_stage([wide]),
    }
    results, agreement = {}, {}
    for lever in dict.fromkeys(["default", *levers]):
        t0 = time.perf_counter()
        model = build[lever]()
        agreement[lever] = group_agreement(model, tokenizer, groups, cfg)
        estimate = mean_ci(agreement[lever])
        results[lever] = {
            "label_agreement": estimate.as_dict(),
            "gold_agreement": reward_model_gold_accuracy(model, tokenizer, held_out, cfg.model, gold_score),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if lever != "default":
            paired = mean_ci([a - b for a, b in zip(agreement[lever], agreement["default"])])
            results[lever]["minus_default"] = paired.as_dict()
            results[lever]["wins"] = paired.lo > 0
        print(f"{lever:<14} {json.dumps(results[lever])}", flush=True)
    return results, groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, help="the tuning seed (default: tuning.seed of the profile)")
    parser.add_argument("--only", nargs="+", choices=LEVERS, default=list(LEVERS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    base = load_config(args.profile, args.overrides)
    seed = args.seed if args.seed is not None else base.tuning.seed
    cfg = load_config(args.profile, [*args.overrides, f"seed={seed}"])
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        results, groups = pull_levers(cfg, seed, args.only, runtime)

    table = [
        "| lever | held-out label agreement [95% CI over groups] | minus default [95% CI] | gold agreement "
        "| parameters | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for lever, r in results.items():
        a, d = r["label_agreement"], r.get("minus_default")
        paired = (
            f"{d['value']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]" + (" **wins**" if r["wins"] else "")
            if d
            else "-"
        )
        table.append(
            f"| {lever} | {a['value']:.4f} [{a['ci'][0]:.4f}, {a['ci'][1]:.4f}] | {paired} | {r['gold_agreement']:.4f} "
            f"| {r['parameters']:,} | {r['seconds']:.0f} |"
        )
    record = {
        "profile": args.profile,
        "tuning_seed": seed,
        "overrides": args.overrides,
        "groups": len(groups),
        "levers": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
