"""Comparison collection (InstructGPT step 2): K samples per training prompt from the SFT policy, ranked.

For every training prompt the SFT policy samples K responses; a labeller (``components.data.ranking``: the one
``Ranker`` type, the embedded task's simulated labeller or a user's) ranks them and every one of the K*(K-1)/2 pairs
becomes a preference row ``{prompt, chosen, rejected, chosen_position}``, the schema of the static preference file.
This module draws the prompts and samples the responses. No gold score is ever written into the rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ComparisonsConfig, ModelConfig
from components.data.ranking import Labeller
from components.models.decoding import Decoder, decode
from components.models.runtime import SINGLE, Runtime


def draw_prompts(prompts: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` training prompts drawn with replacement (seeded) from the distinct ``prompts``."""
    distinct = sorted(set(prompts))
    rng = random.Random(f"{seed}/comparison-prompts")
    return [rng.choice(distinct) for _ in range(n)]


def sample_responses(
    policy: PreTrainedModel, prompts: Sequence[str], decoder: Decoder, k: int, temperature: float, batch_size: int
) -> list[list[tuple[str, bool]]]:
    """K sampled ``(response, ended)`` per prompt; ``batch_size`` prompts (K rows each) per generate call."""
    samples = decode(policy, prompts, decoder, batch_size, temperature, repeat=k)
    return [samples[i : i + k] for i in range(0, len(samples), k)]


def sample_reference(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    model_cfg: ModelConfig,
    temperature: float,
    batch_size: int,
    seed: int,
    runtime: Runtime = SINGLE,
) -> list[tuple[str, str]]:
    """One sample per prompt as ``(prompt, response)``: the SFT samples the reward model is normalised on."""
    groups = sample_responses(policy, prompts, Decoder(tokenizer, model_cfg, seed, runtime), 1, temperature, batch_size)
    return [(prompt, text) for prompt, ((text, _),) in zip(prompts, groups, strict=True)]


def collect_sft_comparisons(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: ComparisonsConfig,
    model_cfg: ModelConfig,
    labeller: Labeller,
    seed: int,
    runtime: Runtime = SINGLE,
) -> list[dict]:
    """Sample K = ``cfg.responses_per_prompt`` responses per prompt at ``cfg.temperature`` and have
    ``labeller`` rank them into preference rows.

    For the embedded task's labeller the rows are ``{prompt, chosen, rejected, chosen_position, prompt_id,
    source, group, chosen_ended, rejected_ended}``: up to K*(K-1)/2 per prompt (fewer when samples repeat
    or are shorter than the data contract's minimum length).
    """
    decoder = Decoder(tokenizer, model_cfg, seed, runtime)
    groups = sample_responses(policy, prompts, decoder, cfg.responses_per_prompt, cfg.temperature, cfg.batch_size)
    return labeller(prompts, groups)
