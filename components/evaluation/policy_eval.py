"""Sampling a policy on held-out prompts and measuring what came out: gold, proxy, KL, length, diversity."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from components.data.text import words
from components.evaluation.intervals import clustered_mean_ci
from components.models.batching import response_logprobs
from components.models.decoding import Decoder, decode
from components.models.ensemble import reward_scores
from components.models.generation import Rollout, decode_responses

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


def sample_responses(
    policy: PreTrainedModel,
    prompts: list[str],
    mode: DecodingMode,
    decoder: Decoder,
    batch_size: int,
    reference: PreTrainedModel | None = None,
    reward_model: PreTrainedModel | None = None,
) -> Responses:
    """Seeded, batched decoding (``batch_size`` responses per batch); scores each response with the RM and its KL
    from ``reference`` if given."""
    tokenizer, runtime = decoder.tokenizer, decoder.runtime
    expanded = [p for p in prompts for _ in range(mode.samples_per_prompt)]
    reference = runtime.to_device(reference) if reference is not None else None
    reward_model = runtime.to_device(reward_model) if reward_model is not None else None

    def read(rollout: Rollout) -> list[tuple]:
        texts, ended = decode_responses(tokenizer, rollout.batch), rollout.ended.tolist()
        rm_scores = (
            reward_scores(reward_model, rollout.batch).tolist() if reward_model is not None else [None] * len(texts)
        )
        kl = [None] * len(texts)
        if reference is not None:
            log_ratio = response_logprobs(policy, rollout.batch) - response_logprobs(reference, rollout.batch)
            kl = (log_ratio * rollout.batch.response_mask.float()).sum(1).tolist()
        return list(zip(texts, ended, rm_scores, kl))

    rows = decode(policy, expanded, decoder, batch_size, mode.temperature, greedy=mode.greedy, read=read)
    return Responses(
        expanded,
        [text for text, _, _, _ in rows],
        [ended for _, ended, _, _ in rows],
        [score for _, _, score, _ in rows] if reward_model is not None else [],
        [kl for _, _, _, kl in rows] if reference is not None else [],
    )


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all responses (diversity)."""
    grams = [tuple(ws[i : i + n]) for ws in (words(t) for t in texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def summarise(responses: Responses, per_prompt: int) -> dict:
    """Means of ``per_prompt`` samples of each prompt: the gold and RM means' intervals are over prompts."""
    lengths = [len(words(t)) for t in responses.texts]
    summary = {
        "n": len(responses.texts),
        "length": statistics.fmean(lengths),
        "unterminated": 1 - statistics.fmean(responses.ended),
        "distinct_1": distinct_n(responses.texts, 1),
        "distinct_2": distinct_n(responses.texts, 2),
    }
    if responses.gold:
        summary["gold"] = clustered_mean_ci(responses.gold, per_prompt).as_dict()
    if responses.rm_scores:
        summary["rm"] = clustered_mean_ci(responses.rm_scores, per_prompt).as_dict()
    if responses.kl:
        summary["kl"] = statistics.fmean(responses.kl)
    return summary
