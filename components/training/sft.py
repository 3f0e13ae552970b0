"""Supervised fine-tuning (InstructGPT step 1): cross-entropy on response tokens only."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, OptimConfig
from components.models import lora
from components.models.batching import Batch, encode_demonstrations, response_logits
from components.training.loop import INPUT_TOKENS, QUIET, Harness, Means, Objective, train_supervised


def token_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """-log p of every response token (B, R); prompt and padding positions are meaningless."""
    logits = response_logits(model, batch)
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), batch.response_ids.flatten(), reduction="none"
    ).view_as(batch.response_mask)


def sft_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean token cross-entropy over response tokens (EOS included); prompt and padding are masked out."""
    mask = batch.response_mask.float()
    return (token_nll(model, batch) * mask).sum() / mask.sum()


def sft_objective(tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, device: torch.device) -> Objective:
    """SFT's loss: the mean over every response token of the global batch."""

    def encode(rows: list[dict]):
        batch = encode_demonstrations(tokenizer, rows, model_cfg).to(device)
        return batch, {"tokens": batch.response_mask.float().sum(), INPUT_TOKENS: batch.attention_mask.float().sum()}

    def loss(model: torch.nn.Module, batch: Batch, mean: Means):
        return mean("tokens", token_nll(model, batch), batch.response_mask), {}

    return Objective(encode, loss)


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[dict],
    cfg: OptimConfig,
    model_cfg: ModelConfig,
    seed: int,
    stage: str = "sft",
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Fine-tune ``model`` (as ``lora.for_training`` made it: adapted or not) on ``{prompt, response}`` examples;
    returns (model, metrics, history)."""
    torch.manual_seed(seed)
    counts = lora.parameter_counts(model)
    objective = sft_objective(tokenizer, model_cfg, harness.runtime.device)
    model, history = train_supervised(stage, model, examples, objective, cfg, seed, harness=harness)
    metrics = {"final_loss": history[-1]["loss"], "first_loss": history[0]["loss"], "steps": history[-1]["step"] + 1}
    return model, {**metrics, **counts}, history
