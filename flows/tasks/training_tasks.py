"""The training tasks of the flow (SFT, comparisons, reward model, supervised baselines, PPO), each a Prefect task
and a nested MLflow run that reads the run's context and hands on a typed result. Each runs where the run's profile
puts every stage: in the flow's own process on its runtime, or under `accelerate launch`."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from components.adapters import plots
from components.adapters.data_stages import checked_vocabulary, save_comparisons
from components.adapters.tracking import StageRun, flatten
from components.config import Config
from components.data.files import PREFERENCES, file_name, read_jsonl
from components.evaluation.judges import judge_facts, make_judge
from components.evaluation.overoptimisation import overoptimisation_fit, shipped_iteration
from components.io import write_json
from components.models.builders import load_causal_lm
from components.models.ensemble import load_reward_model
from components.models.saving import CARD, stage_key
from components.models.stage_store import StageStore
from components.models.tokenizer import words_of
from components.training import recipe
from components.training.rounds import labeller_stream, next_group, tagged
from flows.execution import deadlines, ppo_worker, runtimes, stage_calls, stage_launch
from flows.execution.handoff import task
from flows.execution.launcher import AccelerateProfile
from flows.execution.ppo_worker import PPOJob, read_result
from flows.execution.progress import logged_with_bars
from flows.execution.run_context import PreparedData, RunContext, Trained
from flows.execution.run_tracking import Tracking
from flows.execution.runtimes import run_profile
from flows.execution.stage_runs import (
    SavedAs,
    key_for,
    log_stage_model,
    record_stage,
    recorded,
    reuse_or_compute,
    stage_home,
    train_or_reuse,
)
from flows.execution.task_choice import environment_for
from flows.tasks import decoding_reuse


@task(name="SFT", cache_policy=NO_CACHE)
def sft_task(ctx: RunContext) -> recipe.StageResult:
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("sft")) as run:
        result = train_or_reuse(
            ctx,
            run,
            "sft",
            key_for(ctx, "sft", cfg.sft),
            load_causal_lm,
            lambda: stage_launch.run_stage(
                ctx, "sft", {"demonstrations": ctx.data.demonstrations}, {}, 10 * cfg.sft.log_every
            ),
        )
        record_stage(run, cfg.sft, result)
        log_stage_model(ctx, run, "sft", result)
    return result


@task(name="collect comparisons", cache_policy=NO_CACHE)
def comparisons_task(
    ctx: RunContext,
    sampler: recipe.StageResult,
    seen: list[dict] | None = None,
    track: str = "ppo",
    by_people: list[dict] | None = None,
) -> recipe.StageResult:
    """InstructGPT's comparisons from ``sampler``'s samples (SFT's; in a later labelling round the ``track``'s
    current policy, after the ``seen`` rows of earlier rounds), ranked by the labeller, or the rows people made of
    them (``by_people``), validated by Great Expectations before use; or the static preference file."""
    cfg = ctx.cfg
    if cfg.comparisons.source == "static":
        rows = ctx.data.preferences
        return recipe.StageResult(rows, {"pairs": len(rows)}, key=key_for(ctx, "comparisons", cfg.comparisons))
    r = ctx.round_index
    in_round = [] if r is None else [f"round={r}", f"track={track}", f"after={len(seen or [])}"]
    if by_people is not None:
        in_round.append(f"labels={stage_key(rows=by_people)}")
    key = key_for(ctx, "comparisons", cfg.comparisons, cfg.validation.model_dump_json(), sampler.key, *in_round)
    reports = []

    def collect() -> recipe.StageResult:
        if by_people is not None:
            rows = tagged(by_people, r, next_group(seen or []))
            return recipe.StageResult(rows, {"pairs": len(rows), "prompts": len({row["group"] for row in rows})})
        args = {
            "stream": "labeler" if r is None else labeller_stream(track, r),
            "demonstrations": ctx.data.demonstrations,
            "train_prompts": ctx.data.train_prompts,
            "round_index": r,
            "group_offset": next_group(seen or []),
        }
        return stage_launch.run_stage(ctx, "comparisons", args, {"sampler": sampler})

    def save(directory: Path, result: recipe.StageResult) -> None:
        report = save_comparisons(
            result.model,
            directory,
            cfg.validation,
            checked_vocabulary(cfg, environment_for(cfg)),
            Path(ctx.root) / cfg.validation.report_dir / "comparisons" / key,
            frozenset(ctx.data.eval_prompts),
        )
        reports.append(report)
        card = {"stage": "comparisons", "stage_key": key, "metrics": result.metrics, "runtime": result.placement}
        write_json(directory / CARD, card)

    def load(directory: Path) -> list[dict]:
        return [r.data for r in read_jsonl(directory / file_name(PREFERENCES), PREFERENCES)]

    with recorded(ctx.tracking.stage("comparisons" if track == "ppo" else f"comparisons_{track}", r)) as run:
        result = reuse_or_compute(ctx, run, "comparisons", cfg.comparisons.dir, key, collect, SavedAs(save, load))
        run.log_params(flatten(cfg.comparisons.model_dump(mode="json")))
        run.set_tags({f"runtime.{k}": v for k, v in result.placement.items()})
        run.log_metrics({**result.metrics, "seconds": result.seconds})
        for report in reports:
            run.log_text(report.summary(), "validation/summary.txt")
        run.log_artifacts(StageStore(ctx.root).path(cfg.comparisons.dir, key), "comparisons")
    return result


@task(name="reward model", cache_policy=NO_CACHE)
def reward_task(ctx: RunContext, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("reward_model", ctx.round_index)) as run:
        key = key_for(ctx, "reward_model", cfg.reward, sft.key, comparisons.key)

        def train():
            args = {"comparisons": comparisons.model, "train_prompts": ctx.data.train_prompts}
            if cfg.reward.model is not None:  # its own transformer, SFT-trained first
                args["demonstrations"] = ctx.data.demonstrations
            return stage_launch.run_stage(ctx, "reward_model", args, {"sft": sft}, 10 * cfg.reward.log_every)

        result = train_or_reuse(ctx, run, "reward_model", key, load_reward_model, train)
        record_stage(run, cfg.reward, result)
        log_stage_model(ctx, run, "reward_model", result)
    return result


@task(name="supervised baseline", cache_policy=NO_CACHE, task_run_name="baseline {name}")
def baseline_task(
    ctx: RunContext, name: str, sft: recipe.StageResult, comparisons: recipe.StageResult
) -> recipe.StageResult:
    cfg = ctx.cfg
    section = getattr(cfg.baselines, name)
    with recorded(ctx.tracking.stage(f"baseline_{name}")) as run:
        # the baselines train on the reward model's training split and ship their labeller-selected snapshot
        key = key_for(ctx, name, section, sft.key, comparisons.key, *selection_depends_on(cfg))
        result = train_or_reuse(
            ctx,
            run,
            name,
            key,
            load_causal_lm,
            lambda: stage_launch.run_stage(
                ctx,
                "baseline",
                {"name": name, "comparisons": comparisons.model},
                {"sft": sft},
                10 * section.log_every,
            ),
        )
        record_stage(run, section, result)
        log_stage_model(ctx, run, name, result)
    return result


@task(name="iterative DPO", cache_policy=NO_CACHE, task_run_name="iterative DPO round {ctx.round_index}")
def iterative_dpo_task(
    ctx: RunContext,
    sft: recipe.StageResult,
    previous: recipe.StageResult,
    round_comparisons: recipe.StageResult,
    seen: recipe.StageResult,
) -> recipe.StageResult:
    """The DPO baseline of labelling rounds: ``previous`` (SFT in round 1) trained on this round's labels of its own
    samples; ``seen``: every round's labels so far, whose held-out slice the last round's selection reads."""
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("baseline_dpo", ctx.round_index)) as run:
        key = key_for(
            ctx,
            "dpo",
            cfg.baselines.dpo,
            sft.key,
            previous.key,
            round_comparisons.key,
            seen.key,
            f"round={ctx.round_index}",
            *selection_depends_on(cfg),
        )
        result = train_or_reuse(
            ctx,
            run,
            "dpo",
            key,
            load_causal_lm,
            lambda: stage_launch.run_stage(
                ctx,
                "iterative_dpo",
                {"round_rows": round_comparisons.model, "seen_rows": seen.model, "round_index": ctx.round_index},
                {"sft": sft, "previous": previous},
                10 * cfg.baselines.dpo.log_every,
            ),
        )
        record_stage(run, cfg.baselines.dpo, result)
        log_stage_model(ctx, run, "dpo", result)
    return result


@task(name="PPO", cache_policy=NO_CACHE)
def ppo_task(
    ctx: RunContext,
    sft: recipe.StageResult,
    reward_model: recipe.StageResult,
    comparisons: recipe.StageResult,
    start: recipe.StageResult | None = None,
) -> recipe.StageResult:
    """PPO under `accelerate launch` with the configured profile; the ranks' logs stream into this task's log.
    From ``start`` (the last labelling round's policy) when given, else from SFT; the KL reference is SFT.
    The snapshot the labeller prefers on the held-out slice ships (before the last round: the last iteration)."""
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("ppo", ctx.round_index)) as run:
        profile = run_profile(cfg)
        processes = cfg.distributed.num_processes or profile.num_processes
        # each rank samples its own rollouts, so the process count is part of what the policy depends on
        key = key_for(
            ctx,
            "ppo",
            cfg.ppo,
            sft.key,
            reward_model.key,
            f"processes={processes}",
            *selection_depends_on(cfg),
            *monitor_depends_on(cfg),
            *rl_depends_on(cfg),
            *([f"start={start.key}"] if start is not None else []),
        )
        # a killed run's re-run continues from the last checkpoint of the same key
        checkpoints = Path(ctx.root) / cfg.artifacts_dir / ".checkpoints" / f"ppo-{key}"
        run.set_tags(
            {
                "accelerate_config": cfg.distributed.accelerate_config,
                "processes": processes,
                "rl.algorithm": cfg.rl.algorithm,
            }
        )
        store = StageStore(ctx.root)
        inputs = {
            "sft": store.path(stage_home(cfg, "sft"), sft.key),
            "reward_model": store.path(stage_home(cfg, "reward_model"), reward_model.key),
            **({"start": store.path(stage_home(cfg, "ppo"), start.key)} if start is not None else {}),
        }
        result = train_or_reuse(
            ctx,
            run,
            "ppo",
            key,
            load_causal_lm,
            lambda: selected_ppo(ctx, launched_ppo(ctx, run, profile, inputs, checkpoints), checkpoints, comparisons),
            finished=lambda: shutil.rmtree(checkpoints, ignore_errors=True),  # the saved model supersedes them
        )
        record_stage(run, cfg.ppo, result, step_key="iteration")
        run.log_figure(plots.ppo_curves(result.history), "plots/ppo_curves.png")
        if ctx.environment is not None:  # the gold monitor's points: Gao et al.'s curves, for the record
            shipped = shipped_iteration(result.history, int(result.metrics.get("selection.chosen_iteration", -1)))
            fit = overoptimisation_fit(result.history)
            run.log_metrics(curve_metrics(fit, result.history, shipped))
            run.log_figure(plots.overoptimisation(result.history, fit, shipped), "plots/overoptimisation.png")
        log_stage_model(ctx, run, "ppo", result)
    return result


def selected_ppo(
    ctx: RunContext, result: recipe.StageResult, checkpoints: Path, comparisons: recipe.StageResult
) -> recipe.StageResult:
    """The PPO snapshot the labeller prefers on the held-out slice (before the last round: the last iteration), its
    samples decoded where the flow's own process puts models (the GPU when there is one)."""
    cfg = ctx.cfg
    snapshots = ppo_worker.read_snapshots(ppo_worker.snapshot_dir(None, checkpoints))
    ranker = stage_calls.selection_ranker(ctx.environment) if ctx.last_round else None
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        return recipe.select_candidate(
            cfg, result, snapshots, ctx.tokenizer, comparisons.model, ranker, unit="iteration", runtime=runtime
        )


def rl_depends_on(cfg: Config) -> list[str]:
    """The RL algorithm, where it is not PPO (whose result the ``rl`` section's other settings do not change)."""
    if cfg.rl.algorithm == "ppo":
        return []
    return [f"rl={cfg.rl.algorithm}:k={cfg.rl.group_size}:{cfg.rl.grpo_variant if cfg.rl.algorithm == 'grpo' else ''}"]


def monitor_depends_on(cfg: Config) -> list[str]:
    """A judge other than gold that scores PPO's iterations: its scores are in the stage's history (the gate's trend
    rule reads them), so a different judge is a different stage."""
    judge = cfg.evaluation.judge
    if judge.kind == "gold" or not judge_facts(judge)["scores_ppo_iterations"]:
        return []
    return [f"judge={judge.kind}:{judge.model_dir or judge.entry_point}"]


def selection_depends_on(cfg: Config) -> list[str]:
    """What a stage that ships its labeller-selected snapshot depends on besides its own section."""
    return [cfg.selection.model_dump_json(), f"held_out={cfg.reward.valid_fraction}"]


def curve_metrics(fit: dict, history: list[dict], shipped_iteration: int | None) -> dict[str, float]:
    """The fitted curves' coefficients and peaks, and where the shipped policy sits, as MLflow metrics."""
    metrics: dict[str, float] = {}
    for name in ("gold", "proxy"):
        curve = fit.get(name)
        if curve is None:
            continue
        metrics.update({f"gao.{name}.alpha": curve.alpha, f"gao.{name}.beta": curve.beta, f"gao.{name}.r2": curve.r2})
        if curve.peak_kl is not None:
            metrics.update({f"gao.{name}.peak_kl": curve.peak_kl, f"gao.{name}.peak_change": curve.peak_value})
    shipped = next((h for h in history if h["iteration"] == shipped_iteration), None)
    if shipped is not None:
        metrics.update({"gao.shipped_iteration": float(shipped_iteration), "gao.shipped_kl": shipped["kl"]})
    return metrics


def launched_ppo(
    ctx: RunContext, run: StageRun, profile: AccelerateProfile, inputs: dict[str, Path], checkpoints: Path
) -> recipe.StageResult:
    """``inputs``: the SFT, reward model and (optionally) start policy directories (finished stage outputs, never
    rewritten)."""
    cfg = ctx.cfg
    job_dir = ctx.tracking.run_dir / "ppo-job"
    shutil.rmtree(job_dir, ignore_errors=True)
    PPOJob(
        cfg,
        inputs["sft"],
        inputs["reward_model"],
        ctx.data.train_prompts,
        ctx.data.demonstrations,
        checkpoints,
        mlflow={"uri": ctx.tracking.tracker.uri, "run_id": run.run_id},
        vocabulary=ctx.vocabulary,
        start_dir=inputs.get("start"),
    ).write(job_dir)
    logger = get_run_logger()
    if cfg.distributed.launch == "auto" and profile.single_process(cfg.distributed.num_processes):
        logger.info("PPO: one process (%s), in this process", profile.path.name)
        deadline = deadlines.progress_deadline("ppo", cfg.timeouts.progress_seconds, cfg.distributed.kill_grace_seconds)
        with deadline as beat:
            ppo_worker.run_in_process(job_dir, logged_with_bars(logger.info), profile.use_cpu, beat)
    else:
        stage_launch.accelerate_launch(ctx, profile, job_dir)
    outcome = read_result(job_dir)
    model = load_causal_lm(job_dir / ppo_worker.POLICY)
    shutil.rmtree(job_dir, ignore_errors=True)
    return recipe.StageResult(
        model,
        outcome["metrics"],
        outcome["history"],
        outcome["seconds"],
        logged_steps=tuple(outcome["live_logged"]),
        placement={
            "device": outcome["device"],
            "processes": outcome["world_size"],
            "mixed_precision": outcome["mixed_precision"],
            "threads_per_process": outcome["threads_per_process"],
            "peak_memory_bytes": outcome["rank_peak_memory_bytes"],  # in process: the flow's peak so far
        },
    )


def run_context(cfg: Config, root: str, tracking: Tracking, data: PreparedData) -> RunContext:
    """The context every training task reads; the tokenizer is the local model's, or a word tokenizer over the
    environment's vocabulary (or, for user files and a model from scratch, the words of the data)."""
    environment = environment_for(cfg)
    # a judge that cannot judge stops the run before any training (the optimised RM is refused when it exists)
    make_judge(cfg.evaluation.judge, cfg.model, environment.gold if environment is not None else None, optimised=[])
    vocabulary = None
    if cfg.model.source == "scratch":
        texts = (str(value) for rows in data.rows.values() for row in rows for value in row.values())
        vocabulary = environment.vocabulary if environment is not None else words_of(texts)
    tokenizer = recipe.make_tokenizer(cfg, vocabulary)
    return RunContext(cfg, root, tracking, data, tokenizer, environment, vocabulary)


def plan_memory(ctx: RunContext) -> None:
    """Every stage's memory per rank, planned before the first one trains: one that cannot fit its device stops the
    run here (exit 2, with the numbers). The plan is in the log and in the run's ``memory_plan.json``."""
    plan = runtimes.plan_memory(ctx.cfg, ctx.tokenizer)
    get_run_logger().info("memory plan per rank: %s", "; ".join(f"{s.stage} {s.describe()}" for s in plan))
    record = {s.stage: {**dataclasses.asdict(s), "total": s.total} for s in plan}
    ctx.tracking.parent.log_dict(record, "memory_plan.json")


@dataclass(frozen=True)
class FlowStages:
    """The recipe's stages as this flow's tasks: each reused when finished before, else trained where the run's
    profile puts it, and recorded."""

    ctx: RunContext

    def sft(self) -> recipe.StageResult:
        return sft_task(self.ctx)

    def comparisons(self, sft: recipe.StageResult) -> recipe.StageResult:
        return comparisons_task(self.ctx, sft)

    def reward_model(self, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
        return reward_task(self.ctx, sft, comparisons)

    def baseline(self, name: str, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
        return baseline_task(self.ctx, name, sft, comparisons)

    def rl(
        self, sft: recipe.StageResult, reward_model: recipe.StageResult, comparisons: recipe.StageResult
    ) -> recipe.StageResult:
        return ppo_task(self.ctx, sft, reward_model, comparisons)


def train_all(ctx: RunContext) -> Trained:
    """One labelling round: the recipe (``recipe.train_all``) as this flow's tasks (see flows.tasks.labelling_rounds
    for more rounds)."""
    made = recipe.train_all(FlowStages(ctx))
    return Trained(made.sft, made.comparisons, made.reward_model, made.rl, made.baselines)


@task(name="prune stage outputs", cache_policy=NO_CACHE)
def prune_stage_outputs(ctx: RunContext, trained: Trained) -> list[str]:
    """Keep each stage's ``orchestration.keep_stage_outputs`` most recently used outputs; never this run's."""
    cfg = ctx.cfg
    if cfg.orchestration.keep_stage_outputs is None:
        return []
    store = StageStore(ctx.root)
    homes: dict[str, set[str]] = {}
    for made in [trained.models(), *trained.rounds]:
        for name, result in made.items():
            home = cfg.comparisons.dir if name.startswith("comparisons") else stage_home(cfg, name)
            homes.setdefault(home, set()).add(result.key)
    homes.setdefault(cfg.comparisons.dir, set()).add(trained.comparisons.key)
    for home, key in decoding_reuse.decodings_in_use(ctx, trained).items():
        homes.setdefault(home, set()).add(key)
    removed = [
        str(path)
        for home, keys in homes.items()
        for path in store.prune(home, cfg.orchestration.keep_stage_outputs, keys)
    ]
    if removed:
        get_run_logger().info("pruned %d old stage output(s): %s", len(removed), ", ".join(removed))
    return removed
