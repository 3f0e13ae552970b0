"""Does RLHF beat supervised learning? The whole default recipe on CPU, on one or more seeds, judged by gold.

    python benchmarks/rlhf_vs_sl.py [--profile default] [--seeds N] [--seed FIRST] [--rl ppo rloo ...]
                                    [--rl-without-sft] [--set key=value ...]

For each seed (FIRST, FIRST + 1, ...; FIRST defaults to the profile's seed): trains SFT, collects comparisons
from SFT samples, trains the reward model (ensemble), the supervised baselines (SFT on chosen, SFT on each
group's top-ranked response, the combined likelihood/unlikelihood loss, DPO) and every RL algorithm of ``--rl``
(PPO always; each other one with its tuned settings from tuning.json's picks, see benchmarks/tune.py; with
``--rl-without-sft`` also the configured one from the model SFT starts from, ``rl_without_sft``), ships each
trained policy's snapshot the labeller prefers on the held-out slice, adds best-of-n as a non-training reference,
and decodes every policy on the held-out prompts under each configured decoding mode. Prints a table per seed and
one over seeds, and writes benchmarks/results/rlhf_vs_sl.json:

    baselines              the supervised baselines the gate faces
    rl                     each RL algorithm raced and the overrides it ran with
    rl_without_sft         the seeds that also trained RL without SFT (a policy some seeds lack is estimated over
                           the seeds that have it)
    runs[i]                one seed: seed, evaluation.<mode>.ppo_win_rate.<policy>.{rate, ci}, policies' gold
                           (under sampling also best_of_n_matched: best-of-n at PPO's KL, its n and analytic KL),
                           evaluation.<mode>.rl_win_rate.<algorithm>.<baseline> (every RL algorithm against every
                           supervised baseline), the RM's accuracy and gold agreement, label budgets, stage seconds
                           and stage peak memory (MB of resident memory above the stage's start, after the
                           allocator's free memory is handed back; on CUDA also the device's), RL histories
    across_seeds           per mode and policy: PPO's win rate and gold difference, mean over seeds with a
                           t-interval (the seed is the unit; responses are never pooled over seeds), the spread
                           between seeds, and the seeds needed to show an edge at that spread; rl_vs_baselines: the
                           same for every RL algorithm against every supervised baseline
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from components.config import Config, apply_overrides, load_config
from components.data.files import EVAL_PROMPTS
from components.evaluation import token_sensitivity
from components.evaluation.best_of_n import best_of_n_kl, kl_matched_n
from components.evaluation.evaluation_report import EvaluationReport
from components.evaluation.five_reasons import as_records, five_reasons, format_records
from components.evaluation.intervals import win_rate
from components.evaluation.judges import gold_judge
from components.evaluation.overoptimisation import overoptimisation_fit, shipped_iteration
from components.evaluation.policy_eval import DecodingMode, sample_responses, summarise
from components.evaluation.report import (
    EvaluatedModels,
    best_of_n_responses,
    decoding_modes,
    evaluate_policies,
    format_table,
)
from components.evaluation.seeds import across_seeds as across_seeds_estimate
from components.evaluation.seeds import seeds_needed
from components.io import write_json
from components.models.decoding import Decoder
from components.models.runtime import Runtime
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.review_task import ReviewTask
from components.training import recipe
from flows.execution import runtimes

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "rlhf_vs_sl.json"

from benchmarks.recipe_stages import BenchmarkStages, Stopwatch  # noqa: E402

TUNING = RESULTS.with_name("tuning.json")
RL_ALGORITHMS = ("ppo", "rloo", "grpo", "reinforce_pp")
WITHOUT_SFT = "rl_without_sft"  # the configured RL algorithm from the model SFT starts from, with it as the reference
HEADROOM_N = (1, 2, 4, 8, 16, 32, 64)
MATCHED = "best_of_n_matched"  # best-of-n at PPO's KL


@dataclass(frozen=True)
class Matched:
    """Best-of-n at PPO's KL: n at most ``n_max``, ``samples`` picks per held-out prompt (each costs n samples)."""

    n_max: int
    samples: int


DEFAULT_MATCHED = Matched(n_max=256, samples=2)
# each kind of one-token edit, and the key of its record and stage (random's kept its name from before fluent edits)
TOKEN_SENSITIVITY = {"random": "token_sensitivity", "fluent": "token_sensitivity_fluent"}


def rl_settings(algorithms: list[str], tuning: Path) -> dict[str, list[str]]:
    """Each RL algorithm's overrides: PPO's are params.yaml's own; another's, ``rl.algorithm`` and its pick in the
    tuning sweep's results (none there: PPO's settings)."""
    chosen = json.loads(tuning.read_text()).get("chosen", {}) if tuning.exists() else {}
    return {
        name: [] if name == "ppo" else [f"rl.algorithm={name}", *(f"{k}={v}" for k, v in chosen.get(name, {}).items())]
        for name in algorithms
    }


def train_everything(
    cfg, watch: Stopwatch, runtime: Runtime, rl: dict[str, list[str]] | None = None, without_sft: bool = False
) -> dict:
    """``recipe.train_all`` (the stage functions the pipeline's flow calls, in its order, on the runtime it runs them
    on), timed stage by stage; ``rl``: each RL algorithm to train and its overrides (PPO alone by default), the first
    in the recipe's place and the others after it; ``without_sft``: also the configured RL algorithm from the model
    SFT starts from (seed reason 5's ablation), as ``rl_without_sft``."""
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, ReviewTask(cfg).vocabulary)
    algorithms = {
        name: Config.model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides)) if overrides else cfg
        for name, overrides in (rl or {"ppo": []}).items()
    }
    stages = BenchmarkStages(cfg, rows, tokenizer, watch, runtime, next(iter(algorithms.items())))
    made = recipe.train_all(stages)

    policies = {"sft": made.sft.model, **{name: result.model for name, result in made.baselines.items()}}
    metrics = {"reward_model": made.reward_model.metrics, **{n: r.metrics for n, r in made.baselines.items()}}
    trained_rl = {stages.first_rl[0]: made.rl}
    for name, rl_cfg in list(algorithms.items())[1:]:
        trained_rl[name] = stages.rl_from(name, rl_cfg, made.sft.model, made.reward_model, made.comparisons)
    if without_sft:
        pretrained = recipe.pretrained_policy(cfg, tokenizer)
        trained_rl[WITHOUT_SFT] = stages.rl_from(WITHOUT_SFT, cfg, pretrained, made.reward_model, made.comparisons)
    histories = {}
    for name, result in trained_rl.items():
        policies[name], metrics[name], histories[name] = result.model, result.metrics, result.history
    return {
        "rows": rows,
        "tokenizer": tokenizer,
        "policies": policies,
        "reward": made.reward_model,
        "metrics": metrics,
        "rl_histories": histories,
        "comparisons": made.comparisons.model,
        "runtime": runtime,
    }


def best_of_n_headroom(cfg, sft, reward_model, tokenizer, eval_prompts: list[str]) -> dict:
    """Mean gold of best-of-N over SFT samples on the held-out prompts, for N in HEADROOM_N: the N picked by the gold
    judge (how much better the SFT policy's own tail is: the headroom) and by the reward model (what the RM can
    extract from it without any training). A diagnostic: nothing trains or selects on it."""
    n_max = max(HEADROOM_N)
    out = sample_responses(
        sft,
        eval_prompts,
        DecodingMode("sample", False, n_max, 1.0),
        Decoder(tokenizer, cfg.model, cfg.seed),
        cfg.evaluation.batch_size,
        reward_model=reward_model,
    )
    gold = [gold_score(p, t, e) for p, t, e in zip(out.prompts, out.texts, out.ended)]
    rm = [s - (0 if e else cfg.baselines.best_of_n.missing_eos_penalty) for s, e in zip(out.rm_scores, out.ended)]
    curves = {"n": list(HEADROOM_N), "gold_picks": [], "rm_picks": []}
    for n in HEADROOM_N:
        by_gold, by_rm = [], []
        for start in range(0, len(gold), n_max):
            g, r = gold[start : start + n], rm[start : start + n]
            by_gold.append(max(g))
            by_rm.append(g[max(range(n), key=r.__getitem__)])
        curves["gold_picks"].append(statistics.fmean(by_gold))
        curves["rm_picks"].append(statistics.fmean(by_rm))
    return curves


def plot_headroom(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, run in enumerate(runs):
        colour = plt.cm.tab10(k % 10)
        curve, sample = run["best_of_n_headroom"], run["evaluation"]["sample"]["policies"]
        ax.plot(curve["n"], curve["gold_picks"], "-o", color=colour, label=f"seed {run['seed']}: gold picks (headroom)")
        ax.plot(curve["n"], curve["rm_picks"], "--^", color=colour, label=f"seed {run['seed']}: RM picks")
        for name, style in (("ppo", "-"), ("dpo", ":")):
            ax.axhline(sample[name]["gold"]["value"], color=colour, linestyle=style, linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (SFT samples per held-out prompt)")
    ax.set_ylabel("mean gold of the pick")
    ax.set_title("Best-of-N over SFT samples (lines: PPO solid, DPO dotted, sampled)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overoptimisation_record(history: list[dict], ppo_metrics: dict) -> dict:
    """Gao et al.'s curves fitted to the PPO run's gold monitor, and the iteration the shipped snapshot sampled next."""
    fit = overoptimisation_fit(history)
    iteration = shipped_iteration(history, int(ppo_metrics.get("selection.chosen_iteration", -1)))
    shipped = next(h for h in history if h["iteration"] == iteration)
    return {
        **{name: fit[name].as_dict() if fit[name] else None for name in ("gold", "proxy")},
        "shipped": {
            "iteration": shipped["iteration"],
            "kl": shipped["kl"],
            "gold": shipped["gold"],
            "rm_score": shipped["rm_score"],
        },
    }


def evaluate_trained(cfg, trained: dict, matched: Matched = DEFAULT_MATCHED) -> dict:
    """Every trained policy (and best-of-n) on the held-out prompts under each decoding mode, judged by gold; under
    sampling also best-of-n at PPO's KL (``best_of_n_matched``)."""
    eval_prompts = [r["prompt"] for r in trained["rows"][EVAL_PROMPTS]]
    responses: dict[str, dict] = {}
    evaluation = evaluate_policies(
        EvaluatedModels(trained["policies"], trained["reward"].model),
        eval_prompts,
        cfg.evaluation,
        Decoder(trained["tokenizer"], cfg.model, cfg.seed, trained["runtime"]),
        gold_judge(gold_score),
        cfg.baselines.best_of_n,
        on_responses=lambda mode, out: responses.__setitem__(mode.name, out),
    ).as_record()  # the benchmark's record: JSON, added to below
    for mode in decoding_modes(cfg.evaluation):
        evaluation[mode.name]["rl_win_rate"] = rl_win_rates(
            responses[mode.name], list(trained["rl_histories"]), list(cfg.gate.baselines), mode.samples_per_prompt
        )
        if not mode.greedy:
            add_kl_matched_best_of_n(cfg, trained, evaluation[mode.name], responses[mode.name], mode, matched)
    return evaluation


def rl_win_rates(responses: dict, algorithms: list[str], baselines: list[str], samples_per_prompt: int) -> dict:
    """Every RL algorithm's gold win rate against every supervised baseline, paired by prompt as the gate pairs PPO."""
    return {
        name: {
            baseline: win_rate(responses[name].gold, responses[baseline].gold, samples_per_prompt).as_dict()
            for baseline in baselines
        }
        for name in algorithms
    }


def add_kl_matched_best_of_n(cfg, trained: dict, block: dict, responses: dict, mode, matched: Matched) -> None:
    """Best-of-n over SFT with n chosen so that its analytic KL, log n - (n - 1)/n, reaches PPO's measured KL under
    this mode (at most ``matched.n_max``): the two ways of spending the reward model compared at the same distance
    from SFT (best-of-8 spends ~1.2 nats). ``matched.samples`` picks per prompt, each against all of PPO's samples of
    that prompt; the prompt stays the unit of the interval."""
    ppo_kl = block["policies"]["ppo"]["kl"]
    n = kl_matched_n(ppo_kl, matched.n_max)
    picks = DecodingMode(mode.name, mode.greedy, matched.samples, mode.temperature)
    out = best_of_n_responses(
        trained["policies"]["sft"],
        trained["reward"].model,
        [r["prompt"] for r in trained["rows"][EVAL_PROMPTS]],
        picks,
        cfg.baselines.best_of_n.model_copy(update={"n": n}),
        Decoder(trained["tokenizer"], cfg.model, cfg.seed, trained["runtime"]),
    )
    out.gold = [gold_score(p, t, e) for p, t, e in zip(out.prompts, out.texts, out.ended)]
    summary = summarise(out, picks.samples_per_prompt)
    block["policies"][MATCHED] = {**summary, "n": n, "kl": best_of_n_kl(n), "ppo_kl": ppo_kl, "picks": matched.samples}
    block["ppo_win_rate"][MATCHED] = win_rate(
        responses["ppo"].gold, out.gold, mode.samples_per_prompt, picks.samples_per_prompt
    ).as_dict()


def run_seed(cfg, matched: Matched, rl: dict[str, list[str]], without_sft: bool = False) -> dict:
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        watch = Stopwatch(runtime.device)
        return seed_record(cfg, watch, train_everything(cfg, watch, runtime, rl, without_sft), matched)


def seed_record(cfg, watch: Stopwatch, trained: dict, matched: Matched) -> dict:
    eval_prompts = [r["prompt"] for r in trained["rows"][EVAL_PROMPTS]]
    evaluation = watch("evaluation", evaluate_trained, cfg, trained, matched)
    for block in evaluation.values():
        for win in [*block["ppo_win_rate"].values(), *block["ppo_rm_win_rate"].values()]:
            win["rate"] = win["value"]
    rm = trained["reward"].metrics
    headroom = watch(
        "best_of_n_headroom",
        best_of_n_headroom,
        cfg,
        trained["policies"]["sft"],
        trained["reward"].model,
        trained["tokenizer"],
        eval_prompts,
    )
    sensitivity = {  # reason 3 both ways: fluent edits (the pipeline's default) and random ones (seeds raced before)
        edits: watch(
            TOKEN_SENSITIVITY[edits],
            lambda edits=edits: {
                "edits": edits,
                **token_sensitivity.summarise(
                    token_sensitivity.edited_pairs(
                        trained["policies"]["sft"],
                        trained["reward"].model,
                        eval_prompts,
                        gold_judge(gold_score),
                        cfg.evaluation.token_sensitivity.model_copy(update={"edits": edits}),
                        Decoder(trained["tokenizer"], cfg.model, cfg.seed, trained["runtime"]),
                    )
                ),
            },
        )
        for edits in TOKEN_SENSITIVITY
    }
    return {
        "seed": cfg.seed,
        "turns": cfg.data.synthetic.turns,
        "evaluation": evaluation,
        **{key: sensitivity[edits] for edits, key in TOKEN_SENSITIVITY.items()},
        "reward_model": {
            key: rm.get(key)
            for key in (
                "valid_accuracy",
                "accuracy_gold",
                "selected_epoch",
                "ensemble_size",
                "member_agreement",
                "reward_offset",
                "reward_scale",
            )
            if rm.get(key) is not None
        },
        "selection": {
            name: {k: v for k, v in m.items() if k.startswith("selection.")}
            for name, m in trained["metrics"].items()
            if name != "reward_model"
        },
        "label_budgets": recipe.label_budgets(cfg, trained["comparisons"], trained["metrics"]),
        "stage_seconds": watch.seconds,
        "stage_peak_mb": watch.peak_mb,
        **({"stage_device_peak_mb": watch.device_peak_mb} if watch.device_peak_mb else {}),
        "best_of_n_headroom": headroom,
        "overoptimisation": overoptimisation_record(trained["rl_histories"]["ppo"], trained["metrics"]["ppo"]),
        "ppo_history": trained["rl_histories"]["ppo"],
        "rl_histories": {name: h for name, h in trained["rl_histories"].items() if name != "ppo"},
    }


def across_seeds(runs: list[dict], difference: float) -> dict:
    """Per mode and policy, with the seed as the unit (components/evaluation/seeds.py): PPO's win rate against it
    and PPO's gold minus its gold, each the mean over seeds with a t-interval; the seeds needed to show the measured
    edge over 0.5 (and ``difference`` over 0.5) at the spread between seeds measured here. Never one binomial over
    every seed's responses."""
    out: dict = {}
    for mode in runs[0]["evaluation"]:
        per_policy = {}
        for name in names_in([run["evaluation"][mode]["ppo_win_rate"] for run in runs]):
            blocks = [run["evaluation"][mode] for run in runs if name in run["evaluation"][mode]["ppo_win_rate"]]
            win = across_seeds_estimate([b["ppo_win_rate"][name]["value"] for b in blocks])
            ppo_gold = [b["policies"]["ppo"]["gold"]["value"] for b in blocks]
            gold_gap = across_seeds_estimate(
                [p - b["policies"][name]["gold"]["value"] for p, b in zip(ppo_gold, blocks)]
            )
            per_policy[name] = {
                "ppo_win_rate": win.as_dict(),
                "ppo_gold_minus": gold_gap.as_dict(),
                "seeds_needed": {
                    "measured_edge": seeds_needed(win.sd, win.mean - 0.5),
                    f"edge_{difference}": seeds_needed(win.sd, difference),
                },
            }
        out[mode] = per_policy
    return {
        "seeds": [run["seed"] for run in runs],
        "difference": difference,
        "evaluation": out,
        "rl_vs_baselines": rl_across_seeds(runs),
        "five_reasons": reasons_across_seeds(runs, out),
    }


def reasons_across_seeds(runs: list[dict], evaluation: dict) -> list[dict]:
    """The five reasons' verdicts on the seed-level intervals (the seed is the unit of a claim about a method)."""
    as_blocks = {
        mode: {
            "ppo_win_rate": {
                name: {"value": row["ppo_win_rate"]["mean"], "ci": row["ppo_win_rate"]["ci"]}
                for name, row in block.items()
            }
        }
        for mode, block in evaluation.items()
    }
    sensitivity = None
    for key in (TOKEN_SENSITIVITY["fluent"], TOKEN_SENSITIVITY["random"]):  # fluent edits where every seed has them
        measured = [run[key] for run in runs if "rm_minus_sft_agreement" in run.get(key, {})]
        if len(measured) == len(runs):
            break
    if len(measured) == len(runs) and len(runs) > 1:
        paired = across_seeds_estimate([m["rm_minus_sft_agreement"]["value"] for m in measured])
        sensitivity = {
            "edits": measured[0].get("edits", "random"),
            "pairs": sum(m["pairs"] for m in measured),
            "rm_agrees": {"value": statistics.fmean(m["rm_agrees"]["value"] for m in measured)},
            "sft_loss_agrees": {"value": statistics.fmean(m["sft_loss_agrees"]["value"] for m in measured)},
            "rm_minus_sft_agreement": {"value": paired.mean, "ci": list(paired.ci)},
        }
    accuracy = statistics.fmean(run["reward_model"].get("valid_accuracy", float("nan")) for run in runs)
    found = five_reasons(EvaluationReport.from_record(as_blocks), accuracy, sensitivity, turns=runs[0].get("turns", 1))
    return as_records(found)


def rl_across_seeds(runs: list[dict]) -> dict:
    """Per mode, every RL algorithm against every supervised baseline: its win rate and gold difference, the mean over
    seeds with a t-interval (the seed is the unit)."""
    out: dict = {}
    for mode in runs[0]["evaluation"]:
        out[mode] = {}
        for name in names_in([run["evaluation"][mode].get("rl_win_rate", {}) for run in runs]):
            blocks = [run["evaluation"][mode] for run in runs if name in run["evaluation"][mode].get("rl_win_rate", {})]
            out[mode][name] = {
                baseline: {
                    "win_rate": across_seeds_estimate(
                        [b["rl_win_rate"][name][baseline]["value"] for b in blocks]
                    ).as_dict(),
                    "gold_minus": across_seeds_estimate(
                        [
                            b["policies"][name]["gold"]["value"] - b["policies"][baseline]["gold"]["value"]
                            for b in blocks
                        ]
                    ).as_dict(),
                }
                for baseline in blocks[0]["rl_win_rate"][name]
            }
    return out


def seeds_without_sft(runs: list[dict]) -> list[int]:
    """The seeds that also trained RL from the model SFT starts from."""
    return sorted(run["seed"] for run in runs if WITHOUT_SFT in run.get("rl_histories", {}))


def names_in(tables: list[dict]) -> list[str]:
    """Every key of any of ``tables``, in first-seen order: a policy only some seeds trained (``rl_without_sft``) is
    estimated over the seeds that have it, its seed count saying how many."""
    return list(dict.fromkeys(name for table in tables for name in table))


def print_run(run: dict) -> None:
    print(f"\n######## seed {run['seed']} ########")
    print(format_table(EvaluationReport.from_record(run["evaluation"])))
    rm = run["reward_model"]
    print(
        f"\nRM held-out accuracy {rm.get('valid_accuracy', float('nan')):.3f} vs labels, "
        f"{rm.get('accuracy_gold', float('nan')):.3f} vs gold"
        + (
            f"; ensemble of {rm['ensemble_size']}, members agree on {rm['member_agreement']:.3f}"
            if rm.get("member_agreement")
            else ""
        )
    )
    print(
        "selection:",
        {
            name: s.get("selection.chosen_step", s.get("selection.chosen_iteration"))
            for name, s in run["selection"].items()
        },
    )
    curve = run["best_of_n_headroom"]
    print(
        "best-of-N over SFT samples, gold of the pick (N: gold picks / RM picks):",
        ", ".join(f"{n}: {g:.2f}/{r:.2f}" for n, g, r in zip(curve["n"], curve["gold_picks"], curve["rm_picks"])),
    )
    gold = run["overoptimisation"]["gold"]
    if gold:
        print(
            f"Gao fit of PPO's gold: alpha {gold['alpha']:.2f}, beta {gold['beta']:.2f}, R2 {gold['r2']:.2f}, "
            f"peak at KL {gold['peak_kl'] if gold['peak_kl'] is None else round(gold['peak_kl'], 2)}; "
            f"shipped snapshot sampled at KL {run['overoptimisation']['shipped']['kl']:.2f}"
        )
    print("stage seconds:", run["stage_seconds"])
    print("stage peak resident memory (MB above the stage's start):", run["stage_peak_mb"])


def print_rl_across_seeds(summary: dict) -> None:
    for mode, block in summary["rl_vs_baselines"].items():
        if not block:
            continue
        baselines = list(next(iter(block.values())))
        print(f"== {mode}: each RL algorithm's win rate against each supervised baseline, mean [95% t-interval] ==")
        print(f"{'algorithm':<13}" + "".join(f"{b:<24}" for b in baselines))
        for name, row in block.items():
            cells = (row[b]["win_rate"] for b in baselines)
            print(f"{name:<13}" + "".join(f"{c['mean']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]   " for c in cells))


def print_across_seeds(summary: dict, baselines: list[str]) -> None:
    seeds, difference = summary["seeds"], summary["difference"]
    print(f"\n######## over seeds {seeds}: mean [95% t-interval over the {len(seeds)} seeds] ########")
    for mode, block in summary["evaluation"].items():
        print(f"== {mode} ==")
        print(
            f"{'policy':<11} {'PPO win rate':<26} {'sd':>6} {'PPO gold minus':<28} "
            f"seeds needed: measured edge / +{difference}"
        )
        for name, row in block.items():
            win, gap, needed = row["ppo_win_rate"], row["ppo_gold_minus"], row["seeds_needed"]
            print(
                f"{name:<11} {win['mean']:.3f} [{win['ci'][0]:.3f}, {win['ci'][1]:.3f}]   {win['sd']:6.3f} "
                f"{gap['mean']:+.3f} [{gap['ci'][0]:+.3f}, {gap['ci'][1]:+.3f}]   "
                f"{needed['measured_edge']} / {needed[f'edge_{difference}']}{' (gated)' if name in baselines else ''}"
            )
    print_rl_across_seeds(summary)
    print("\n" + format_records(summary["five_reasons"]))


def combine(paths: list[Path], out: Path, difference: float) -> int:
    """One result from several runs of this script on other seeds of the same profile and overrides: their runs by
    seed, and the estimate over seeds computed again over all of them."""
    parts = [json.loads(path.read_text()) for path in paths]
    settings = {
        tuple(json.dumps(part.get(key)) for key in ("profile", "overrides", "baselines", "rl")) for part in parts
    }
    if len(settings) > 1:
        raise SystemExit(f"cannot combine runs of different profiles, overrides, baselines or RL: {sorted(settings)}")
    runs = sorted((run for part in parts for run in part["runs"]), key=lambda run: run["seed"])
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"a seed appears twice among {seeds}")
    result = {
        **{key: parts[0][key] for key in ("profile", "overrides", "baselines", "rl") if key in parts[0]},
        "rl_without_sft": seeds_without_sft(runs),
        "runs": runs,
        "across_seeds": across_seeds(runs, difference),
        "peak_rss_mb": max(part["peak_rss_mb"] for part in parts),
        "combined_from": [str(path) for path in paths],
    }
    write_json(out, result)
    plot_headroom(runs, out.with_name(out.stem + "_headroom.png"))
    print_across_seeds(result["across_seeds"], result["baselines"])
    print(f"\nwritten: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed on")
    parser.add_argument(
        "--seed", type=int, help="the first seed (default: tuning.evaluation_seed, never used while developing)"
    )
    parser.add_argument(
        "--difference", type=float, default=0.05, help="a win-rate edge over 0.5 to size the seeds for (default 0.05)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--matched-n-max",
        type=int,
        default=DEFAULT_MATCHED.n_max,
        help=f"the largest n of best-of-n at PPO's KL (default {DEFAULT_MATCHED.n_max})",
    )
    parser.add_argument(
        "--matched-samples",
        type=int,
        default=DEFAULT_MATCHED.samples,
        help="best-of-n at PPO's KL: picks per held-out prompt, each against every PPO sample of it "
        f"(default {DEFAULT_MATCHED.samples})",
    )
    parser.add_argument(
        "--rl",
        nargs="+",
        choices=RL_ALGORITHMS,
        default=list(RL_ALGORITHMS),
        help="the RL algorithms to race (PPO always among them; default: all)",
    )
    parser.add_argument(
        "--rl-without-sft",
        action="store_true",
        help="also train the configured RL algorithm from the model SFT starts from (seed reason 5's ablation)",
    )
    parser.add_argument(
        "--tuning", type=Path, default=TUNING, help="the tuning sweep's results: each RL algorithm's settings"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="no training: merge the seeds of these result files (runs on several cores at once) into --out",
    )
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, args.difference)
    stay_offline()
    warnings.filterwarnings("ignore")
    first = args.seed if args.seed is not None else load_config(args.profile, args.overrides).tuning.evaluation_seed
    rl = rl_settings(list(dict.fromkeys(["ppo", *args.rl])), args.tuning)
    runs = []
    for seed in range(first, first + args.seeds):  # the file is written after every seed: a stopped run keeps its seeds
        cfg = load_config(args.profile, [*args.overrides, f"seed={seed}"])
        runs.append(run_seed(cfg, Matched(args.matched_n_max, args.matched_samples), rl, args.rl_without_sft))
        print_run(runs[-1])
        result = {
            "profile": cfg.profile,
            "overrides": args.overrides,
            "baselines": list(cfg.gate.baselines),
            "rl": rl,
            "rl_without_sft": seeds_without_sft(runs),
            "runs": runs,
            "across_seeds": across_seeds(runs, args.difference),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        write_json(args.out, result)
        plot_headroom(runs, args.out.with_name(args.out.stem + "_headroom.png"))
    print_across_seeds(result["across_seeds"], result["baselines"])
    print(f"\npeak RSS {result['peak_rss_mb']:.0f} MB; written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
