"""Baseline: supervised fine-tuning on the chosen responses only (seed reason 1, "use these labels directly").

The preference pairs are read as demonstrations: each ``chosen`` becomes the target response of
its prompt and each ``rejected`` is thrown away. This is plain SFT (components/training/sft.py)
continued from the SFT policy, so it differs from the SFT stage only in its data.
"""
from __future__ import annotations

import copy

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, SFTConfig
from components.training.loop import Log
from components.training.sft import train_sft


def chosen_examples(preferences: list[dict]) -> list[dict]:
    """``{prompt, chosen, rejected}`` -> ``{prompt, response=chosen}``."""
    return [{"prompt": row["prompt"], "response": row["chosen"]} for row in preferences]


def train_chosen(
    sft_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    preferences: list[dict],
    cfg: SFTConfig,
    model_cfg: ModelConfig,
    seed: int,
    log: Log | None = None,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Fine-tune a copy of ``sft_policy`` (left untouched) on the chosen responses; returns (model, metrics, history).

    history entries: step, loss (token cross-entropy on chosen), grad_norm, lr.
    metrics: first_loss, final_loss, steps.
    """
    policy = copy.deepcopy(sft_policy)
    return train_sft(policy, tokenizer, chosen_examples(preferences), cfg, model_cfg, seed, stage="chosen", log=log)
