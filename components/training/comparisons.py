"""Comparison collection (InstructGPT step 2): K samples per training prompt from the SFT policy, ranked.

For every training prompt the SFT policy samples K responses; a labeler ranks them and every one
of the K*(K-1)/2 pairs becomes a preference row ``{prompt, chosen, rejected, chosen_position}``,
the schema of the static preference file. The order comes from the caller's ``Ranker`` (the one type of a
labeller anywhere in the project: the embedded task's simulated labeller, or a user's); this module samples
the responses and turns each ranked group into pairs.

A response that hit the length limit without emitting EOS is kept and marked: the ranker is told
(``ended``), because the gold judge penalises responses that never end, and the row records it
(``chosen_ended`` / ``rejected_ended``) so the reward model's accuracy can be checked against the
gold judge later. No gold score is ever written into the rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ComparisonsConfig, ModelConfig
from components.models.batching import encode_prompts
from components.models.generation import decode_responses, generate

Ranker = Callable[[str, list[str], list[bool]], list[int]]  # (prompt, responses, ended) -> indices, best first
# (prompts, each prompt's K sampled (response, ended)) -> preference rows
Labeller = Callable[[Sequence[str], Sequence[Sequence[tuple[str, bool]]]], list[dict]]
SOURCE = "sft_samples"  # the ``source`` of the rows ranked from policy samples


def ranked_pairs(prompt: str, samples: Sequence[tuple[str, bool]], rank: Ranker) -> list[tuple[dict, bool, bool]]:
    """Every pair of one prompt's responses in the order ``rank`` gives them (InstructGPT's K-choose-2), each with
    the two responses' ``ended`` flags.

    Identical responses are collapsed first (the first copy and its flag kept), so chosen never equals rejected;
    ``chosen_position`` records whether the chosen response was shown first (0) or second (1).
    """
    ended: dict[str, bool] = {}
    for text, flag in samples:
        ended.setdefault(text, flag)
    responses = list(ended)
    if len(responses) < 2:
        return []
    order = rank(prompt, responses, [ended[r] for r in responses])
    place = {index: position for position, index in enumerate(order)}
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            first_wins = place[i] < place[j]
            chosen, rejected = (responses[i], responses[j]) if first_wins else (responses[j], responses[i])
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_position": 0 if first_wins else 1}
            pairs.append((row, ended[chosen], ended[rejected]))
    return pairs


def rank_sampled(
    prompts: Sequence[str],
    groups: Sequence[Sequence[tuple[str, bool]]],
    rank: Ranker,
    min_words: int = 1,
    prompt_ids: Mapping[str, str] | None = None,
) -> list[dict]:
    """Every ranked pair of each prompt's sampled responses (``ranked_pairs``), as preference rows.

    Responses with fewer than ``min_words`` whitespace-separated words (the preferences contract refuses them)
    are dropped before ranking; a ``(prompt, chosen, rejected)`` already emitted by an earlier group is not
    emitted again. ``prompt_ids`` names the prompts that have an id in the data.
    """
    prompt_ids = prompt_ids or {}
    rows: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for group, (prompt, samples) in enumerate(zip(prompts, groups, strict=True)):
        kept = [(text, ended) for text, ended in samples if len(text.split()) >= min_words]
        for pair, chosen_ended, rejected_ended in ranked_pairs(prompt, kept, rank):
            key = (pair["prompt"], pair["chosen"], pair["rejected"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    **pair,
                    **({"prompt_id": prompt_ids[prompt]} if prompt in prompt_ids else {}),
                    "source": SOURCE,
                    "group": group,  # the K responses ranked together: the reward model holds out whole groups
                    "chosen_ended": chosen_ended,
                    "rejected_ended": rejected_ended,
                }
            )
    return rows


def sampled_labeller(rank: Ranker, min_words: int = 1, prompt_ids: Mapping[str, str] | None = None) -> Labeller:
    """``rank_sampled`` with ``rank``: what comparison collection hands the policy's samples to."""

    def label(prompts: Sequence[str], groups: Sequence[Sequence[tuple[str, bool]]]) -> list[dict]:
        return rank_sampled(prompts, groups, rank, min_words, prompt_ids)

    return label


def draw_prompts(prompts: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` training prompts drawn with replacement (seeded) from the distinct ``prompts``."""
    distinct = sorted(set(prompts))
    rng = random.Random(f"{seed}/comparison-prompts")
    return [rng.choice(distinct) for _ in range(n)]


def sample_responses(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    k: int,
    temperature: float,
    batch_size: int,
    model_cfg: ModelConfig,
    seed: int,
) -> list[list[tuple[str, bool]]]:
    """K sampled ``(response, ended)`` per prompt; ``batch_size`` prompts (K rows each) per generate call."""
    torch.manual_seed(seed)
    groups: list[list[tuple[str, bool]]] = []
    for start in range(0, len(prompts), batch_size):
        # each prompt repeated K times in a row: the K samples of one prompt are contiguous
        repeated = [p for p in prompts[start : start + batch_size] for _ in range(k)]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, repeated, model_cfg.max_prompt_tokens)
        rollout = generate(
            policy,
            prompt_ids,
            prompt_mask,
            model_cfg.max_response_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            temperature,
        )
        samples = list(zip(decode_responses(tokenizer, rollout.batch), rollout.ended.tolist()))
        groups += [samples[i : i + k] for i in range(0, len(samples), k)]
    return groups


def sample_reference(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_cfg: ModelConfig,
    temperature: float,
    batch_size: int,
    seed: int,
) -> list[tuple[str, str]]:
    """One sample per prompt as ``(prompt, response)``: the SFT samples the reward model is normalised on."""
    groups = sample_responses(policy, tokenizer, prompts, 1, temperature, batch_size, model_cfg, seed)
    return [(prompt, text) for prompt, ((text, _),) in zip(prompts, groups, strict=True)]


def collect_sft_comparisons(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ComparisonsConfig,
    model_cfg: ModelConfig,
    labeller: Labeller,
    seed: int,
) -> list[dict]:
    """Sample K = ``cfg.responses_per_prompt`` responses per prompt at ``cfg.temperature`` and have
    ``labeller`` rank them into preference rows.

    For the embedded task's labeller the rows are ``{prompt, chosen, rejected, chosen_position, prompt_id,
    source, group, chosen_ended, rejected_ended}``: up to K*(K-1)/2 per prompt (fewer when samples repeat
    or are shorter than the data contract's minimum length).
    """
    groups = sample_responses(
        policy, tokenizer, prompts, cfg.responses_per_prompt, cfg.temperature, cfg.batch_size, model_cfg, seed
    )
    return labeller(prompts, groups)
