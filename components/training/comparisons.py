"""Comparison collection (InstructGPT step 2): K samples per training prompt from the SFT policy, ranked.

For every training prompt the SFT policy samples K responses; a labeler ranks them and every one
of the K*(K-1)/2 pairs becomes a preference row ``{prompt, chosen, rejected, chosen_position}``,
the schema of the static preference file. The ranking itself is
``components.data.labeler.collect_comparisons``; this module only supplies the sampled responses.

A response that hit the length limit without emitting EOS is kept and marked: the ranker is told
(``ended``), because the gold judge penalises responses that never end, and the row records it
(``chosen_ended`` / ``rejected_ended``) so the reward model's accuracy can be checked against the
gold judge later. No gold score is ever written into the rows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ComparisonsConfig, ModelConfig
from components.data.expectations import word_count
from components.data.gold_judge import gold_score
from components.data.labeler import SimulatedLabeler, collect_comparisons
from components.data.task import parse_prompt
from components.models.batching import encode_prompts
from components.models.generation import decode_responses, generate

Ranker = Callable[[str, list[str], list[bool]], list[int]]  # (prompt, responses, ended) -> indices, best first
SOURCE = "sft_samples"


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


def rank_sampled(
    prompts: Sequence[str], groups: Sequence[Sequence[tuple[str, bool]]], ranker: Ranker, min_words: int = 1
) -> list[dict]:
    """Every ranked pair of each prompt's sampled responses, via ``collect_comparisons``.

    Responses with fewer than ``min_words`` words (the preferences contract refuses them) are
    dropped before ranking; identical responses are collapsed by ``collect_comparisons``; a
    ``(prompt, chosen, rejected)`` already emitted by an earlier group is not emitted again.
    """
    rows: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for group, (prompt, samples) in enumerate(zip(prompts, groups, strict=True)):
        kept = [(text, ended) for text, ended in samples if word_count(text) >= min_words]
        parsed = parse_prompt(prompt)
        for pair, chosen_ended, rejected_ended in _rank_group(prompt, kept, ranker):
            key = (pair["prompt"], pair["chosen"], pair["rejected"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    **pair,
                    **({"prompt_id": parsed.prompt_id} if parsed else {}),
                    "source": SOURCE,
                    "group": group,  # the K responses ranked together: the reward model holds out whole groups
                    "chosen_ended": chosen_ended,
                    "rejected_ended": rejected_ended,
                }
            )
    return rows


def _rank_group(prompt: str, samples: list[tuple[str, bool]], ranker: Ranker) -> list[tuple[dict, bool, bool]]:
    """``collect_comparisons`` on one prompt's pre-sampled responses; each pair with its two ``ended`` flags."""
    # identical texts end identically (a response that fills the limit has no room for EOS);
    # keep the first flag, as collect_comparisons keeps the first copy
    ended: dict[str, bool] = {}
    for text, flag in samples:
        ended.setdefault(text, flag)

    def sample(_: str) -> list[str]:
        return [text for text, _ in samples]

    def rank(p: str, responses: list[str]) -> list[int]:
        return ranker(p, responses, [ended[r] for r in responses])

    return [
        (pair, ended[pair["chosen"]], ended[pair["rejected"]]) for pair in collect_comparisons([prompt], sample, rank)
    ]


def collect_sft_comparisons(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ComparisonsConfig,
    model_cfg: ModelConfig,
    ranker: Ranker,
    seed: int,
    min_words: int = 1,
) -> list[dict]:
    """Sample K = ``cfg.responses_per_prompt`` responses per prompt at ``cfg.temperature`` and rank them.

    Returns preference rows ``{prompt, chosen, rejected, chosen_position, prompt_id, source, group,
    chosen_ended, rejected_ended}``: up to K*(K-1)/2 per prompt (fewer when samples repeat or are
    shorter than ``min_words``; pass ``validation.min_response_words`` to meet the data contract).
    """
    groups = sample_responses(
        policy, tokenizer, prompts, cfg.responses_per_prompt, cfg.temperature, cfg.batch_size, model_cfg, seed
    )
    return rank_sampled(prompts, groups, ranker, min_words)


def simulated_ranker(labeler: SimulatedLabeler) -> Ranker:
    """The embedded task's simulated labeler, told which responses never ended.

    Same Bradley-Terry ranking as ``SimulatedLabeler.rank`` (gold / temperature + Gumbel noise,
    drawn from the labeler's own stream), with the gold judge's ``ended`` flag passed through.
    This is the stand-in for human labellers: it is the one place of comparison collection that
    reads the gold judge, and only to order responses; no score leaves it.
    """

    def rank(prompt: str, responses: list[str], ended: list[bool]) -> list[int]:
        utilities = [
            gold_score(prompt, r, e) / labeler.temperature - math.log(-math.log(labeler.rng.random() or 1e-300))
            for r, e in zip(responses, ended, strict=True)
        ]
        return sorted(range(len(responses)), key=lambda i: -utilities[i])

    return rank
