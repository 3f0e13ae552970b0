"""The process group a training loop runs in: one process, or data-parallel ranks set up by accelerate.

``Ranks()`` is the single process: every reduction is the identity, so the single-process loop
computes exactly what it computed before data parallelism existed. ``Ranks(accelerator)`` wraps an
``accelerate.Accelerator`` launched with N processes: ``sum`` all-reduces over the ranks, trained
models are wrapped in DistributedDataParallel (gradients averaged over ranks on backward), and
``is_main`` picks the one rank that writes files and talks to the tracking server.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


class Ranks:
    def __init__(self, accelerator: Any | None = None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world_size = accelerator.num_processes if accelerator else 1
        self.device = accelerator.device if accelerator else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- reductions -----------------------------------------------------------------------

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over all ranks (a new tensor; every rank gets the same result)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the entries where ``mask`` is 1, across all ranks' entries."""
        mask = mask.float()
        totals = self.sum(torch.stack([(values * mask).sum(), mask.sum()]))
        return totals[0] / totals[1].clamp(min=1.0)

    def masked_var(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = self.masked_mean(values, mask)
        return self.masked_mean((values - mean) ** 2, mask)

    def mean_of_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (for per-rank means of equally sized shards)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        totals = self.sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device))
        return {k: (totals[i] / self.world_size).item() for i, k in enumerate(keys)}

    def gather_objects(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def shard(self, items: list) -> list:
        """This rank's share of a list every rank holds in the same order."""
        return items[self.rank :: self.world_size]

    def token_share(self, mask: torch.Tensor):
        """A token mean whose per-rank (and per-micro-batch) parts add up to the mean over every rank's ``mask``."""
        count = self.sum(mask.float().sum())

        def share(values: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
            return (values * part_mask.float()).sum() / count.clamp(min=1.0)

        return share

    # --- models ---------------------------------------------------------------------------

    def prepare(self, *objects):
        """Models -> DDP on the rank's device (bf16 autocast when configured); optimisers -> device-aware."""
        if self.accelerator is None:
            return objects
        return self.accelerator.prepare(*objects)

    def to_device(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def autocast(self):
        """The mixed precision the prepared (trained) models run in,
        for passes through models that were not prepared."""
        return self.accelerator.autocast() if self.accelerator is not None else contextlib.nullcontext()

    def backward_share(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share of a global mean: DDP averages gradients over ranks, so scale back up."""
        self.backward(loss * self.world_size)

    def accumulating(self, model: torch.nn.Module, synced: bool):
        """The last micro-batch of a step all-reduces the gradients; the ones before accumulate locally."""
        return contextlib.nullcontext() if synced else self.no_sync(model)

    def no_sync(self, model: torch.nn.Module):
        """Accumulate this backward's gradients locally; the next synced backward all-reduces them."""
        if self.accelerator is None or not self.distributed:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def clip_grad_norm_(self, parameters, max_norm: float) -> None:
        if self.accelerator is None:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        else:
            self.accelerator.clip_grad_norm_(parameters, max_norm)
