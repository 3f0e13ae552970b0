"""Reason 3's measurement on the tiny models: each kept pair is one token apart, scored differently by the judge, and
its SFT loss and reward are what a forward pass over that one example alone gives (no batch, no padding)."""

import torch

from components.config import TokenSensitivityConfig
from components.data.files import EVAL_PROMPTS
from components.evaluation.token_sensitivity import edited_pairs
from components.models.batching import encode_examples, response_logits, response_logprobs
from components.models.decoding import Decoder
from components.models.ensemble import reward_scores
from tests.float_error import float32_bound
from tests.model.conftest import SEED, TINY

# batched (left-padded beside other rows) against alone: the same float32 forward pass with its sums in another order;
# NLLs and rewards up to about 10 through two layers of 64-wide dot products and a softmax over the vocabulary
ALONE_TOLERANCE = float32_bound(10.0, 128)  # about 1.5e-4


def letters(prompts, texts, ended):
    """A judge that any replaced word of another length moves: the response's letters."""
    return [float(sum(len(word) for word in text.split())) for text in texts]


def test_each_pair_is_one_token_apart_and_scored_as_it_would_be_alone(
    tiny_sft, tiny_reward_model, tokenizer, smoke_rows
):
    prompts = [row["prompt"] for row in smoke_rows[EVAL_PROMPTS]][:20]
    cfg = TokenSensitivityConfig(prompts=20, tries=8, edits="random")
    pairs = edited_pairs(tiny_sft[0], tiny_reward_model[0], prompts, letters, cfg, Decoder(tokenizer, TINY, SEED))
    assert len(pairs) >= 15  # a random word of another length is the rule, not the exception
    assert len({pair.prompt for pair in pairs}) == len(pairs)  # one pair per prompt: the prompt is the unit
    for pair in pairs:
        original, edited = pair.original.split(), pair.edited.split()
        assert len(original) == len(edited) and sum(a != b for a, b in zip(original, edited)) == 1
        assert pair.gold == tuple(letters(None, [pair.original, pair.edited], None))
        assert pair.gold[0] != pair.gold[1]
        for k, text in enumerate((pair.original, pair.edited)):
            alone = encode_examples(tokenizer, [pair.prompt], [text], TINY.max_prompt_tokens, TINY.max_response_tokens)
            with torch.no_grad():
                nll = -response_logprobs(tiny_sft[0], alone)[alone.response_mask.bool()].mean().item()
                reward = reward_scores(tiny_reward_model[0], alone).item()
            assert abs(pair.sft_loss[k] - nll) < ALONE_TOLERANCE, (k, pair)
            assert abs(pair.rm[k] - reward) < ALONE_TOLERANCE, (k, pair)
    again = edited_pairs(tiny_sft[0], tiny_reward_model[0], prompts, letters, cfg, Decoder(tokenizer, TINY, SEED))
    assert again == pairs  # seeded


def test_a_fluent_edit_puts_one_of_sfts_own_top_k_tokens_in_the_place_of_the_written_one(
    tiny_sft, tiny_reward_model, tokenizer, smoke_rows
):
    """Checked against a forward pass over the original answer alone: at the one place the edit differs, the new token
    is among SFT's top_k there and is not the written one (an off-by-one between logits and tokens would fail)."""
    prompts = [row["prompt"] for row in smoke_rows[EVAL_PROMPTS]][:20]
    cfg = TokenSensitivityConfig(prompts=20, tries=8, edits="fluent", top_k=3)
    pairs = edited_pairs(tiny_sft[0], tiny_reward_model[0], prompts, letters, cfg, Decoder(tokenizer, TINY, SEED))
    assert len(pairs) >= 5
    for pair in pairs:
        original = tokenizer(pair.original, add_special_tokens=False)["input_ids"]
        edited = tokenizer(pair.edited, add_special_tokens=False)["input_ids"]
        assert len(original) == len(edited)
        (place,) = [k for k, (a, b) in enumerate(zip(original, edited)) if a != b]
        alone = encode_examples(
            tokenizer, [pair.prompt], [pair.original], TINY.max_prompt_tokens, TINY.max_response_tokens
        )
        with torch.no_grad():
            logits = response_logits(tiny_sft[0], alone)[0, place].float()
        logits[tokenizer.all_special_ids] = float("-inf")
        logits[original[place]] = float("-inf")
        kth = logits.topk(cfg.top_k).values[-1].item()  # batched and alone may order near-ties differently
        assert logits[edited[place]].item() >= kth - ALONE_TOLERANCE, (pair, place)
