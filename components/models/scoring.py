"""A reward model's scores of (prompt, response) pairs, in eval mode and without gradients: what training (the
reward model's held-out accuracy and normalisation), PPO's rewards and the evaluation's judges all read."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.models.batching import encode_examples
from components.models.ensemble import member_scores
from components.models.runtime import SINGLE, Runtime

SCORE_BATCH = 256  # sequences per forward pass when only scoring


@torch.inference_mode()
def score_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[tuple[str, str]],
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> torch.Tensor:
    """The reward of each (prompt, response): (N,); an ensemble's is its members' mean."""
    return score_samples_by_member(model, tokenizer, samples, model_cfg, runtime).mean(dim=-1)


@torch.inference_mode()
def score_samples_by_member(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[tuple[str, str]],
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> torch.Tensor:
    """Each ensemble member's reward of each (prompt, response): (N, M); M = 1 for a single reward model. The
    batches are split between the runtime's processes; the scores are on the host."""
    was_training = model.training
    model = runtime.to_device(model).eval()

    def score(_: int, chunk: Sequence[tuple[str, str]]) -> list[list[float]]:
        batch = encode_examples(
            tokenizer,
            [p for p, _ in chunk],
            [r for _, r in chunk],
            model_cfg.max_prompt_tokens,
            model_cfg.max_response_tokens,
        ).to(runtime.device)
        with runtime.autocast():
            return member_scores(model, batch).float().tolist()

    scores = runtime.map_chunks(list(samples), SCORE_BATCH, score)
    model.train(was_training)
    return torch.tensor(scores) if scores else torch.zeros(0, 1)


def score_comparisons(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r(chosen), r(rejected) of every row, in eval mode and without gradients: (B,), (B,)."""
    rewards = score_samples(
        model,
        tokenizer,
        [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows],
        model_cfg,
        runtime,
    )
    return rewards[: len(rows)], rewards[len(rows) :]
