"""Decoding many prompts in batches, split between the runtime's processes: the one loop under comparison sampling,
the reward model's reference samples, snapshot selection, best-of-n and the held-out evaluation.

Batch i is seeded with ``seed + i`` and decoded on rank i mod N, and every rank gets every batch's results. A batch's
responses depend on its seed and its prompts only, so a decoding is the same whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.models.batching import encode_prompts
from components.models.generation import Rollout, decode_responses, generate
from components.models.runtime import SINGLE, Runtime

# a batch's rollout -> its results (on the host: they travel between processes), e.g. (text, ended) per row
Read = Callable[[Rollout], list[Any]]


def texts_and_ended(tokenizer: PreTrainedTokenizerBase) -> Read:
    return lambda rollout: list(zip(decode_responses(tokenizer, rollout.batch), rollout.ended.tolist()))


@dataclass(frozen=True)
class Decoder:
    """What decodes a policy's prompts: the tokenizer, the model config's prompt and response lengths, the seed of
    the first batch and the runtime it runs on."""

    tokenizer: PreTrainedTokenizerBase
    model_cfg: ModelConfig
    seed: int
    runtime: Runtime = SINGLE


def decode(
    policy: PreTrainedModel,
    prompts: Sequence[str],
    decoder: Decoder,
    prompts_per_batch: int,
    temperature: float,
    repeat: int = 1,
    greedy: bool = False,
    read: Read | None = None,
) -> list[Any]:
    """Each prompt decoded ``repeat`` times in a row (prompt i's rows are [i * repeat, (i + 1) * repeat)),
    ``prompts_per_batch`` prompts per generate call; ``read(rollout)``'s results of every batch in order, by default
    (text, ended) per row.

    Runs at the runtime's device and precision; the caller's random state is left as it was."""
    tokenizer, model_cfg, seed, runtime = decoder.tokenizer, decoder.model_cfg, decoder.seed, decoder.runtime
    read = read or texts_and_ended(tokenizer)
    policy = runtime.to_device(policy)

    def batch(index: int, chunk: Sequence[str]) -> list[Any]:
        torch.manual_seed(seed + index)
        rows = [p for p in chunk for _ in range(repeat)]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, rows, model_cfg.max_prompt_tokens)
        with torch.inference_mode(), runtime.autocast():
            rollout = generate(
                policy,
                prompt_ids.to(runtime.device),
                prompt_mask.to(runtime.device),
                model_cfg.max_response_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                temperature,
                greedy,
            )
            return read(rollout)

    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return runtime.map_chunks(list(prompts), prompts_per_batch, batch)
