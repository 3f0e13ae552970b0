"""How a stage runs in the flow: reused when its key matches a finished output, else computed, saved once and
atomically under ``artifacts_dir/<stage>/<stage key>/`` (with a card naming config and data version), and recorded
as a nested MLflow run (params = its config section, per-step history, final metrics, curves, the model)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from components.adapters import plots
from components.adapters.tracking import StageRun, flatten
from components.config import Config
from components.models.saving import save_model, stage_key
from components.models.stage_store import StageStore
from components.training import recipe
from components.training.loop import NonFiniteError
from flows.execution import runtimes
from flows.execution.run_context import RunContext

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
    run.set_tags({f"runtime.{key}": value for key, value in result.placement.items()})
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
        "runtime": result.placement,
    }
    save_model(result.model, ctx.tokenizer, directory, card)


def log_stage_model(ctx: RunContext, run: StageRun, name: str, result: recipe.StageResult) -> None:
    if ctx.cfg.tracking.log_models:
        run.log_artifacts(StageStore(ctx.root).path(stage_home(ctx.cfg, name), result.key), f"model/{name}")


def stage_home(cfg: Config, name: str) -> str:
    """Where a stage's outputs live, one directory per key under it."""
    return f"{cfg.artifacts_dir}/{name}"


# the source a trained stage's output depends on: an edit to any of it trains anew instead of reusing an old output
TRAINING_CODE = (
    "components/data",
    "components/models",
    "components/task",
    "components/training",
    "flows/execution/ppo_worker.py",
    "flows/execution/stage_calls.py",
    "flows/execution/stage_worker.py",
)


def code_digest(root: Path, paths: tuple[str, ...] = TRAINING_CODE) -> str:
    """sha256 over the Python files under ``paths`` (relative to ``root``), each its path then its bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        target = root / path
        for file in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


@cache
def training_code() -> str:
    return code_digest(runtimes.CODE_ROOT)


def key_for(ctx: RunContext, name: str, section, *upstream: str) -> str:
    """What a stage's output depends on, hashed: the data, its config section, the model settings, the seed, the
    upstream stages' keys and the training code. Several processes sum the same gradients in another order, so their
    weights differ from one process's in the last bits: the process count is part of the key when it is not one."""
    processes = runtimes.processes(ctx.cfg, runtimes.run_profile(ctx.cfg))
    return stage_key(
        stage=name,
        data=ctx.data.md5,
        section=section.model_dump(mode="json"),
        model=ctx.cfg.model.model_dump(mode="json"),
        seed=ctx.cfg.seed,
        upstream=list(upstream),
        code=training_code(),
        **({"processes": processes} if processes > 1 else {}),
    )


def waiting_for(name: str, key: str):
    return lambda: get_run_logger().info("%s: another run is computing key %s; waiting to reuse its result", name, key)


@dataclass(frozen=True)
class SavedAs:
    """How a stage's output is written into its directory, and read back from it."""

    save: Callable[[Path, recipe.StageResult], None]
    load: Callable[[Path], Any]


def reuse_or_compute(
    ctx: RunContext,
    run: StageRun,
    name: str,
    home: str,
    key: str,
    compute: Callable[[], recipe.StageResult],
    saved_as: SavedAs,
    finished: Callable[[], None] | None = None,
) -> recipe.StageResult:
    """Reuse the stage's saved output when its key matches (data, config section and upstream stages unchanged),
    else compute and save it. The key is held meanwhile, so a concurrent run with the same key waits and
    reuses; ``finished`` runs while it is still held, after the save."""
    store = StageStore(ctx.root)
    with store.claim(home, key, waiting_for(name, key)) as directory:
        card = store.finished(home, key) if ctx.cfg.orchestration.reuse_finished_stages else None
        if card:
            get_run_logger().info(
                "%s: reusing the finished stage in %s: key %s, the same data %s, config section, model settings, "
                "seed, upstream stages and training code %s as this run",
                name,
                directory,
                key,
                ctx.data.md5[:12],
                training_code()[:12],
            )
            store.touch(home, key)
            run.set_tags({"reused": "true", "stage_key": key})
            history, placement = card.get("history", []), card.get("runtime", {})
            return recipe.StageResult(
                saved_as.load(directory), card["metrics"], history, 0.0, key, reused=True, placement=placement
            )
        result = compute()
        result.key = key
        run.set_tags({"reused": "false", "stage_key": key})
        saved_as.save(directory, result)
        if finished is not None:
            finished()
    return result


def train_or_reuse(
    ctx: RunContext, run: StageRun, name: str, key: str, loader, train, finished=None
) -> recipe.StageResult:
    """``reuse_or_compute`` for a stage that trains a model, saved in HF layout with its card."""

    def save(directory: Path, result: recipe.StageResult) -> None:
        save_stage_model(ctx, directory, name, result)

    return reuse_or_compute(ctx, run, name, stage_home(ctx.cfg, name), key, train, SavedAs(save, loader), finished)
