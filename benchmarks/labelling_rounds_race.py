"""Labelling rounds on the embedded task: does iterated RLHF pay, and should PPO continue or restart each round?

    python benchmarks/labelling_rounds_race.py [--profile default] [--seeds 3] [--seed FIRST] [--rounds 2]
        [--set key=value ...]

For each seed, one SFT policy, then three schedules with the same total label budget (``comparisons.n_prompts``
ranked groups), each the flow's rounds (``recipe_rounds.labelling_rounds``) through the benchmarks' stages
(benchmarks/recipe_stages.py):

    single     one round: SFT samples labelled, RM, PPO for every iteration, DPO (today's default pipeline)
    continue   R rounds; round r's PPO continues round r-1's policy for its share of the iterations
    restart    R rounds; round r's PPO restarts from SFT for every share up to its own (1.5x PPO's compute at R=2)

In every schedule iterative DPO gets the same rounds of on-policy labels (its own samples, same prompts, same
budget), and the last round of each track ships its labeller-selected snapshot. Per round and track it records, on
the held-out prompts (sample decoding, ``evaluation.samples_per_prompt`` each): the policy's gold mean [95% CI],
and the agreement with gold of the reward that trained it (PPO: that round's RM; DPO: its implicit reward
beta * log pi / pi_sft) over every pair of one prompt's samples gold does not tie. Finally PPO's gold win rate
over iterative DPO. Writes benchmarks/results/rounds.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from itertools import combinations
from pathlib import Path

from components.config import load_config
from components.data.files import EVAL_PROMPTS
from components.evaluation.intervals import clustered_mean_ci, win_rate
from components.evaluation.policy_eval import DecodingMode, Responses, sample_responses
from components.io import write_json
from components.models.decoding import Decoder
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.lexicon import VOCABULARY
from components.training import recipe, recipe_rounds

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "rounds.json"

from benchmarks.recipe_stages import BenchmarkRoundStages, BenchmarkStages, Stopwatch  # noqa: E402
from flows.execution import runtimes  # noqa: E402

SCHEDULES = ("single", "continue", "restart")


def agreement(responses: Responses, rewards: list[float]) -> float:
    """Share of the pairs of one prompt's responses, gold not tied, that ``rewards`` orders as gold does."""
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(responses.prompts):
        by_prompt.setdefault(prompt, []).append(index)
    agree = total = 0
    for indices in by_prompt.values():
        for i, j in combinations(indices, 2):
            gold_diff = responses.gold[i] - responses.gold[j]
            if gold_diff == 0:
                continue
            total += 1
            agree += (rewards[i] - rewards[j]) * gold_diff > 0
    return agree / total if total else math.nan


def measured(cfg, policy, tokenizer, eval_prompts, sft, reward_model=None) -> tuple[dict, Responses]:
    """Gold mean [CI] on the held-out prompts and the training reward's gold agreement on those samples (the RM's,
    or with ``reward_model`` None the implicit DPO reward beta * log pi / pi_sft)."""
    mode = DecodingMode("sample", False, cfg.evaluation.samples_per_prompt, cfg.evaluation.temperature)
    decoder = Decoder(tokenizer, cfg.model, cfg.seed)
    out = sample_responses(policy, eval_prompts, mode, decoder, cfg.evaluation.batch_size, sft, reward_model)
    out.gold = [gold_score(p, t, e) for p, t, e in zip(out.prompts, out.texts, out.ended)]
    rewards = out.rm_scores if reward_model is not None else [cfg.baselines.dpo.beta * kl for kl in out.kl]
    gold = clustered_mean_ci(out.gold, mode.samples_per_prompt)
    return {
        "gold": round(gold.value, 4),
        "gold_ci": [round(gold.lo, 4), round(gold.hi, 4)],
        "kl": round(statistics.fmean(out.kl), 3),
        "reward_gold_agreement": round(agreement(out, rewards), 4),
    }, out


def run_schedule(cfg, schedule: str, rounds: int, sft, tokenizer, rows, eval_prompts, runtime) -> dict:
    """Every round of one schedule (``recipe_rounds.labelling_rounds`` from ``sft``), the PPO track and the iterative
    DPO track side by side, each round measured once it has trained."""
    cfg = cfg.model_copy(
        update={
            "comparisons": cfg.comparisons.model_copy(update={"rounds": 1 if schedule == "single" else rounds}),
            "ppo": cfg.ppo.model_copy(update={"between_rounds": "restart" if schedule == "restart" else "continue"}),
        }
    )
    records = []
    started = time.perf_counter()

    def after_round(r: int, tracks: recipe_rounds.Tracks) -> None:
        nonlocal started
        ppo_measured, ppo_out = measured(
            cfg, tracks.ppo.model, tokenizer, eval_prompts, sft.model, tracks.reward_model.model
        )
        dpo_measured, dpo_out = measured(cfg, tracks.dpo.model, tokenizer, eval_prompts, sft.model)
        record = {
            "round": r,
            "pairs": {track: sum(len(c.model) for c in made) for track, made in tracks_rounds(tracks).items()},
            "ppo_iterations": recipe_rounds.ppo_round_config(cfg, r).ppo.iterations,
            "ppo": ppo_measured,
            "dpo": dpo_measured,
            "ppo_win_rate_vs_dpo": win_rate(ppo_out.gold, dpo_out.gold, cfg.evaluation.samples_per_prompt).as_dict(),
            "seconds": round(time.perf_counter() - started, 1),
        }
        records.append(record)
        print(
            f"  {schedule:<8} round {r}: PPO gold {record['ppo']['gold']:+.3f} (RM-gold "
            f"{record['ppo']['reward_gold_agreement']:.3f}, KL {record['ppo']['kl']:.1f}), iterative DPO gold "
            f"{record['dpo']['gold']:+.3f} (implicit-gold {record['dpo']['reward_gold_agreement']:.3f}), "
            f"PPO win rate vs DPO {record['ppo_win_rate_vs_dpo']['value']:.3f}; {record['seconds']:.0f} s",
            flush=True,
        )
        started = time.perf_counter()

    stages = BenchmarkStages(cfg, rows, tokenizer, Stopwatch(runtime.device), runtime, ("ppo", cfg))
    recipe_rounds.labelling_rounds(
        BenchmarkRoundStages(stages, after_round), sft, cfg.comparisons.rounds, cfg.ppo.between_rounds
    )
    return {"schedule": schedule, "rounds": records}


def tracks_rounds(tracks: recipe_rounds.Tracks) -> dict[str, list]:
    """Each track's comparisons per round so far."""
    return {"ppo": tracks.ppo_rounds, "dpo": tracks.dpo_rounds}


def run_seed(cfg, rounds: int) -> dict:
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        started = time.perf_counter()
        sft = BenchmarkStages(cfg, rows, tokenizer, Stopwatch(runtime.device), runtime, ("ppo", cfg)).sft()
        print(f"seed {cfg.seed}: SFT {time.perf_counter() - started:.0f} s", flush=True)
        sft_measured, _ = measured(cfg, sft.model, tokenizer, eval_prompts, sft.model)
        schedules = {s: run_schedule(cfg, s, rounds, sft, tokenizer, rows, eval_prompts, runtime) for s in SCHEDULES}
    return {"seed": cfg.seed, "sft_gold": sft_measured["gold"], "schedules": schedules}


def summary(runs: list[dict]) -> dict:
    """Per schedule: the last round's gold for PPO and iterative DPO, mean and spread over the seeds."""
    out = {}
    for schedule in SCHEDULES:
        last = [run["schedules"][schedule]["rounds"][-1] for run in runs]
        out[schedule] = {
            track: {
                "gold_mean": round(statistics.fmean(r[track]["gold"] for r in last), 4),
                "gold_per_seed": [r[track]["gold"] for r in last],
            }
            for track in ("ppo", "dpo")
        }
        out[schedule]["ppo_win_rate_vs_dpo_per_seed"] = [round(r["ppo_win_rate_vs_dpo"]["value"], 4) for r in last]
    return out


def print_table(runs: list[dict]) -> None:
    print(f"\n{'seed':>9} {'schedule':<9} {'round':>5} {'PPO gold':>9} {'RM-gold':>8} {'DPO gold':>9} {'impl-gold':>9}")
    for run in runs:
        for schedule, block in run["schedules"].items():
            for r in block["rounds"]:
                print(
                    f"{run['seed']:>9} {schedule:<9} {r['round']:>5} {r['ppo']['gold']:>+9.3f} "
                    f"{r['ppo']['reward_gold_agreement']:>8.3f} {r['dpo']['gold']:>+9.3f} "
                    f"{r['dpo']['reward_gold_agreement']:>9.3f}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds, from --seed on")
    parser.add_argument("--seed", type=int, help="the first seed (default: the profile's)")
    parser.add_argument("--rounds", type=int, default=2, help="R of the multi-round schedules")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    first = args.seed if args.seed is not None else load_config(args.profile, args.overrides).seed
    runs = []
    for seed in range(first, first + args.seeds):
        cfg = load_config(args.profile, [*args.overrides, f"seed={seed}"])
        runs.append(run_seed(cfg, args.rounds))
        result = {"profile": cfg.profile, "overrides": args.overrides, "rounds": args.rounds, "runs": runs}
        result["summary"] = summary(runs)
        write_json(args.out, result)  # after every seed: a long run keeps what it measured
    print_table(runs)
    print(json.dumps(result["summary"], indent=2))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
