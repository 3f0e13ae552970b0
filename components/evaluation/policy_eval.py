"""Sampling a policy on held-out prompts and measuring what came out: gold, proxy, KL, length, diversity."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.data.text import words
from components.evaluation.intervals import mean_ci
from components.models.batching import encode_prompts, response_logprobs
from components.models.ensemble import reward_scores
from components.models.generation import decode_responses, generate

GoldFn = Callable[[str, str, bool], float]  # (prompt, response, ended) -> score; evaluation only
Scores = Callable[[list[str], list[str], list[bool]], list[float]]  # a judge: (prompts, responses, ended) -> scores


@dataclass(frozen=True)
class DecodingMode:
    name: str  # "sample" | "greedy"
    greedy: bool
    samples_per_prompt: int
    temperature: float = 1.0


@dataclass
class Responses:
    prompts: list[str]  # one per response: prompt i repeated samples_per_prompt times, in order
    texts: list[str]
    ended: list[bool]
    rm_scores: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # sum over tokens of log pi - log pi_ref
    gold: list[float] = field(default_factory=list)


@torch.inference_mode()
def sample_responses(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    mode: DecodingMode,
    model_cfg: ModelConfig,
    seed: int,
    batch_size: int,
    reference: PreTrainedModel | None = None,
    reward_model: PreTrainedModel | None = None,
) -> Responses:
    """Seeded, batched decoding; scores each response with the RM and its KL from ``reference`` if given."""
    torch.manual_seed(seed)
    expanded = [p for p in prompts for _ in range(mode.samples_per_prompt)]
    out = Responses(expanded, [], [])
    for start in range(0, len(expanded), batch_size):
        chunk = expanded[start : start + batch_size]
        ids, mask = encode_prompts(tokenizer, chunk, model_cfg.max_prompt_tokens)
        rollout = generate(
            policy,
            ids,
            mask,
            model_cfg.max_response_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            mode.temperature,
            mode.greedy,
        )
        out.texts += decode_responses(tokenizer, rollout.batch)
        out.ended += rollout.ended.tolist()
        if reward_model is not None:
            out.rm_scores += reward_scores(reward_model, rollout.batch).tolist()
        if reference is not None:
            response_mask = rollout.batch.response_mask.float()
            log_ratio = response_logprobs(policy, rollout.batch) - response_logprobs(reference, rollout.batch)
            out.kl += (log_ratio * response_mask).sum(1).tolist()
    return out


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all responses (diversity)."""
    grams = [tuple(ws[i : i + n]) for ws in (words(t) for t in texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarise(responses: Responses) -> dict:
    lengths = [len(words(t)) for t in responses.texts]
    summary = {
        "n": len(responses.texts),
        "length": statistics.fmean(lengths),
        "unterminated": 1 - statistics.fmean(responses.ended),
        "distinct_1": distinct_n(responses.texts, 1),
        "distinct_2": distinct_n(responses.texts, 2),
    }
    if responses.gold:
        summary["gold"] = mean_ci(responses.gold).as_dict()
    if responses.rm_scores:
        summary["rm"] = mean_ci(responses.rm_scores).as_dict()
    if responses.kl:
        summary["kl"] = statistics.fmean(responses.kl)
    return summary
