"""Baselines that read the rankings as demonstrations: plain SFT (components/training/sft.py) continued
from the SFT policy, differing from the SFT stage only in their data.

- ``chosen`` (seed reason 1, "use these labels directly"): every pair's ``chosen`` becomes a target
  response and every ``rejected`` is thrown away. Of K ranked samples, the best is a target K-1
  times, the second best K-2 times, ...: half the targets are not their group's best.
- ``top_ranked``: fine-tuning on each ranked group's best response only (rejection-sampling
  fine-tuning: best-of-K by the labellers, as in RAFT, Dong et al. 2023, and ReST, Gulcehre et al.
  2023): the strongest purely supervised use of the rankings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, SFTConfig
from components.models import lora
from components.training.loop import QUIET, Harness
from components.training.reward import group_comparisons
from components.training.sft import train_sft


def chosen_examples(preferences: list[dict]) -> list[dict]:
    """``{prompt, chosen, rejected}`` -> ``{prompt, response=chosen}``."""
    return [{"prompt": row["prompt"], "response": row["chosen"]} for row in preferences]


def top_ranked_examples(preferences: list[dict]) -> list[dict]:
    """Each ranked group's best response as ``{prompt, response}``: the one its group never rejected.

    A static file's pairs are groups of one, so their ``chosen`` is the best."""
    examples = []
    for group in group_comparisons(preferences):
        rejected = {row["rejected"] for row in group}
        best = next(row["chosen"] for row in group if row["chosen"] not in rejected)
        examples.append({"prompt": group[0]["prompt"], "response": best})
    return examples


Trainer = Callable[..., tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]]


def sft_on(stage: str, to_examples: Callable[[list[dict]], list[dict]]) -> Trainer:
    """A baseline trainer that fine-tunes a copy of the SFT policy (left untouched) on ``to_examples(preferences)``.

    It returns (model, metrics, history): history entries step, loss (token cross-entropy), grad_norm, lr;
    metrics first_loss, final_loss, steps."""

    def train(
        sft_policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preferences: list[dict],
        cfg: SFTConfig,
        model_cfg: ModelConfig,
        seed: int,
        harness: Harness = QUIET,
    ):
        policy = lora.for_training(copy.deepcopy(sft_policy), model_cfg)
        return train_sft(policy, tokenizer, to_examples(preferences), cfg, model_cfg, seed, stage, harness)

    return train


train_chosen = sft_on("chosen", chosen_examples)
train_top_ranked = sft_on("top_ranked", top_ranked_examples)
