"""Training, evaluation, gate and registry tasks: each calls the components and records what came out.

Every stage is a Prefect task and a nested MLflow run (params = its config section, per-step
history with steps, final metrics, curves as PNG, the model in HF layout). Models also land in
``artifacts_dir/<stage>/<stage key>/`` (written once, atomically, with a card naming config and
data version), where any later or concurrent run with the same key finds and reuses them.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components.adapters import plots
from components.adapters.tracking import CHALLENGER, CHAMPION, StageRun, flatten
from components.config import Config
from components.data.files import PREFERENCES, file_name, read_jsonl
from components.evaluation.gate import decide_report
from components.evaluation.overoptimisation import overoptimisation_fit, shipped_iteration
from components.evaluation.report import evaluate_policies, format_budgets, format_table, reward_model_gold_accuracy
from components.io import write_json
from components.models.builders import load_causal_lm
from components.models.ensemble import load_reward_model
from components.models.saving import CARD, save_model, stage_key
from components.models.stage_store import StageStore
from components.models.tokenizer import words_of
from components.training import recipe
from components.training.comparisons import Ranker
from components.training.loop import NonFiniteError
from flows import ppo_worker
from flows.data_stages import checked_vocabulary, save_comparisons
from flows.environment import environment_for
from flows.launcher import AccelerateProfile, LaunchError, accelerate_command, run_logged
from flows.ppo_worker import read_result, write_job
from flows.run_context import PreparedData, RunContext, Trained
from flows.tracking_tasks import Tracking

CODE_ROOT = Path(__file__).resolve().parent.parent
LOSS_CURVES = ["loss", "accuracy", "margin", "likelihood", "unlikelihood", "reward_accuracy", "grad_norm"]


@contextmanager
def recorded(run: StageRun):
    """Close the stage's MLflow run FAILED (with the reason as a tag) if the stage raises."""
    try:
        yield run
    except NonFiniteError as error:
        run.set_tags({"non_finite": str(error)})
        run.finish("FAILED")
        raise
    except BaseException as error:
        run.set_tags({"error": f"{type(error).__name__}: {error}"[:5000]})
        run.finish("FAILED")
        raise
    run.finish()


def record_stage(run: StageRun, section, result: recipe.StageResult, step_key: str = "step") -> None:
    """The steps the stage did not log itself while it ran (launched PPO logs live) are logged here."""
    run.log_params(flatten(section.model_dump(mode="json")))
    first, end = result.logged_steps
    run.log_history([row for row in result.history if not first <= row[step_key] < end], step_key)
    run.log_metrics({**result.metrics, "seconds": result.seconds}, step=len(result.history))
    if result.history:
        run.log_figure(plots.curves(result.history, LOSS_CURVES, x=step_key), "plots/curves.png")


def save_stage_model(ctx: RunContext, directory: Path, name: str, result: recipe.StageResult) -> None:
    card = {
        "stage": name,
        "stage_key": result.key,
        "config": ctx.cfg.model_dump(mode="json"),
        "data_version": ctx.data.version,
        "metrics": result.metrics,
        "history": result.history,
        "seconds": result.seconds,
    }
    save_model(result.model, ctx.tokenizer, directory, card)


def log_stage_model(ctx: RunContext, run: StageRun, name: str, result: recipe.StageResult) -> None:
    if ctx.cfg.tracking.log_models:
        run.log_artifacts(StageStore(ctx.root).path(stage_home(ctx.cfg, name), result.key), f"model/{name}")


def stage_home(cfg: Config, name: str) -> str:
    """Where a stage's outputs live, one directory per key under it."""
    return f"{cfg.artifacts_dir}/{name}"


def key_for(ctx: RunContext, name: str, section, *upstream: str) -> str:
    return stage_key(
        stage=name,
        data=ctx.data.md5,
        section=section.model_dump(mode="json"),
        model=ctx.cfg.model.model_dump(mode="json"),
        seed=ctx.cfg.seed,
        upstream=list(upstream),
    )


def waiting_for(name: str, key: str):
    return lambda: get_run_logger().info("%s: another run is computing key %s; waiting to reuse its result", name, key)


def reuse_or_compute(
    ctx: RunContext,
    run: StageRun,
    name: str,
    home: str,
    key: str,
    load: Callable[[Path], Any],
    compute: Callable[[], recipe.StageResult],
    save: Callable[[Path, recipe.StageResult], None],
    finished: Callable[[], None] | None = None,
) -> recipe.StageResult:
    """Reuse the stage's saved output when its key matches (data, config section and upstream stages unchanged),
    else compute and ``save`` it. The key is held meanwhile, so a concurrent run with the same key waits and
    reuses; ``finished`` runs while it is still held, after the save."""
    store = StageStore(ctx.root)
    with store.claim(home, key, waiting_for(name, key)) as directory:
        card = store.finished(home, key) if ctx.cfg.orchestration.reuse_finished_stages else None
        if card:
            get_run_logger().info("%s: reusing the finished stage in %s", name, directory)
            store.touch(home, key)
            run.set_tags({"reused": "true", "stage_key": key})
            return recipe.StageResult(load(directory), card["metrics"], card.get("history", []), 0.0, key, reused=True)
        result = compute()
        result.key = key
        run.set_tags({"reused": "false", "stage_key": key})
        save(directory, result)
        if finished is not None:
            finished()
    return result


def train_or_reuse(
    ctx: RunContext, run: StageRun, name: str, key: str, loader, train, finished=None
) -> recipe.StageResult:
    """``reuse_or_compute`` for a stage that trains a model, saved in HF layout with its card."""

    def save(directory: Path, result: recipe.StageResult) -> None:
        save_stage_model(ctx, directory, name, result)

    return reuse_or_compute(ctx, run, name, stage_home(ctx.cfg, name), key, loader, train, save, finished)


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
            lambda: recipe.sft_stage(
                cfg, ctx.tokenizer, ctx.data.demonstrations, log=_progress("sft", 10 * cfg.sft.log_every)
            ),
        )
        record_stage(run, cfg.sft, result)
        log_stage_model(ctx, run, "sft", result)
    return result


@task(name="collect comparisons", cache_policy=NO_CACHE)
def comparisons_task(ctx: RunContext, sft: recipe.StageResult) -> recipe.StageResult:
    """InstructGPT's comparisons from SFT samples, ranked by the labeller and validated by Great Expectations
    before use; or the static preference file."""
    cfg = ctx.cfg
    if cfg.comparisons.source == "static":
        rows = ctx.data.preferences
        return recipe.StageResult(rows, {"pairs": len(rows)}, key=key_for(ctx, "comparisons", cfg.comparisons))
    rank = labeller(ctx, "labeler")
    key = key_for(ctx, "comparisons", cfg.comparisons, cfg.validation.model_dump_json(), sft.key)
    reports = []

    def collect() -> recipe.StageResult:
        label = recipe.comparison_labeller(cfg, rank, ctx.data.demonstrations)
        return recipe.comparisons_stage(cfg, ctx.tokenizer, sft.model, ctx.data.train_prompts, label)

    def save(directory: Path, result: recipe.StageResult) -> None:
        report = save_comparisons(
            result.model,
            directory,
            cfg.validation,
            checked_vocabulary(cfg),
            Path(ctx.root) / cfg.validation.report_dir / "comparisons" / key,
            frozenset(ctx.data.eval_prompts),
        )
        reports.append(report)
        write_json(directory / CARD, {"stage": "comparisons", "stage_key": key, "metrics": result.metrics})

    def load(directory: Path) -> list[dict]:
        return [r.data for r in read_jsonl(directory / file_name(PREFERENCES), PREFERENCES)]

    with recorded(ctx.tracking.stage("comparisons")) as run:
        result = reuse_or_compute(ctx, run, "comparisons", cfg.comparisons.dir, key, load, collect, save)
        run.log_params(flatten(cfg.comparisons.model_dump(mode="json")))
        run.log_metrics({**result.metrics, "seconds": result.seconds})
        for report in reports:
            run.log_text(report.summary(), "validation/summary.txt")
        run.log_artifacts(StageStore(ctx.root).path(cfg.comparisons.dir, key), "comparisons")
    return result


@task(name="reward model", cache_policy=NO_CACHE)
def reward_task(ctx: RunContext, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("reward_model")) as run:
        key = key_for(ctx, "reward_model", cfg.reward, sft.key, comparisons.key)
        _, valid = recipe.labelled_split(cfg, comparisons.model)

        def train():
            result = recipe.reward_stage(
                cfg,
                ctx.tokenizer,
                sft.model,
                comparisons.model,
                ctx.data.train_prompts,
                log=_progress("reward model", 10 * cfg.reward.log_every),
            )
            if valid and ctx.environment is not None:
                result.metrics["accuracy_gold"] = reward_model_gold_accuracy(
                    result.model, ctx.tokenizer, valid, cfg.model, ctx.environment.gold
                )
            return result

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
            lambda: recipe.baseline_stage(
                cfg,
                name,
                ctx.tokenizer,
                sft.model,
                comparisons.model,
                log=_progress(name, 10 * section.log_every),
                make_ranker=selection_labeller(ctx),
            ),
        )
        record_stage(run, section, result)
        log_stage_model(ctx, run, name, result)
    return result


def _progress(stage: str, every: int, total: int | None = None):
    """Periodic progress lines in the run log (terminal and UI show them while the stage runs)."""
    logger = get_run_logger()

    def log(step: int, entry: dict) -> None:
        if step % every == 0 or (total is not None and step == total - 1):
            shown = ", ".join(
                f"{k} {v:.3f}"
                for k, v in entry.items()
                if k in ("rm_score", "kl", "gold", "loss", "accuracy") and isinstance(v, float)
            )
            logger.info("%s step %d%s: %s", stage, step + 1, f"/{total}" if total else "", shown)

    return log


@task(name="PPO", cache_policy=NO_CACHE)
def ppo_task(
    ctx: RunContext, sft: recipe.StageResult, reward_model: recipe.StageResult, comparisons: recipe.StageResult
) -> recipe.StageResult:
    """PPO under `accelerate launch` with the configured profile; the ranks' logs stream into this task's log.
    The snapshot the labeller prefers on the held-out slice ships."""
    cfg = ctx.cfg
    with recorded(ctx.tracking.stage("ppo")) as run:
        profile = AccelerateProfile.read(code_path(cfg.distributed.accelerate_config))
        processes = cfg.distributed.num_processes or profile.num_processes
        # each rank samples its own rollouts, so the process count is part of what the policy depends on
        key = key_for(
            ctx, "ppo", cfg.ppo, sft.key, reward_model.key, f"processes={processes}", *selection_depends_on(cfg)
        )
        # a killed run's re-run continues from the last checkpoint of the same key
        checkpoints = Path(ctx.root) / cfg.artifacts_dir / ".checkpoints" / f"ppo-{key}"
        run.set_tags({"accelerate_config": cfg.distributed.accelerate_config, "processes": processes})
        store = StageStore(ctx.root)
        inputs = {
            "sft": store.path(stage_home(cfg, "sft"), sft.key),
            "reward_model": store.path(stage_home(cfg, "reward_model"), reward_model.key),
        }
        result = train_or_reuse(
            ctx,
            run,
            "ppo",
            key,
            load_causal_lm,
            lambda: recipe.select_candidate(
                cfg,
                launched_ppo(ctx, run, profile, inputs, checkpoints),
                ppo_worker.read_snapshots(ppo_worker.snapshot_dir(None, checkpoints)),
                ctx.tokenizer,
                comparisons.model,
                selection_labeller(ctx),
                unit="iteration",
            ),
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


def selection_depends_on(cfg: Config) -> list[str]:
    """What a stage that ships its labeller-selected snapshot depends on besides its own section."""
    return [cfg.selection.model_dump_json(), f"held_out={cfg.reward.valid_fraction}"]


def labeller(ctx: RunContext, stream: str) -> Ranker | None:
    """The environment's labeller on its own noise stream; none for user data."""
    return ctx.environment.labeller(stream) if ctx.environment is not None else None


def selection_labeller(ctx: RunContext) -> Callable[[], Ranker] | None:
    """A fresh labeller per candidate snapshot, every one with the same noise (common random numbers); none for
    user data, where the last snapshot ships."""
    if ctx.environment is None:
        return None
    return lambda: labeller(ctx, "selection")


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


def code_path(path: str) -> Path:
    """Infra files (accelerate profiles) are read from the code checkout, wherever the data root is."""
    return Path(path) if Path(path).is_absolute() else CODE_ROOT / path


def launched_ppo(
    ctx: RunContext, run: StageRun, profile: AccelerateProfile, inputs: dict[str, Path], checkpoints: Path
) -> recipe.StageResult:
    """``inputs``: the SFT and reward model directories (finished stage outputs, never rewritten)."""
    cfg = ctx.cfg
    job_dir = ctx.tracking.run_dir / "ppo-job"
    shutil.rmtree(job_dir, ignore_errors=True)
    write_job(
        job_dir,
        cfg,
        inputs["sft"],
        inputs["reward_model"],
        ctx.data.train_prompts,
        ctx.data.demonstrations,
        checkpoints,
        mlflow={"uri": ctx.tracking.tracker.uri, "run_id": run.run_id},
        vocabulary=ctx.vocabulary,
    )
    command, env = accelerate_command(
        profile,
        ppo_worker.__name__,
        ["--job", str(job_dir)],
        cfg.distributed.num_processes,
        cfg.distributed.main_process_port,
    )
    logger = get_run_logger()
    logger.info("PPO: %s", " ".join(command))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        run_logged(
            command,
            cfg.distributed.timeout_seconds,
            logger.info,
            env=env,
            cwd=CODE_ROOT,
            grace=cfg.distributed.kill_grace_seconds,
            tail_lines=cfg.distributed.log_tail_lines,
        )
    except LaunchError as error:
        ppo_worker.raise_recorded_non_finite(job_dir)
        raise LaunchError(f"the PPO launch ({profile.path.name}) failed: {error}") from None
    outcome = read_result(job_dir)
    model = load_causal_lm(job_dir / ppo_worker.POLICY)
    run.set_tags({"mixed_precision": outcome["mixed_precision"], "device": outcome["device"]})
    shutil.rmtree(job_dir, ignore_errors=True)
    return recipe.StageResult(
        model, outcome["metrics"], outcome["history"], outcome["seconds"], logged_steps=tuple(outcome["live_logged"])
    )


def transient(task, task_run, state) -> bool:
    """Retry only what a tracking-server hiccup causes: network and server errors, not our own bugs."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        state.result()
    except (ConnectionError, TimeoutError, requests.exceptions.RequestException):
        return True
    except MlflowException as error:
        return error.get_http_status_code() >= 500
    except BaseException:
        return False
    return False


def mlflow_links(tracking: Tracking, registry: dict) -> dict[str, str]:
    """Where to look: UI links when the store is a server, else the store and ids."""
    uri, run_id, experiment = tracking.tracker.uri, tracking.parent.run_id, tracking.tracker.experiment_id
    if uri.startswith("http"):
        return {
            "pipeline run": f"{uri}/#/experiments/{experiment}/runs/{run_id}",
            "model version": f"{uri}/#/models/{registry['name']}/versions/{registry['version']}",
        }
    return {
        "tracking store": uri,
        "pipeline run": run_id,
        "model version": f"models:/{registry['name']}/{registry['version']}",
    }


@task(name="report", cache_policy=NO_CACHE, retry_condition_fn=transient)
def report(ctx: RunContext, trained: Trained, evaluation: dict, decision: dict, registry: dict) -> str:
    """The flow run's report: evaluation table, decision with reasons, links; and a metrics table."""
    cfg = ctx.cfg
    links = mlflow_links(ctx.tracking, registry)
    stage_times = {name: r.seconds for name, r in trained.models().items()}
    markdown = "\n".join(
        [
            f"# RLHF pipeline: {decision['decision'].upper()}",
            f"profile `{cfg.profile}`, seed {cfg.seed}, data `{ctx.data.md5}`",
            "",
            "## Evaluation",
            "```",
            format_table(evaluation).strip(),
            "```",
            "",
            "## What each policy used",
            "```",
            format_budgets(comparison_terms(ctx, trained)).strip(),
            "```",
            "",
            "## Gate",
            "```",
            decision["summary"],
            "```",
            "",
            "## Registry",
            f"`{registry['name']}` version {registry['version']} ({registry['decision']}); "
            f"champion = {registry['champion'] or 'none'}, challenger = {registry['challenger']}",
            "",
            "## MLflow",
            *(f"- {k}: {v}" for k, v in links.items()),
            "",
            "## Stage seconds (0 = reused)",
            *(f"- {k}: {v:.1f}" for k, v in stage_times.items()),
        ]
    )
    create_markdown_artifact(
        key="pipeline-report", markdown=markdown, description="evaluation, gate decision and where the runs are"
    )
    rows = []
    for mode, block in evaluation.items():
        for name, summary in block["policies"].items():
            win = block["ppo_win_rate"].get(name)
            rows.append(
                {
                    "mode": mode,
                    "policy": name,
                    "gold": round(summary["gold"]["value"], 4),
                    "gold_ci": f"[{summary['gold']['ci'][0]:.3f}, {summary['gold']['ci'][1]:.3f}]",
                    "rm": round(summary["rm"]["value"], 4),
                    "kl": round(summary["kl"], 4) if "kl" in summary else None,
                    "ppo_win_rate": round(win["value"], 4) if win else None,
                    "ppo_win_rate_ci": f"[{win['ci'][0]:.3f}, {win['ci'][1]:.3f}]" if win else None,
                }
            )
    create_table_artifact(key="pipeline-metrics", table=rows, description="every policy under every decoding mode")
    return markdown


def report_with_retries(ctx: RunContext, *args) -> str:
    orchestration = ctx.cfg.orchestration
    retrying = report.with_options(
        retries=orchestration.tracking_retries, retry_delay_seconds=orchestration.tracking_retry_delays
    )
    return retrying(ctx, *args)


def register_with_retries(ctx: RunContext, *args) -> dict:
    orchestration = ctx.cfg.orchestration
    retrying = register.with_options(
        retries=orchestration.tracking_retries, retry_delay_seconds=orchestration.tracking_retry_delays
    )
    return retrying(ctx, *args)


def run_context(cfg: Config, root: str, tracking: Tracking, data: PreparedData) -> RunContext:
    """The context every training task reads; the tokenizer is the local model's, or a word tokenizer over the
    environment's vocabulary (or, for user files and a model from scratch, the words of the data)."""
    environment = environment_for(cfg)
    if environment is None and cfg.comparisons.source == "sft_samples":
        raise ValueError(
            "comparisons.source is 'sft_samples', but nobody labels samples for data.source 'files': "
            "set comparisons.source: static to train the reward model on your preference file"
        )
    vocabulary = None
    if cfg.model.source == "scratch":
        texts = (str(value) for rows in data.rows.values() for row in rows for value in row.values())
        vocabulary = environment.vocabulary if environment is not None else words_of(texts)
    tokenizer = recipe.make_tokenizer(cfg, vocabulary)
    return RunContext(cfg, root, tracking, data, tokenizer, environment, vocabulary)


def train_all(ctx: RunContext) -> Trained:
    sft = sft_task(ctx)
    comparisons = comparisons_task(ctx, sft)
    reward_model = reward_task(ctx, sft, comparisons)
    baselines = {name: baseline_task(ctx, name, sft, comparisons) for name in recipe.SUPERVISED_BASELINES}
    ppo = ppo_task(ctx, sft, reward_model, comparisons)
    return Trained(sft, comparisons, reward_model, ppo, baselines)


@task(name="prune stage outputs", cache_policy=NO_CACHE)
def prune_stage_outputs(ctx: RunContext, trained: Trained) -> list[str]:
    """Keep each stage's ``orchestration.keep_stage_outputs`` most recently used outputs; never this run's."""
    cfg = ctx.cfg
    if cfg.orchestration.keep_stage_outputs is None:
        return []
    store = StageStore(ctx.root)
    homes = {stage_home(cfg, name): {result.key} for name, result in trained.models().items()}
    homes[cfg.comparisons.dir] = {trained.comparisons.key}
    removed = [
        str(path)
        for home, keys in homes.items()
        for path in store.prune(home, cfg.orchestration.keep_stage_outputs, keys)
    ]
    if removed:
        get_run_logger().info("pruned %d old stage output(s): %s", len(removed), ", ".join(removed))
    return removed


def comparison_terms(ctx: RunContext, trained: Trained) -> dict:
    """What makes the comparison fair, for the record: one SFT start and one set of held-out prompts for every
    policy, and each policy's label budget (validation slices and selection labels included) and tuning budget."""
    cfg = ctx.cfg
    eval_prompts = sorted(ctx.data.eval_prompts)
    tuned = {name: cfg.tuning.configurations_per_method for name in ("ppo", *recipe.SUPERVISED_BASELINES)}
    return {
        "sft_start": trained.sft.key,
        "eval_prompts": {"count": len(eval_prompts), "md5": hashlib.md5("\n".join(eval_prompts).encode()).hexdigest()},
        "label_budgets": recipe.label_budgets(cfg, trained.comparisons.model, trained.metrics()),
        "tuning_budgets": {"sft": 0, "best_of_n": 0, **tuned},
        "tuning": cfg.tuning.model_dump(mode="json"),
    }


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext, trained: Trained) -> dict:
    cfg = ctx.cfg
    if ctx.environment is None:
        raise ValueError(
            "evaluation needs a judge: the embedded task's gold judge reads only its own prompts, and there is no "
            "judge for data.source 'files' yet"
        )
    with recorded(ctx.tracking.stage("evaluation")) as run:
        policies = {"sft": trained.sft.model, **{n: r.model for n, r in trained.baselines.items()}}
        policies["ppo"] = trained.ppo.model
        report = evaluate_policies(
            policies,
            ctx.tokenizer,
            ctx.data.eval_prompts,
            cfg.evaluation,
            cfg.model,
            cfg.seed,
            trained.reward_model.model,
            ctx.environment.gold,
            cfg.baselines.best_of_n,
        )
        run.log_params(flatten(cfg.evaluation.model_dump(mode="json")))
        for mode, block in report.items():
            for name, summary in block["policies"].items():
                run.log_metrics(flatten(summary), prefix=f"{mode}.{name}.")
            for name, win in block["ppo_win_rate"].items():
                run.log_metrics(
                    {"value": win["value"], "ci_lo": win["ci"][0], "ci_hi": win["ci"][1]},
                    prefix=f"{mode}.ppo_win_rate.{name}.",
                )
            run.log_figure(plots.win_rates(block, mode), f"plots/win_rates_{mode}.png")
            run.log_table(block["examples"], f"tables/examples_{mode}.json")
            create_table_artifact(
                key=f"examples-{mode}",
                table=block["examples"][: 4 * len(block["policies"])],
                description=f"example responses, {mode} decoding",
            )
        run.log_dict(report, "evaluation.json")
        run.log_dict(comparison_terms(ctx, trained), "budgets.json")
        create_markdown_artifact(key="evaluation", markdown=f"```\n{format_table(report)}\n```")
    return report


@task(name="gate", cache_policy=NO_CACHE)
def gate(ctx: RunContext, trained: Trained, evaluation: dict) -> dict:
    cfg, tracking = ctx.cfg, ctx.tracking
    stage_metrics = trained.metrics()
    report = {
        "data_validation": {
            "success": ctx.data.validation["success"],
            "eval_prompts_in_training": eval_prompts_in_training(ctx.data, trained),
        },
        "non_finite_stages": sorted(name for name, metrics in stage_metrics.items() if _has_non_finite(metrics)),
        "reward_model": {
            key: trained.reward_model.metrics.get(name)
            for key, name in (
                ("accuracy", "valid_accuracy"),
                ("ensemble_size", "ensemble_size"),
                ("member_agreement", "member_agreement"),
            )
        },
        "ppo_history": trained.ppo.history,
        "modes": evaluation,
    }
    decision = decide_report(report, cfg.gate)  # a malformed report is a rejection that says why
    with recorded(tracking.stage("gate")) as run:
        run.log_params(flatten(cfg.gate.model_dump(mode="json")))
        run.log_dict(decision.as_dict(), "gate/decision.json")
        run.set_tags({"gate.decision": decision.label})
        run.log_metrics(
            {
                "promote": float(decision.promote),
                "failed_rules": float(len(decision.failures)),
                **({"score": decision.score} if decision.score is not None else {}),
            }
        )
    tracking.parent.set_tags({"gate.decision": decision.label})
    create_markdown_artifact(key="gate", markdown=f"```\n{decision.summary()}\n```")
    get_run_logger().info(decision.summary())
    return {
        **decision.as_dict(),
        "summary": decision.summary(),
        "promote": decision.promote,
        "reasons_text": [str(r) for r in decision.reasons],
    }


def eval_prompts_in_training(data: PreparedData, trained: Trained) -> int:
    """Held-out prompts among the prompts of the demonstrations and the comparisons (validation refuses such data;
    the gate counts again, on what the stages actually trained on)."""
    trained_on = set(data.train_prompts) | {r["prompt"] for r in trained.comparisons.model}
    return len(set(data.eval_prompts) & trained_on)


def _has_non_finite(metrics: dict) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())


@task(name="register", cache_policy=NO_CACHE, retry_condition_fn=transient)
def register(ctx: RunContext, trained: Trained, decision: dict) -> dict:
    """The PPO policy becomes a new registry version, tagged; the aliases move last."""
    cfg, tracking = ctx.cfg, ctx.tracking
    run = tracking.parent
    model_uri = run.log_policy(trained.ppo.model, ctx.tokenizer, "policy")
    evaluation_tags = {
        f"gate.{r['mode']}.{r['rule']}" if r["mode"] else f"gate.{r['rule']}": r["detail"] for r in decision["reasons"]
    }
    version = tracking.tracker.register(
        model_uri,
        run,
        {
            "data.md5": ctx.data.md5,
            "profile": cfg.profile,
            "seed": cfg.seed,
            **{k.replace(" ", "_"): v[:5000] for k, v in evaluation_tags.items()},
        },
    )
    champion_note = tracking.tracker.record_decision(
        version, decision["decision"], decision["reasons_text"], decision["score"]
    )
    get_run_logger().info("registry: %s", champion_note)
    return {
        "name": cfg.tracking.registered_model,
        "version": version,
        "decision": decision["decision"],
        "model_uri": model_uri,
        "champion": tracking.tracker.alias_version(CHAMPION),
        "challenger": tracking.tracker.alias_version(CHALLENGER),
        "champion_note": champion_note,
    }
