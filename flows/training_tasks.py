"""Training, evaluation, gate and registry tasks: each calls the components and records what came out.

Every stage is a Prefect task and a nested MLflow run (params = its config section, per-step
history with steps, final metrics, curves as PNG, the model in HF layout). Models also land in
``artifacts_dir/<stage>`` (written atomically, with a card naming config and data version).
"""
from __future__ import annotations

import math
import statistics
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components.config import Config
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES
from components.data.gold_judge import gold_score
from components.data.lexicon import VOCABULARY
from components.evaluation.gate import decide
from components.evaluation.report import evaluate_policies
from components.models.saving import save_model
from components.tracking import plots
from components.tracking.mlflow_store import CHALLENGER, CHAMPION, StageRun, flatten
from components.training import recipe
from components.training.comparisons import save_comparisons
from components.training.loop import NonFiniteError
from components.training.reward import gold_accuracy, score_comparisons
from flows.tracking_tasks import Tracking

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
    run.log_params(flatten(section.model_dump(mode="json")))
    run.log_history(result.history, step_key)
    run.log_metrics({**result.metrics, "seconds": result.seconds}, step=len(result.history))
    if result.history:
        run.log_figure(plots.curves(result.history, LOSS_CURVES, x=step_key), "plots/curves.png")


def keep_model(cfg: Config, root: str, tracking: Tracking, run: StageRun, name: str, model, tokenizer, data: dict, metrics: dict) -> None:
    card = {"stage": name, "config": cfg.model_dump(mode="json"), "data_version": data["version"], "metrics": metrics}
    directory = save_model(model, tokenizer, Path(root) / cfg.artifacts_dir / name, card)
    if cfg.tracking.log_models:
        run.log_artifacts(directory, f"model/{name}")


@task(name="SFT", cache_policy=NO_CACHE)
def sft_task(cfg: Config, root: str, tracking: Tracking, data: dict, tokenizer) -> recipe.StageResult:
    with recorded(tracking.stage("sft")) as run:
        result = recipe.sft_stage(cfg, tokenizer, data["rows"][DEMONSTRATIONS])
        record_stage(run, cfg.sft, result)
        keep_model(cfg, root, tracking, run, "sft", result.model, tokenizer, data, result.metrics)
    return result


@task(name="collect comparisons", cache_policy=NO_CACHE)
def comparisons_task(cfg: Config, root: str, tracking: Tracking, data: dict, tokenizer, sft) -> list[dict]:
    """InstructGPT's comparisons from SFT samples (validated by GE before use), or the static file."""
    if cfg.comparisons.source == "static":
        return data["rows"][PREFERENCES]
    with recorded(tracking.stage("comparisons")) as run:
        train_prompts = sorted({r["prompt"] for r in data["rows"][DEMONSTRATIONS]})
        result = recipe.comparisons_stage(cfg, tokenizer, sft, train_prompts, recipe.labeler_ranker(cfg))
        rows = result.model
        eval_prompts = frozenset(r["prompt"] for r in data["rows"][EVAL_PROMPTS])
        vocabulary = VOCABULARY if cfg.validation.check_vocabulary else None
        report = save_comparisons(
            rows, Path(root) / cfg.comparisons.dir, cfg.validation, vocabulary,
            Path(root) / cfg.validation.report_dir / "comparisons", eval_prompts,
        )
        run.log_params(flatten(cfg.comparisons.model_dump(mode="json")))
        run.log_metrics({**result.metrics, "seconds": result.seconds})
        run.log_text(report.summary(), "validation/summary.txt")
        run.log_artifacts(Path(root) / cfg.comparisons.dir, "comparisons")
    return rows


@task(name="reward model", cache_policy=NO_CACHE)
def reward_task(cfg: Config, root: str, tracking: Tracking, data: dict, tokenizer, sft, comparisons: list[dict]) -> recipe.StageResult:
    with recorded(tracking.stage("reward_model")) as run:
        train_prompts = sorted({r["prompt"] for r in data["rows"][DEMONSTRATIONS]})
        result = recipe.reward_stage(cfg, tokenizer, sft, comparisons, train_prompts)
        valid = recipe.reward_valid_rows(cfg, comparisons)
        if valid and cfg.data.source == "synthetic":
            chosen_r, rejected_r = score_comparisons(result.model, tokenizer, valid, cfg.model)
            result.metrics["accuracy_gold"] = gold_accuracy(
                chosen_r, rejected_r,
                [gold_score(c["prompt"], c["chosen"], c.get("chosen_ended", True)) for c in valid],
                [gold_score(c["prompt"], c["rejected"], c.get("rejected_ended", True)) for c in valid],
            )
        record_stage(run, cfg.reward, result)
        keep_model(cfg, root, tracking, run, "reward_model", result.model, tokenizer, data, result.metrics)
    return result


@task(name="supervised baseline", cache_policy=NO_CACHE, task_run_name="baseline {name}")
def baseline_task(cfg: Config, root: str, tracking: Tracking, data: dict, tokenizer, sft, comparisons: list[dict], name: str) -> recipe.StageResult:
    with recorded(tracking.stage(f"baseline_{name}")) as run:
        result = recipe.baseline_stage(cfg, name, tokenizer, sft, comparisons)
        record_stage(run, getattr(cfg.baselines, name), result)
        keep_model(cfg, root, tracking, run, name, result.model, tokenizer, data, result.metrics)
    return result


def _gold_monitor(prompts: list[str], texts: list[str], ended: list[bool]) -> dict[str, float]:
    """The gold score of PPO's rollouts: logged beside the RM score, never used for training."""
    return {"gold": statistics.fmean(gold_score(p, t, e) for p, t, e in zip(prompts, texts, ended))}


@task(name="PPO", cache_policy=NO_CACHE)
def ppo_task(cfg: Config, root: str, tracking: Tracking, data: dict, tokenizer, sft, reward_model) -> recipe.StageResult:
    with recorded(tracking.stage("ppo")) as run:
        demonstrations = data["rows"][DEMONSTRATIONS]
        train_prompts = sorted({r["prompt"] for r in demonstrations})
        monitor = _gold_monitor if cfg.data.source == "synthetic" else None
        result = recipe.ppo_stage(cfg, tokenizer, sft, reward_model, train_prompts, demonstrations, monitor=monitor)
        record_stage(run, cfg.ppo, result, step_key="iteration")
        run.log_figure(plots.ppo_curves(result.history), "plots/ppo_curves.png")
        if monitor is not None:
            run.log_figure(plots.overoptimisation(result.history), "plots/overoptimisation.png")
        keep_model(cfg, root, tracking, run, "ppo", result.model, tokenizer, data, result.metrics)
    return result


def train_all(cfg: Config, root: str, tracking: Tracking, data: dict) -> dict:
    tokenizer = recipe.make_tokenizer(cfg)
    sft = sft_task(cfg, root, tracking, data, tokenizer)
    comparisons = comparisons_task(cfg, root, tracking, data, tokenizer, sft.model)
    reward = reward_task(cfg, root, tracking, data, tokenizer, sft.model, comparisons)
    baselines = {name: baseline_task(cfg, root, tracking, data, tokenizer, sft.model, comparisons, name) for name in recipe.SUPERVISED_BASELINES}
    ppo = ppo_task(cfg, root, tracking, data, tokenizer, sft.model, reward.model)
    return {"tokenizer": tokenizer, "sft": sft, "reward": reward, "baselines": baselines, "ppo": ppo}


def _stage_metrics(trained: dict) -> dict[str, dict]:
    stages = {"sft": trained["sft"], "reward_model": trained["reward"], "ppo": trained["ppo"], **trained["baselines"]}
    return {name: result.metrics for name, result in stages.items()}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(cfg: Config, root: str, tracking: Tracking, data: dict, trained: dict) -> dict:
    with recorded(tracking.stage("evaluation")) as run:
        policies = {"sft": trained["sft"].model, **{n: r.model for n, r in trained["baselines"].items()}, "ppo": trained["ppo"].model}
        eval_prompts = [r["prompt"] for r in data["rows"][EVAL_PROMPTS]]
        report = evaluate_policies(
            policies, trained["tokenizer"], eval_prompts, cfg.evaluation, cfg.model, cfg.seed,
            trained["reward"].model, gold_score, cfg.baselines.best_of_n,
        )
        run.log_params(flatten(cfg.evaluation.model_dump(mode="json")))
        for mode, block in report.items():
            for name, summary in block["policies"].items():
                run.log_metrics(flatten(summary), prefix=f"{mode}.{name}.")
            for name, win in block["ppo_win_rate"].items():
                run.log_metrics({"value": win["value"], "ci_lo": win["ci"][0], "ci_hi": win["ci"][1]}, prefix=f"{mode}.ppo_win_rate.{name}.")
            run.log_figure(plots.win_rates(block, mode), f"plots/win_rates_{mode}.png")
            run.log_table(block["examples"], f"tables/examples_{mode}.json")
            create_table_artifact(key=f"examples-{mode}", table=block["examples"][: 4 * len(block["policies"])], description=f"example responses, {mode} decoding")
        run.log_dict(report, "evaluation.json")
        create_markdown_artifact(key="evaluation", markdown=f"```\n{summary_table(report)}\n```")
    return report


@task(name="gate", cache_policy=NO_CACHE)
def gate(cfg: Config, tracking: Tracking, data: dict, trained: dict, evaluation: dict) -> dict:
    stage_metrics = _stage_metrics(trained)
    report = {
        "data_validation": {"success": data["validation"]["success"]},
        "non_finite_stages": sorted(name for name, metrics in stage_metrics.items() if _has_non_finite(metrics)),
        "reward_model": {"accuracy": trained["reward"].metrics.get("valid_accuracy")},
        "ppo_history": trained["ppo"].history,
        "modes": evaluation,
    }
    decision = decide(report, cfg.gate)
    with recorded(tracking.stage("gate")) as run:
        run.log_params(flatten(cfg.gate.model_dump(mode="json")))
        run.log_dict(decision.as_dict(), "gate/decision.json")
        run.set_tags({"gate.decision": decision.label})
        run.log_metrics({"promote": float(decision.promote), "failed_rules": float(len(decision.failures))})
    tracking.parent.set_tags({"gate.decision": decision.label})
    create_markdown_artifact(key="gate", markdown=f"```\n{decision.summary()}\n```")
    get_run_logger().info(decision.summary())
    return {**decision.as_dict(), "summary": decision.summary(), "promote": decision.promote, "reasons_text": [str(r) for r in decision.reasons]}


def _has_non_finite(metrics: dict) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())


@task(name="register", cache_policy=NO_CACHE)
def register(cfg: Config, root: str, tracking: Tracking, data: dict, trained: dict, decision: dict) -> dict:
    """The PPO policy becomes a new registry version, tagged; the aliases move last."""
    run = tracking.parent
    model_uri = run.log_policy(trained["ppo"].model, trained["tokenizer"], "policy")
    evaluation_tags = {f"gate.{r['mode']}.{r['rule']}" if r["mode"] else f"gate.{r['rule']}": r["detail"] for r in decision["reasons"]}
    version = tracking.tracker.register(model_uri, {
        "data.md5": data["version"]["md5"],
        "profile": cfg.profile,
        "seed": cfg.seed,
        **{k.replace(" ", "_"): v[:5000] for k, v in evaluation_tags.items()},
    })
    tracking.tracker.record_decision(version, decision["decision"], decision["reasons_text"])
    return {
        "name": cfg.tracking.registered_model,
        "version": version,
        "decision": decision["decision"],
        "model_uri": model_uri,
        "champion": tracking.tracker.alias_version(CHAMPION),
        "challenger": tracking.tracker.alias_version(CHALLENGER),
    }


def summary_table(report: dict) -> str:
    lines = []
    for mode, block in report.items():
        lines.append(f"\n== {mode} decoding, held-out prompts ==")
        lines.append(f"{'policy':<10} {'gold mean [95% CI]':<24} {'RM':>7} {'KL':>7} {'len':>5} {'unterm':>6}  PPO gold win rate [95% CI]")
        for name, s in block["policies"].items():
            g, wr = s["gold"], block["ppo_win_rate"].get(name)
            wins = f"{wr['value']:.3f} [{wr['ci'][0]:.3f}, {wr['ci'][1]:.3f}]" if wr else "-"
            kl = f"{s['kl']:7.2f}" if "kl" in s else "      -"
            lines.append(f"{name:<10} {g['value']:6.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]{'':<4} {s['rm']['value']:7.3f} {kl} {s['length']:5.1f} {s['unterminated']:6.3f}  {wins}")
    return "\n".join(lines)
