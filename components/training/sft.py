"""Supervised fine-tuning (InstructGPT step 1): cross-entropy on response tokens only."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, OptimConfig
from components.models.batching import Batch, encode_examples, response_logits
from components.training.loop import Log, Snapshots, train_supervised


def sft_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Mean token cross-entropy over response tokens (EOS included); prompt and padding are masked out."""
    logits = response_logits(model, batch)
    mask = batch.response_mask.float()
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), batch.response_ids.flatten(), reduction="none"
    ).view_as(mask)
    return (nll * mask).sum() / mask.sum()


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict],
    cfg: OptimConfig,
    model_cfg: ModelConfig,
    seed: int,
    stage: str = "sft",
    log: Log | None = None,
    snapshots: Snapshots | None = None,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Fine-tune ``model`` in place on ``{prompt, response}`` examples; returns (model, metrics, history)."""
    torch.manual_seed(seed)

    def loss_fn(rows: list[dict]):
        batch = encode_examples(
            tokenizer,
            [r["prompt"] for r in rows],
            [r["response"] for r in rows],
            model_cfg.max_prompt_tokens,
            model_cfg.max_response_tokens,
        )
        loss = sft_loss(model, batch)
        return loss, {}

    history = train_supervised(stage, model, examples, loss_fn, cfg, seed, log, snapshots=snapshots)
    metrics = {"final_loss": history[-1]["loss"], "first_loss": history[0]["loss"], "steps": history[-1]["step"] + 1}
    return model, metrics, history
