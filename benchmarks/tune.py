"""The tuning sweep: every RL algorithm (PPO, RLOO, GRPO, REINFORCE++) and every supervised baseline get the same
number of configurations, on a tuning seed that is none of the evaluation seeds, and each is judged by held-out
preference labels, never by gold.

    python benchmarks/tune.py [--profile default] [--seed TUNING_SEED] [--only ppo dpo ...] [--set key=value ...]

SFT, the comparisons and the reward model are trained once on the tuning seed (the shared start). Then every
configuration of every method trains from that start, ships its labeller-selected snapshot (see
components/training/selection.py), and is scored by that snapshot's label win rate on the held-out slice: the
share of held-out prompts on which the labeller prefers its answer to the response the group's labellers
ranked first. A gold column is printed for the record (sampling, one answer per held-out evaluation prompt of
the tuning seed); nothing reads it.

The configuration params.yaml carries, per method, follows the one-standard-error rule (Breiman et al. 1984):
of the configurations whose label win rate is within one standard error of the method's best (the binomial
error of the best rate on the slice's prompts), the cheapest in training passes (epochs; for PPO, the reward
models it needs), then the higher win rate. The same rule for every method; it keeps a configuration that costs
more only when the labels can tell that it is better.

Writes benchmarks/results/tuning.json and prints the table (also written as tuning.md).

    python benchmarks/tune.py --from-results benchmarks/results/tuning.json   # re-apply the rule, no training
    python benchmarks/tune.py --merge part1.json part2.json ...              # sweeps run apart (one per core), one
                                                                              # table; a later file's row replaces an
                                                                              # earlier one's of the same configuration
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

from components.config import load_config
from components.data.files import EVAL_PROMPTS
from components.evaluation.policy_eval import DecodingMode, sample_responses
from components.models.decoding import Decoder
from components.models.ensemble import RewardEnsemble, members_of
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.review_task import ReviewTask
from components.training import recipe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results"

from benchmarks.recipe_stages import BenchmarkStages, Stopwatch  # noqa: E402
from flows.execution import runtimes  # noqa: E402

# the same number of configurations for every method: what each one's tuning budget is
GRID: dict[str, list[dict[str, object]]] = {
    # PPO's reward signal is part of its configuration: one reward model, or an ensemble of three read as mean - std
    "ppo": [
        {"ppo.lr": 5.0e-5, "ppo.kl.kl_coef": 0.1, "reward.ensemble_size": 1},
        {"ppo.lr": 1.0e-4, "ppo.kl.kl_coef": 0.05, "reward.ensemble_size": 1},
        {"ppo.lr": 2.0e-4, "ppo.kl.kl_coef": 0.05, "reward.ensemble_size": 1},
        {"ppo.lr": 1.0e-4, "ppo.kl.kl_coef": 0.02, "reward.ensemble_size": 1},
        {"ppo.lr": 1.0e-4, "ppo.kl.kl_coef": 0.05, "reward.ensemble_size": 3},
        {"ppo.lr": 2.0e-4, "ppo.kl.kl_coef": 0.05, "reward.ensemble_size": 3},
    ],
    # PPO's length and KL penalty (issue 35: gold was still rising at iteration 80), its lr and reward signal fixed
    "ppo_length": [
        {"ppo.iterations": iterations, "ppo.kl.kl_coef": kl_coef}
        for iterations in (80, 160)
        for kl_coef in (0.1, 0.05, 0.02)
    ],
    # the critic-free RL algorithms: PPO's learning rates and KL penalties (their own optimum may lie elsewhere: no
    # critic, and RLOO and GRPO sample k = 4 responses of a quarter of the prompts), one reward model like PPO's pick
    **{
        algorithm: [
            {"rl.algorithm": algorithm, "ppo.lr": lr, "ppo.kl.kl_coef": kl_coef}
            for lr in (5.0e-5, 1.0e-4, 2.0e-4)
            for kl_coef in (0.1, 0.05)
        ]
        for algorithm in ("rloo", "grpo", "reinforce_pp")
    },
    "dpo": [
        {"baselines.dpo.beta": beta, "baselines.dpo.epochs": epochs}
        for beta in (0.1, 0.3, 1.0)
        for epochs in (1.0, 2.0)
    ],
    "chosen": [
        {"baselines.chosen.lr": lr, "baselines.chosen.epochs": epochs}
        for lr in (1.0e-4, 3.0e-4, 1.0e-3)
        for epochs in (1.0, 2.0)
    ],
    "top_ranked": [
        {"baselines.top_ranked.lr": lr, "baselines.top_ranked.epochs": epochs}
        for lr in (1.0e-4, 3.0e-4, 1.0e-3)
        for epochs in (2.0, 4.0)
    ],
    "combined": [
        {"baselines.combined.unlikelihood_coef": coef, "baselines.combined.lr": lr}
        for coef in (0.05, 0.5)
        for lr in (1.0e-4, 3.0e-4, 1.0e-3)
    ],
}


def overrides_of(config: dict[str, object]) -> list[str]:
    return [f"{key}={value}" for key, value in config.items()]


RL_METHODS = ("ppo", "ppo_length", "rloo", "grpo", "reinforce_pp")


def training_passes(method: str, config: dict[str, object], base) -> float:
    """What a configuration costs to train, in passes: epochs for a supervised baseline; for an RL algorithm the
    reward models it needs trained, times its iterations over the profile's."""
    if method in RL_METHODS:
        members = float(config.get("reward.ensemble_size", base.reward.ensemble_size))
        return members * float(config.get("ppo.iterations", base.ppo.iterations)) / base.ppo.iterations
    return float(config.get(f"baselines.{method}.epochs", getattr(base.baselines, method).epochs))


def choose(results: list[dict], prompts: int, base) -> dict[str, dict]:
    """Per method, the one-standard-error rule: the cheapest configuration within one standard error of the best
    label win rate, the higher win rate among equally cheap ones. Returns {method: the chosen row}."""
    chosen = {}
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        best = max(r["label_win_rate"] for r in rows)
        standard_error = math.sqrt(best * (1 - best) / prompts)
        close = [r for r in rows if r["label_win_rate"] >= best - standard_error - 1e-12]
        chosen[method] = min(close, key=lambda r: (training_passes(method, r["config"], base), -r["label_win_rate"]))
    return chosen


def write_table(results: list[dict], chosen: dict[str, dict], out: Path, record: dict) -> str:
    table = [
        "| method | configuration | label win rate (selects) | snapshot | training passes "
        "| gold (not used) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    best = {m: max(r["label_win_rate"] for r in results if r["method"] == m) for m in chosen}
    for r in results:
        mark = (
            " **chosen**"
            if chosen[r["method"]] is r
            else (" (best)" if r["label_win_rate"] == best[r["method"]] else "")
        )
        table.append(
            f"| {r['method']} | `{json.dumps(r['config'])}` | {r['label_win_rate']:.3f}{mark} | "
            f"{r['chosen_snapshot']:.0f} | {r['passes']:g} | {r['diagnostic_gold']:.3f} | {r['seconds']:.0f} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({**record, "results": results, "chosen": {m: r["config"] for m, r in chosen.items()}}, indent=2)
    )
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    return "\n".join(table)


def merge(paths: list[Path], out: Path, base) -> int:
    """Sweeps run apart (other methods, or other configurations of one, one per core) on the same tuning seed, as one
    table: every configuration's row, a later file's replacing an earlier one's."""
    records = [json.loads(path.read_text()) for path in paths]
    settings = {(r["profile"], r["tuning_seed"], json.dumps(r["overrides"])) for r in records}
    if len(settings) > 1:
        raise SystemExit(f"cannot merge sweeps of different profiles, seeds or overrides: {sorted(settings)}")
    rows = {(row["method"], json.dumps(row["config"], sort_keys=True)): row for r in records for row in r["results"]}
    results = sorted(rows.values(), key=lambda row: list(GRID).index(row["method"]) if row["method"] in GRID else -1)
    for row in results:
        row["passes"] = training_passes(row["method"], row["config"], base)
    counts = {
        method: sum(row["method"] == method for row in results)
        for method in dict.fromkeys(r["method"] for r in results)
    }
    # a method is chosen among its own rows only, so parts may differ in what the code recorded of its selection
    record = {
        **{key: records[-1][key] for key in ("profile", "tuning_seed", "overrides", "selection", "rule")},
        "configurations_per_method": counts,
        "merged_from": [
            {"file": path.name, "methods": sorted({row["method"] for row in r["results"]}), "selection": r["selection"]}
            for path, r in zip(paths, records)
        ],
    }
    print(write_table(results, choose(results, record["selection"]["prompts"], base), out, record))
    return 0


def diagnostic_gold(cfg, policy, tokenizer, eval_prompts: list[str]) -> float:
    """Mean gold of one sampled answer per held-out evaluation prompt: printed, never used to choose."""
    out = sample_responses(
        policy,
        eval_prompts,
        DecodingMode("sample", False, 1, 1.0),
        Decoder(tokenizer, cfg.model, cfg.seed),
        cfg.evaluation.batch_size,
    )
    return statistics.fmean(gold_score(p, t, e) for p, t, e in zip(out.prompts, out.texts, out.ended))


def sweep(args, cfg, seed: int, base, runtime) -> list[dict]:
    """The shared start (SFT, comparisons, the reward models), then every configuration of every method of
    ``args.only`` from it, each through the benchmarks' recipe stages (benchmarks/recipe_stages.py)."""
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, ReviewTask(cfg).vocabulary)
    eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
    shared = BenchmarkStages(cfg, rows, tokenizer, Stopwatch(runtime.device), runtime, ("ppo", cfg))
    started = time.perf_counter()
    sft = shared.sft()
    comparisons = shared.comparisons(sft)
    # the shared reward models: as many members as any PPO configuration reads; member k is the same model whatever
    # the ensemble's size (its seed is seed + k), so a configuration with fewer members reads the first ones
    ppo_configs = [c for m in args.only if m in RL_METHODS for c in GRID[m]]
    members = max(int(c.get("reward.ensemble_size", cfg.reward.ensemble_size)) for c in [{}, *ppo_configs])
    ensemble_cfg = load_config(args.profile, [*args.overrides, f"seed={seed}", f"reward.ensemble_size={members}"])
    reward = dataclasses.replace(shared, cfg=ensemble_cfg).reward_model(sft, comparisons)
    print(
        f"shared start (SFT, comparisons, {members} reward model(s)) on seed {seed}: "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )

    results = []
    for method in args.only:
        for index, config in enumerate(GRID[method]):
            if args.configs is not None and index not in args.configs:
                continue
            run_cfg = load_config(args.profile, [*args.overrides, f"seed={seed}", *overrides_of(config)])
            stages = dataclasses.replace(shared, cfg=run_cfg)
            t0 = time.perf_counter()
            if method in RL_METHODS:
                first = members_of(reward.model)[: run_cfg.reward.ensemble_size]
                reward_model = recipe.StageResult(first[0] if len(first) == 1 else RewardEnsemble(first), {})
                result = stages.rl_from(method, run_cfg, sft.model, reward_model, comparisons)
            else:
                result = stages.baseline(method, sft, comparisons)
            row = {
                "method": method,
                "config": config,
                "label_win_rate": result.metrics["selection.chosen_win_rate"],
                "chosen_snapshot": result.metrics.get(
                    "selection.chosen_step", result.metrics.get("selection.chosen_iteration")
                ),
                "snapshot_win_rates": {k: v for k, v in result.metrics.items() if k.startswith("selection.win_rate.")},
                "seconds": round(time.perf_counter() - t0, 1),
                "diagnostic_gold": diagnostic_gold(run_cfg, result.model, tokenizer, eval_prompts),
            }
            row["passes"] = training_passes(method, config, base)
            results.append(row)
            print(
                f"{method:<11} {json.dumps(config):<70} label win {row['label_win_rate']:.3f} "
                f"(snapshot {row['chosen_snapshot']:.0f})  gold {row['diagnostic_gold']:.3f}  {row['seconds']:.0f} s",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, help="the tuning seed (default: tuning.seed of the profile)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[m for m in GRID if m != "ppo_length"],
        choices=list(GRID),
        help=(
            "methods to sweep (default: every method's 6 configurations; ppo_length, PPO's iterations x kl_coef, "
            "only when named)"
        ),
    )
    parser.add_argument(
        "--configs", type=int, nargs="*", help="run only these configurations (indices into each method's grid)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS / "tuning.json")
    parser.add_argument("--from-results", type=Path, help="re-apply the choice rule to a results file; no training")
    parser.add_argument("--merge", type=Path, nargs="+", help="one table from several results files; no training")
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    base = load_config(args.profile, args.overrides)
    if args.merge:
        return merge(args.merge, args.out, base)
    if args.from_results:
        record = json.loads(args.from_results.read_text())
        results = record.pop("results")
        for row in results:
            row["passes"] = training_passes(row["method"], row["config"], base)
        record.pop("best", None), record.pop("chosen", None)
        record["rule"] = (
            "one standard error: the cheapest in training passes within one standard error of the best label win rate"
        )
        print(write_table(results, choose(results, record["selection"]["prompts"], base), args.out, record))
        return 0
    seed = args.seed if args.seed is not None else base.tuning.seed
    cfg = load_config(args.profile, [*args.overrides, f"seed={seed}"])
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        results = sweep(args, cfg, seed, base, runtime)

    record = {
        "profile": args.profile,
        "tuning_seed": seed,
        "overrides": args.overrides,
        "configurations_per_method": {m: len(GRID[m]) for m in args.only},
        "selection": cfg.selection.model_dump(),
        "rule": (
            "one standard error: the cheapest in training passes within one standard error of the best label win rate"
        ),
    }
    print("\n" + write_table(results, choose(results, cfg.selection.prompts, base), args.out, record))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
