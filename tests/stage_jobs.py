"""Launched stages for the distributed tests (tests/distributed/): a smoke SFT policy and its ranked comparisons saved
where launched jobs read them, and the float32 yardstick their weights are compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from components.config import Config
from components.data.files import DEMONSTRATIONS
from components.models.ensemble import members_of
from components.models.runtime import Runtime
from components.models.saving import save_model
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe

FLOAT32_ULP = 2.0**-23


@dataclass
class Smoke:
    cfg: Config
    tokenizer: object
    demonstrations: list[dict]
    prompts: list[str]
    sft: torch.nn.Module
    comparisons: list[dict]
    sft_dir: Path  # where a launched job reads the SFT policy


def smoke(cfg: Config, where: Path) -> Smoke:
    """SFT on the smoke demonstrations, and its samples ranked by the task's labeller; the policy saved in ``where``."""
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    demonstrations = rows[DEMONSTRATIONS]
    prompts = sorted({r["prompt"] for r in demonstrations})
    sft = recipe.sft_stage(cfg, tokenizer, demonstrations).model
    labeller = recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), demonstrations)
    comparisons = recipe.comparisons_stage(cfg, tokenizer, sft, prompts, labeller).model
    save_model(sft, tokenizer, where / "sft", {})
    return Smoke(cfg, tokenizer, demonstrations, prompts, sft, comparisons, where / "sft")


class ReversedRows(Runtime):
    """One process that takes every global batch with its rows in reverse order: the same float32 terms, summed in
    another order."""

    def shard(self, items: list) -> list:
        return items[::-1]


def parameters(model) -> list[torch.Tensor]:
    return [p.detach() for member in members_of(model) for p in member.parameters()]


def largest_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(parameters(a), parameters(b)))


def float32_yardstick(one, reversed_rows) -> float:
    """How far float32 rounding alone may move a stage's weights, measured on this machine: 4x the distance the same
    single process moves them when it adds each batch's terms in reverse order, or 16 float32 ulps of the largest
    weight, whichever is larger."""
    largest = max(p.abs().max().item() for p in parameters(one))
    return max(4 * largest_difference(one, reversed_rows), 16 * FLOAT32_ULP * largest)
