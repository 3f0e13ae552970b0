"""Baseline: Direct Preference Optimisation (Rafailov et al. 2023), no reward model and no sampling.

For a pair (x, y_w = chosen, y_l = rejected), with pi the policy and pi_ref the frozen SFT model:

    logprobs(y)  = sum over response tokens (EOS included) of log pi(y_t | x, y_<t)
    rewards(y)   = beta * (logprobs(y) - ref_logprobs(y))                # DPO's implicit reward
    loss         = -log sigmoid(rewards(y_w) - rewards(y_l))

The reference never changes, so its log-probs are computed once per pair (the first time the pair is
drawn, without gradients) and cached; the reference model itself is a frozen copy of the SFT policy
(requires_grad False), never handed to the optimiser. Policy and reference run in the same mode (eval:
no dropout), so at step 0 the implicit rewards are exactly 0 and the loss exactly log 2.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import DPOConfig, ModelConfig
from components.models import lora
from components.models.batching import Batch, encode_examples, response_logprobs
from components.models.runtime import Runtime
from components.training.loop import INPUT_TOKENS, QUIET, Harness, Means, Objective, train_supervised


def sequence_logprobs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """log pi(y | x) summed over response tokens, EOS included: (B,)."""
    return (response_logprobs(model, batch) * batch.response_mask).sum(-1)


def dpo_loss(
    logprobs_chosen: torch.Tensor,  # (B,)
    logprobs_rejected: torch.Tensor,  # (B,)
    ref_logprobs_chosen: torch.Tensor,  # (B,)
    ref_logprobs_rejected: torch.Tensor,  # (B,)
    beta: float,
    mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean DPO loss over the pairs (``mean``: over these, or this part's share of the global batch's mean), and the
    implicit rewards of chosen and rejected (B,), detached."""
    rewards_chosen = beta * (logprobs_chosen - ref_logprobs_chosen)
    rewards_rejected = beta * (logprobs_rejected - ref_logprobs_rejected)
    loss = mean(-F.logsigmoid(rewards_chosen - rewards_rejected))
    return loss, rewards_chosen.detach(), rewards_rejected.detach()


def reward_metrics(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, mean: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The implicit rewards' accuracy, margin and means over pairs, each taken with ``mean``."""
    return {
        "reward_accuracy": mean((rewards_chosen > rewards_rejected).float()),
        "margin": mean(rewards_chosen - rewards_rejected),
        "rewards_chosen": mean(rewards_chosen),
        "rewards_rejected": mean(rewards_rejected),
    }


def as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: value.item() for name, value in metrics.items()}


def encode_pairs(tokenizer: PreTrainedTokenizerBase, rows: list[dict], model_cfg: ModelConfig) -> Batch:
    """Chosen in rows [0, B), rejected in rows [B, 2B): one forward pass scores both."""
    prompts = [r["prompt"] for r in rows]
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    return encode_examples(
        tokenizer, prompts + prompts, responses, model_cfg.max_prompt_tokens, model_cfg.max_response_tokens
    )


def pair_logprobs(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probs of a batch from ``encode_pairs``: (B,), (B,)."""
    logprobs = sequence_logprobs(model, batch)
    n = logprobs.shape[0] // 2
    return logprobs[:n], logprobs[n:]


def dpo_objective(
    cfg: DPOConfig,
    tokenizer: PreTrainedTokenizerBase,
    model_cfg: ModelConfig,
    reference: PreTrainedModel,
    runtime: Runtime,
    recent: list[dict[str, float]],
) -> Objective:
    """DPO's loss over the pairs of the global batch (rows carry their pair ``index``). The reference's log-probs
    are computed the first time a pair is drawn and cached; ``recent`` keeps the last 20 steps' metrics."""
    ref_cache: dict[int, tuple[float, float]] = {}  # pair index -> (ref_logprobs_chosen, ref_logprobs_rejected)

    def encode(rows: list[dict]):
        batch = encode_pairs(tokenizer, rows, model_cfg).to(runtime.device)
        missing = [k for k, r in enumerate(rows) if r["index"] not in ref_cache]
        if missing:
            with torch.no_grad(), runtime.autocast():
                ref_chosen, ref_rejected = pair_logprobs(
                    reference, encode_pairs(tokenizer, [rows[k] for k in missing], model_cfg).to(runtime.device)
                )
            for k, c, r in zip(missing, ref_chosen.tolist(), ref_rejected.tolist()):
                ref_cache[rows[k]["index"]] = (c, r)
        ref_logprobs = torch.tensor([ref_cache[r["index"]] for r in rows], device=runtime.device)  # (B, 2)
        pairs = torch.tensor(float(len(rows)), device=runtime.device)
        return (batch, ref_logprobs), {"pairs": pairs, INPUT_TOKENS: batch.attention_mask.float().sum()}

    def loss(model: torch.nn.Module, inputs, mean: Means):
        batch, ref_logprobs = inputs
        logprobs_chosen, logprobs_rejected = pair_logprobs(model, batch)
        pair_mean = partial(mean, "pairs")
        loss, rewards_chosen, rewards_rejected = dpo_loss(
            logprobs_chosen, logprobs_rejected, ref_logprobs[:, 0], ref_logprobs[:, 1], cfg.beta, pair_mean
        )
        return loss, reward_metrics(rewards_chosen, rewards_rejected, pair_mean)

    def after_step(metrics: dict[str, float]) -> None:
        recent.append(metrics)
        del recent[:-20]

    return Objective(encode, loss, after_step)


def train_dpo(
    sft_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    preferences: list[dict],
    cfg: DPOConfig,
    model_cfg: ModelConfig,
    seed: int,
    reference: PreTrainedModel | None = None,
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Train a copy of ``sft_policy`` (left untouched) with DPO; returns (model, metrics, history).

    ``reference`` defaults to the SFT policy frozen (the policy with its adapters off, when it is adapted: one copy of
    the base weights); one passed in must already be frozen.
    history entries: step, loss, grad_norm, lr, reward_accuracy, margin, rewards_chosen, rewards_rejected
    (implicit rewards of the step's batch).
    metrics: first_loss, final_loss, steps, and reward_accuracy / margin averaged over the last
    ``min(20, steps)`` training batches.
    """
    runtime = harness.runtime
    torch.manual_seed(seed)
    policy = lora.for_training(copy.deepcopy(sft_policy), model_cfg)
    counts = lora.parameter_counts(policy)
    if reference is None:
        reference = lora.reference_for(policy, sft_policy)
    if any(p.requires_grad for p in reference.parameters()):
        raise ValueError("the DPO reference must be frozen (requires_grad False); use frozen_copy()")
    reference = runtime.to_device(reference).eval()
    examples = [{"index": i, **row} for i, row in enumerate(preferences)]
    recent: list[dict[str, float]] = []
    objective = dpo_objective(cfg, tokenizer, model_cfg, reference, runtime, recent)
    policy, history = train_supervised("dpo", policy, examples, objective, cfg, seed, dropout=False, harness=harness)
    metrics = {
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "steps": history[-1]["step"] + 1,
        "reward_accuracy": sum(m["reward_accuracy"] for m in recent) / len(recent),
        "margin": sum(m["margin"] for m in recent) / len(recent),
        **counts,
    }
    return policy, metrics, history


@torch.no_grad()
def evaluate_dpo(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    preferences: list[dict],
    beta: float,
    model_cfg: ModelConfig,
    batch_size: int = 64,
) -> dict[str, float]:
    """Implicit-reward accuracy, margin and mean rewards of ``policy`` on ``preferences`` (e.g. held-out pairs)."""
    was_training = policy.training
    policy.eval()
    reference.eval()
    chosen, rejected = [], []
    for start in range(0, len(preferences), batch_size):
        batch = encode_pairs(tokenizer, preferences[start : start + batch_size], model_cfg)
        logprobs_chosen, logprobs_rejected = pair_logprobs(policy, batch)
        ref_chosen, ref_rejected = pair_logprobs(reference, batch)
        chosen.append(beta * (logprobs_chosen - ref_chosen))
        rejected.append(beta * (logprobs_rejected - ref_rejected))
    policy.train(was_training)
    return as_floats(reward_metrics(torch.cat(chosen), torch.cat(rejected), torch.mean))
