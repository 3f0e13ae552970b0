"""Baseline: likelihood on chosen plus unlikelihood on rejected responses (seed reason 2).

Loss of a batch of pairs, optimised jointly in one step:

    L = likelihood + unlikelihood_coef * unlikelihood
    likelihood   = mean over chosen-response tokens   of  -log p(y_t | x, y_<t)        (SFT's loss)
    unlikelihood = mean over rejected-response tokens of  -log(1 - p(y_t | x, y_<t))   (Welleck et al. 2019)

Choices, for a reader comparing with the paper:
- Welleck et al.'s *sequence-level* unlikelihood penalises the tokens of a bad continuation; here
  the bad continuation is the labeler's rejected response, so its tokens are the negative candidates.
- Both terms are token means (like SFT's loss), so ``unlikelihood_coef`` weighs one rejected token
  against one chosen token whatever the response lengths.
- ``1 - p`` is clamped at ``min_one_minus_p`` as in Welleck et al.'s code, so a token the model is
  sure of costs at most ``-log(min_one_minus_p)`` instead of inf (its gradient is then zero: the
  likelihood term and the other tokens still move it); ``log1p`` keeps rare tokens' cost (about p) exact.
- Which rejected tokens are penalised (``unlikelihood_tokens``): a pair says the rejected response as
  a whole is worse, not which of its tokens are wrong, and most of its tokens (``the``, ``.``, EOS, the
  opening sentence) also make up the chosen response. ``all`` penalises every rejected token;
  ``after_shared_prefix`` spares the opening the two responses share (there the likelihood term asks
  for exactly the penalised tokens, which would cap their probability at 1 / (1 + coef));
  ``not_in_chosen`` penalises only the rejected tokens that never occur in the chosen response (the
  wrong sentiment word, the off-topic aspect, the agreement error), so EOS and the words every
  review needs are never pushed down.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import CombinedLossConfig, ModelConfig
from components.models import lora
from components.models.batching import encode_examples, gather_logprobs, masked_mean, response_logits
from components.training.loop import INPUT_TOKENS, QUIET, Harness, Means, Objective, train_supervised

TokenMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (values, mask) -> their mean


def unlikelihood(logprobs: torch.Tensor, min_one_minus_p: float = 1e-5) -> torch.Tensor:
    """Per-token -log(1 - p) from log p; same shape as ``logprobs``."""
    return -torch.log1p(-logprobs.exp().clamp(max=1.0 - min_one_minus_p))


def shared_prefix_mask(
    chosen_ids: torch.Tensor, chosen_mask: torch.Tensor, rejected_ids: torch.Tensor, rejected_mask: torch.Tensor
) -> torch.Tensor:
    """1 on the rejected tokens that open the rejected response exactly as the chosen one opens: (B, R)."""
    same = (chosen_ids == rejected_ids) & chosen_mask.bool() & rejected_mask.bool()
    return same.long().cumprod(dim=1)


def not_in_chosen_mask(chosen_ids: torch.Tensor, chosen_mask: torch.Tensor, rejected_ids: torch.Tensor) -> torch.Tensor:
    """1 on the rejected tokens whose id occurs nowhere in the same row's chosen response: (B, R)."""
    occurs = (rejected_ids.unsqueeze(2) == chosen_ids.unsqueeze(1)) & chosen_mask.bool().unsqueeze(
        1
    )  # (B, R_rejected, R_chosen)
    return (~occurs.any(dim=2)).long()


def penalised_mask(
    mode: str,
    chosen_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_ids: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> torch.Tensor:
    """The rejected tokens the unlikelihood term applies to, by ``CombinedLossConfig.unlikelihood_tokens``: (B, R)."""
    if mode == "all":
        return rejected_mask
    if mode == "after_shared_prefix":
        return rejected_mask * (1 - shared_prefix_mask(chosen_ids, chosen_mask, rejected_ids, rejected_mask))
    if mode == "not_in_chosen":
        return rejected_mask * not_in_chosen_mask(chosen_ids, chosen_mask, rejected_ids)
    raise ValueError(f"unknown unlikelihood_tokens {mode!r}")


class ResponseTokens(NamedTuple):
    """A batch of responses as the loss reads them: the logits at each response token, its id, and which count."""

    logits: torch.Tensor  # (B, R, V)
    ids: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R): for the rejected responses, the tokens to penalise


def combined_loss(
    chosen: ResponseTokens,
    rejected: ResponseTokens,
    unlikelihood_coef: float,
    min_one_minus_p: float = 1e-5,
    likelihood_mean: TokenMean = masked_mean,
    unlikelihood_mean: TokenMean = masked_mean,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """likelihood + coef * unlikelihood, and both terms as metrics. The means: over these tokens, or (data parallel,
    micro-batches) this part's share of the mean over the global batch's."""
    chosen_logprobs = gather_logprobs(chosen.logits, chosen.ids)  # (B, R)
    rejected_logprobs = gather_logprobs(rejected.logits, rejected.ids)  # (B, R)
    likelihood = likelihood_mean(-chosen_logprobs, chosen.mask)
    unlikely = unlikelihood_mean(unlikelihood(rejected_logprobs, min_one_minus_p), rejected.mask)
    loss = likelihood + unlikelihood_coef * unlikely
    with torch.no_grad():
        rejected_p = unlikelihood_mean(rejected_logprobs.exp(), rejected.mask)
    return loss, {"likelihood": likelihood.detach(), "unlikelihood": unlikely.detach(), "rejected_token_p": rejected_p}


def combined_objective(
    cfg: CombinedLossConfig, tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, device: torch.device
) -> Objective:
    """likelihood over every chosen token of the global batch + coef * unlikelihood over every penalised rejected
    token of it."""

    def encode(rows: list[dict]):
        prompts = [r["prompt"] for r in rows]
        # chosen and rejected in one forward pass: rows [0, B) are chosen, [B, 2B) rejected
        responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        batch = encode_examples(
            tokenizer, prompts + prompts, responses, model_cfg.max_prompt_tokens, model_cfg.max_response_tokens
        ).to(device)
        n = len(rows)
        ids, mask = batch.response_ids, batch.response_mask
        penalised = penalised_mask(cfg.unlikelihood_tokens, ids[:n], mask[:n], ids[n:], mask[n:])
        inputs = (batch, penalised)
        counts = {"chosen_tokens": mask[:n].float().sum(), "penalised_tokens": penalised.float().sum()}
        return inputs, {**counts, INPUT_TOKENS: batch.attention_mask.float().sum()}

    def loss(model: torch.nn.Module, inputs, mean: Means):
        batch, penalised = inputs
        logits = response_logits(model, batch)  # (2B, R, V)
        n = penalised.shape[0]
        ids, mask = batch.response_ids, batch.response_mask
        return combined_loss(
            ResponseTokens(logits[:n], ids[:n], mask[:n]),
            ResponseTokens(logits[n:], ids[n:], penalised),
            cfg.unlikelihood_coef,
            cfg.min_one_minus_p,
            likelihood_mean=partial(mean, "chosen_tokens"),
            unlikelihood_mean=partial(mean, "penalised_tokens"),
        )

    return Objective(encode, loss)


def train_combined(
    sft_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    preferences: list[dict],
    cfg: CombinedLossConfig,
    model_cfg: ModelConfig,
    seed: int,
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Train a copy of ``sft_policy`` (left untouched) on ``{prompt, chosen, rejected}``;
    returns (model, metrics, history).

    history entries: step, loss, grad_norm, lr, likelihood, unlikelihood, rejected_token_p
    (mean probability of the penalised rejected tokens).
    metrics: first_loss, final_loss, steps, likelihood, unlikelihood (of the last step).
    """
    torch.manual_seed(seed)
    policy = lora.for_training(copy.deepcopy(sft_policy), model_cfg)
    counts = lora.parameter_counts(policy)
    objective = combined_objective(cfg, tokenizer, model_cfg, harness.runtime.device)
    policy, history = train_supervised("combined", policy, preferences, objective, cfg, seed, harness=harness)
    last = history[-1]
    metrics = {
        "first_loss": history[0]["loss"],
        "final_loss": last["loss"],
        "steps": last["step"] + 1,
        "likelihood": last["likelihood"],
        "unlikelihood": last["unlikelihood"],
        **counts,
    }
    return policy, metrics, history
