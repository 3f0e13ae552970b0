"""The supervised optimisation loop shared by SFT, the reward model and the baselines.

A stage supplies its examples and a loss function; the loop shuffles, batches, steps AdamW with
linear warm-up, clips gradients, records history and stops at the first non-finite loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from components.config import OptimConfig

Log = Callable[[int, dict[str, float]], None]  # (step, metrics) -> None; the flow decides where it goes


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
    """Copies of a model's weights at steps evenly spaced over its training: the candidates that selection
    (components/training/selection.py) chooses from by labels. Subclasses may write them somewhere instead."""

    count: int
    taken: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)  # (step, state dict)

    def steps(self, total: int) -> set[int]:
        """``count`` steps evenly spaced over ``total`` (0-based), the last always among them."""
        return {max(0, round(total * k / self.count) - 1) for k in range(1, self.count + 1)}

    def take(self, step: int, model: torch.nn.Module) -> None:
        self.taken.append((step, {name: t.detach().clone() for name, t in model.state_dict().items()}))


def make_optimizer(
    params, lr: float, weight_decay: float, warmup_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
    return optimizer, scheduler


def train_supervised(
    stage: str,
    model: torch.nn.Module,
    examples: Sequence,
    loss_fn: Callable[[list], tuple[torch.Tensor, dict[str, float]]],
    cfg: OptimConfig,
    seed: int,
    log: Log | None = None,
    dropout: bool = True,
    snapshots: Snapshots | None = None,
) -> list[dict[str, float]]:
    """Run ``cfg.epochs`` passes of minibatch AdamW; ``loss_fn(batch_of_examples) -> (loss, metrics)``.

    ``dropout`` False trains in eval mode (for losses that compare the model with a frozen copy of itself).
    ``snapshots`` receives the weights after each of its evenly spaced steps."""
    rng = random.Random(f"{seed}/{stage}")
    total_steps = max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    optimizer, scheduler = make_optimizer(
        [p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay, cfg.warmup_steps
    )
    model.train(dropout)
    history: list[dict[str, float]] = []
    order: list[int] = []
    snapshot_steps = snapshots.steps(total_steps) if snapshots else set()
    for step in range(total_steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        loss, metrics = loss_fn(batch)
        check_finite(stage, step, loss=loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm).item()
        check_finite(stage, step, grad_norm=grad_norm)
        optimizer.step()
        scheduler.step()
        if step in snapshot_steps:
            snapshots.take(step, model)
        if step % cfg.log_every == 0 or step == total_steps - 1:
            entry = {
                "step": step,
                "loss": loss.item(),
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                **metrics,
            }
            history.append(entry)
            if log:
                log(step, entry)
    model.eval()
    return history
