"""Turning prompts and responses into tensors, and reading log-probs and scores back.

Layout of every batch: ``[left-padded prompt (P) | right-padded response (R)]``. Position ids
count only real tokens, so left padding does not shift positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, P + R)
    attention_mask: torch.Tensor  # (B, P + R)
    response_mask: torch.Tensor  # (B, R): 1 on response tokens up to and including EOS
    prompt_width: int  # P

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def position_ids(self) -> torch.Tensor:
        return position_ids(self.attention_mask)

    def select(self, index: torch.Tensor) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.response_mask[index], self.prompt_width)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device), self.prompt_width
        )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the entries where ``mask`` is 1."""
    mask = mask.float()
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# the token ids of every text a tokenizer has encoded here, forgotten with the tokenizer
_known_ids: WeakKeyDictionary[PreTrainedTokenizerBase, dict[str, list[int]]] = WeakKeyDictionary()


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, without special tokens. A training stage meets the same texts every epoch, so each
    distinct text is tokenized once per tokenizer (one text per call, as the tokenizer would be called anyway)."""
    known = _known_ids.setdefault(tokenizer, {})
    for text in texts:
        if text not in known:
            known[text] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [known[text] for text in texts]


def padded(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of ``rows`` padded to the longest, each built by one tensor call."""
    width = max(len(row) for row in rows)
    fill = [width - len(row) for row in rows]
    if left:
        ids = [[pad_id] * n + row for n, row in zip(fill, rows)]
        mask = [[0] * n + [1] * len(row) for n, row in zip(fill, rows)]
    else:
        ids = [row + [pad_id] * n for n, row in zip(fill, rows)]
        mask = [[1] * len(row) + [0] * n for n, row in zip(fill, rows)]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask; long prompts keep their end (where the request is)."""
    rows = [ids[-max_tokens:] for ids in token_ids(tokenizer, prompts)]
    return padded(rows, tokenizer.pad_token_id, left=True)


def encode_responses(
    tokenizer: PreTrainedTokenizerBase, responses: list[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids ending in EOS (dropped only when the response fills ``max_tokens``)."""
    rows = [[*ids, tokenizer.eos_token_id][:max_tokens] for ids in token_ids(tokenizer, responses)]
    return padded(rows, tokenizer.pad_token_id, left=False)


def join(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> Batch:
    return Batch(
        torch.cat([prompt_ids, response_ids], dim=1),
        torch.cat([prompt_mask, response_mask], dim=1),
        response_mask,
        prompt_ids.shape[1],
    )


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> Batch:
    return join(
        *encode_prompts(tokenizer, prompts, max_prompt_tokens),
        *encode_responses(tokenizer, responses, max_response_tokens),
    )


def encode_demonstrations(tokenizer: PreTrainedTokenizerBase, rows: list[dict], model_cfg: ModelConfig) -> Batch:
    """Demonstration rows ({prompt, response}) as one batch, each side cut to the model's lengths."""
    return encode_examples(
        tokenizer,
        [r["prompt"] for r in rows],
        [r["response"] for r in rows],
        model_cfg.max_prompt_tokens,
        model_cfg.max_response_tokens,
    )


def response_logits(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits that predict each response token: (B, R, V)."""
    logits = model(  # no key/value cache: a scoring or training pass never extends the sequence
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, use_cache=False
    ).logits
    return logits[:, batch.prompt_width - 1 : -1]


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def response_logprobs(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """log pi(token | context) of every response position: (B, R); padding positions are meaningless."""
    return gather_logprobs(response_logits(model, batch), batch.response_ids)


def scores_after_each_token(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_width: int,
) -> torch.Tensor:
    """A one-output sequence classifier's score after every response token: (B, R)."""
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return model.score(hidden[:, prompt_width:]).squeeze(-1).float()


class TokenScores(torch.nn.Module):
    """A scalar-head model read after every response token, as one forward pass that a data-parallel wrapper (DDP, a
    DeepSpeed engine) can own: calling the model's parts one by one would bypass the wrapper's gradient sync."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, prompt_width: int) -> torch.Tensor:
        return scores_after_each_token(self.model, input_ids, attention_mask, position_ids, prompt_width)


def token_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The score after every response token (B, R) of a scalar-head model (its parts: ``base_model``, ``score``), or of
    a ``TokenScores`` (which a data-parallel wrapper may hold)."""
    if hasattr(model, "score"):
        return scores_after_each_token(
            model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_width
        )
    return model(batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_width)


def last_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token (EOS when the response ended): (B,)."""
    return (response_mask.sum(-1) - 1).clamp(min=0)


def sequence_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The score read at the last response token, as reward models are read: (B,)."""
    scores = token_scores(model, batch)
    return scores.gather(1, last_index(batch.response_mask).unsqueeze(1)).squeeze(1)
