"""Sampling responses from a policy: batched, KV-cached, stopping when every row has emitted EOS."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel

from components.models.batching import Batch, join


@dataclass
class Rollout:
    batch: Batch  # prompt + response, response_mask up to and including EOS
    ended: torch.Tensor  # (B,) bool: the response emitted EOS within the length limit


def sampling_config(
    max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float, greedy: bool
) -> GenerationConfig:
    """Exactly softmax(logits / temperature) (or its argmax): every other logits processor off, said explicitly."""
    sampling = (
        {}
        if greedy
        else {
            "temperature": temperature,
            "top_k": 0,
            "top_p": 1.0,
            "typical_p": 1.0,
            "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0,
        }
    )
    return GenerationConfig(
        do_sample=not greedy,
        **sampling,
        repetition_penalty=1.0,
        encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0,
        length_penalty=1.0,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        num_return_sequences=1,
        renormalize_logits=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )


@contextmanager
def _without_model_defaults(policy: PreTrainedModel):
    """transformers fills every field the call leaves unset from the model's own generation_config
    (``bad_words_ids``, ``suppress_tokens``, ``sequence_bias``, ...): hand it a blank one meanwhile."""
    own = policy.generation_config
    policy.generation_config = GenerationConfig()
    try:
        yield
    finally:
        policy.generation_config = own


@torch.inference_mode()
def generate(
    policy: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    greedy: bool = False,
) -> Rollout:
    """Sample (or decode greedily) one response per prompt. Uses torch's global RNG: seed it first.

    The distribution is softmax(logits / temperature) and nothing else, whatever the model directory's
    generation_config.json asks for (repetition penalties, top-k, banned words would sample off-policy)."""
    was_training = policy.training
    policy.eval()
    config = sampling_config(max_new_tokens, eos_token_id, pad_token_id, temperature, greedy)
    with _without_model_defaults(policy):
        sequences = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    policy.train(was_training)
    response_ids = sequences[:, prompt_ids.shape[1] :]
    is_eos = response_ids == eos_token_id
    ended = is_eos.any(dim=1)
    # mask: every token up to and including the first EOS
    first_eos = torch.where(
        ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response_ids.shape[1], dtype=torch.long)
    )
    positions = torch.arange(response_ids.shape[1], device=response_ids.device).unsqueeze(0)
    response_mask = (positions <= first_eos.unsqueeze(1)).long() & (positions < response_ids.shape[1]).long()
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id))
    return Rollout(join(prompt_ids, prompt_mask, response_ids.clone(), response_mask), ended)


def decode_responses(tokenizer, batch: Batch) -> list[str]:
    """Response texts without EOS and padding."""
    texts = []
    for ids, mask in zip(batch.response_ids, batch.response_mask):
        tokens = [t for t, m in zip(ids.tolist(), mask.tolist()) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts
