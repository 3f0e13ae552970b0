"""The supervised optimisation loop shared by SFT, the reward model and the baselines.

A stage supplies its examples and an ``Objective``; the loop shuffles, batches, steps AdamW with linear warm-up,
clips gradients, records history and stops at the first non-finite loss. It runs on the stage's ``Runtime``: every
rank draws the same global batch and takes its share of the rows, in ``gradient_accumulation_steps`` micro-batches,
and every mean in the loss divides by its count over the whole global batch. So the parts the ranks and micro-batches
compute add up to the loss of the batch taken whole, and N processes take the steps one process takes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from components.config import OptimConfig
from components.models import lora
from components.models.runtime import SINGLE, Runtime
from components.training.shards import check_divisible

Log = Callable[[int, dict[str, float]], None]  # (step, metrics) -> None; the flow decides where it goes
# (prompts, responses, ended) -> metrics: a watcher of RL's rollouts (the embedded task's gold judge, or none)
Monitor = Callable[[list[str], list[str], list[bool]], dict[str, float]]
TOTAL_STEPS = "total_steps"  # in what a Log is given (not in the history): the steps the stage takes in all
INPUT_TOKENS = "input_tokens"  # an objective's count of the tokens its forward passes read (for throughput)


class NonFiniteError(RuntimeError):
    """A loss, reward or gradient became NaN or inf; names the stage and the step."""

    def __init__(self, stage: str, step: int, what: str):
        self.stage, self.step, self.what = stage, step, what
        super().__init__(f"{stage}: non-finite {what} at step {step}")


def check_finite(stage: str, step: int, **values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteError(stage, step, name)


@dataclass
class Snapshots:
    """Copies of a model's weights at ``count`` steps of its training: the candidates that selection
    (components/training/selection.py) chooses from by labels. Subclasses may write them somewhere instead.

    ``spacing`` "log": step ``total^(k/count)`` for k = 1..count, so the first candidates come within the first few
    steps (a reward-hacked policy can peak there) and the last is the end; "even": ``total * k / count``."""

    count: int
    spacing: str = "log"
    taken: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)  # (step, state dict)

    def steps(self, total: int) -> set[int]:
        """``count`` distinct steps of ``total`` (0-based), the last always among them; every step when fewer."""
        if total <= self.count:
            return set(range(total))
        chosen: list[int] = []
        for k in range(1, self.count + 1):
            at = total ** (k / self.count) if self.spacing == "log" else total * k / self.count
            chosen.append(max(round(at) - 1, chosen[-1] + 1 if chosen else 0))
        return set(chosen)

    def take(self, step: int, model: torch.nn.Module) -> None:
        """A copy of the plain model's weights (adapters merged) in host memory: the device keeps room for training."""
        state = lora.merged_state_dict(model)
        self.taken.append((step, {name: t.detach().to("cpu", copy=True) for name, t in state.items()}))


@dataclass
class EpochEnds(Snapshots):
    """Snapshots at the last step of every epoch (a final fractional epoch's too): ``steps_per_epoch`` is the
    examples over the batch size, a fraction where the last batch of an epoch runs into the next."""

    count: int = 0
    steps_per_epoch: float = 1.0

    def steps(self, total: int) -> set[int]:
        epochs = math.ceil(total / self.steps_per_epoch)
        return {min(total, math.ceil(k * self.steps_per_epoch)) - 1 for k in range(1, epochs + 1)}


@dataclass(frozen=True)
class Harness:
    """What a training run is handed beside its models, data and hyper-parameters, none of it math: where it runs,
    where its logged steps and candidate snapshots go, and for RL where it checkpoints and what watches its rollouts.
    """

    runtime: Runtime = SINGLE
    log: Log | None = None
    snapshots: Snapshots | None = None
    checkpoint_dir: str | None = None
    monitor: Monitor | None = None


QUIET = Harness()  # one process where SINGLE runs, nothing logged, no snapshots, no checkpoints


class Means:
    """The means a loss takes over its batch, each divided by its count over the whole global batch (every rank's
    rows, every micro-batch's), so that the parts add up to the mean over the batch taken whole."""

    def __init__(self, counts: dict[str, torch.Tensor]):
        self.counts = counts

    def __call__(self, name: str, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        total = values.sum() if mask is None else (values * mask.float()).sum()
        return total / self.counts[name].clamp(min=1.0)


@dataclass(frozen=True)
class Objective:
    """A supervised loss in two steps.

    ``encode(rows) -> (inputs, counts)``: the rows as tensors on the runtime's device, and what each of the loss's
    means divides by (``{name: count}``, counted on these rows; the loop adds them up over the global batch).
    ``loss(model, inputs, means) -> (loss, metrics)``: the loss of these rows, every mean taken with ``means``, and
    metrics that are means too (so they add up the same way). ``model`` is the prepared one: call it, never its
    parts. ``after_step(metrics)`` sees each step's global metrics. A count named ``INPUT_TOKENS`` (the tokens the
    forward passes read) is added up over the run, in each history entry."""

    encode: Callable[[list], tuple[Any, dict[str, torch.Tensor]]]
    loss: Callable[[torch.nn.Module, Any, Means], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    after_step: Callable[[dict[str, float]], None] | None = None


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The learning rate's multiplier at ``step`` (0-based) of ``total_steps``: linear warm-up to 1 over
    ``warmup_steps``, then 1 ("constant") or a linear decay that would reach 0 one step after the last ("linear")."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    return (total_steps - step) / max(1, total_steps - warmup_steps)


def make_optimizer(
    params, cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.lr_schedule)
    )
    return optimizer, scheduler


def micro_batches(rows: list, parts: int) -> list[list]:
    """``rows`` cut into ``parts`` consecutive micro-batches of near-equal size."""
    return [rows[len(rows) * k // parts : len(rows) * (k + 1) // parts] for k in range(parts)]


def accumulate(
    model: torch.nn.Module, objective: Objective, rows: list, parts: int, runtime: Runtime
) -> tuple[float, dict[str, float], float]:
    """Forward and backward of this rank's ``rows`` in ``parts`` micro-batches, each its share of the global batch's
    loss; the gradients are all-reduced once, on the last. Returns the global batch's loss, metrics and input tokens
    (every rank the same numbers: one collective)."""
    encoded = [objective.encode(part) for part in micro_batches(rows, parts)]
    names = sorted(encoded[0][1])
    counts = runtime.sum(torch.stack([sum(counts[name] for _, counts in encoded) for name in names]).float())
    means = Means(dict(zip(names, counts)))
    totals, metric_names = None, []
    for k, (inputs, _) in enumerate(encoded):
        with runtime.accumulating(model, synced=k == len(encoded) - 1):
            loss, metrics = objective.loss(model, inputs, means)
            runtime.backward_share(loss, model)
        metric_names = sorted(metrics)
        part = torch.stack([loss.detach(), *(metrics[name].detach() for name in metric_names)]).double()
        totals = part if totals is None else totals + part
    totals = runtime.sum(totals).tolist()
    tokens = counts[names.index(INPUT_TOKENS)].item() if INPUT_TOKENS in names else 0.0
    return totals[0], dict(zip(metric_names, totals[1:])), tokens


def train_supervised(
    stage: str,
    model: torch.nn.Module,
    examples: Sequence,
    objective: Objective,
    cfg: OptimConfig,
    seed: int,
    dropout: bool = True,
    harness: Harness = QUIET,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Run ``cfg.epochs`` passes of minibatch AdamW over ``examples`` with ``objective``; returns the trained model
    (plain, every parameter in place) and the history.

    ``dropout`` False trains in eval mode (for losses that compare the model with a frozen copy of itself).
    ``harness.snapshots`` receives the weights after each of its steps (on every rank)."""
    runtime, log, snapshots = harness.runtime, harness.log, harness.snapshots
    check_divisible(stage, cfg, runtime.world_size)
    rng = random.Random(f"{seed}/{stage}")  # the same on every rank: one global batch order
    total_steps = max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    optimizer, scheduler = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, total_steps)
    [(model, optimizer)] = runtime.prepare((model, optimizer), max_grad_norm=cfg.max_grad_norm)
    model.train(dropout)
    lora.keep_checkpointing(model)
    history: list[dict[str, float]] = []
    order: list[int] = []
    input_tokens = 0.0
    snapshot_steps = snapshots.steps(total_steps) if snapshots else set()
    for step in range(total_steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        loss, metrics, tokens = accumulate(
            model, objective, runtime.shard(batch), cfg.gradient_accumulation_steps, runtime
        )
        input_tokens += tokens
        check_finite(stage, step, loss=loss)
        grad_norm = runtime.step(model, optimizer, cfg.max_grad_norm)
        check_finite(stage, step, grad_norm=grad_norm)
        scheduler.step()
        if objective.after_step is not None:
            objective.after_step(metrics)
        if step in snapshot_steps:
            with runtime.gathered(runtime.unwrap(model)):  # ZeRO-3: every rank gathers (a collective)
                snapshots.take(step, runtime.unwrap(model))
        if step % cfg.log_every == 0 or step == total_steps - 1:
            entry = {
                "step": step,
                "loss": loss,
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                **metrics,
                INPUT_TOKENS: input_tokens,
            }
            history.append(entry)
            if log and runtime.is_main:
                log(step, {**entry, TOTAL_STEPS: total_steps})
    model.eval()
    return runtime.full_model(model), history
