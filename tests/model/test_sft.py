"""SFT: prompt tokens are masked out of the loss, and the loss falls on the demonstrations."""

import statistics

import torch

from components.data.files import DEMONSTRATIONS
from components.evaluation.policy_eval import DecodingMode, sample_responses
from components.models.batching import encode_examples, response_logits
from components.models.decoding import Decoder
from components.task.gold_judge import judge
from components.training.sft import sft_loss
from tests.model.conftest import TINY


def test_sft_loss_counts_response_tokens_only(tiny_sft, tokenizer):
    policy, _ = tiny_sft
    batch = encode_examples(
        tokenizer,
        ["write a positive review of the phone that mentions the battery and the screen."],
        ["the battery lasts all day."],
        24,
        40,
    )
    logits = response_logits(policy, batch)
    mask = batch.response_mask[0].bool()
    manual = torch.nn.functional.cross_entropy(logits[0][mask], batch.response_ids[0][mask])
    assert torch.allclose(sft_loss(policy, batch), manual)
    # a longer prompt changes the context but adds no loss terms: still one term per response token
    assert mask.sum().item() == len(tokenizer("the battery lasts all day.", add_special_tokens=False)["input_ids"]) + 1


def test_sft_loss_falls(tiny_sft):
    _, history = tiny_sft
    # margin: from ~5.3 (uniform over ~210 tokens) to below half of the first logged loss
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]


def test_sft_policy_approaches_the_demonstrations_gold_score(tiny_sft, tokenizer, smoke_rows):
    """The tiny policy (2x64, 300 demonstrations) imitates the demonstrators' mode well and their spread less well.
    Measured (seed 0): greedy closes 82% of the gap from word salad to the demonstrations, sampling 53%."""
    policy, _ = tiny_sft
    demos = smoke_rows[DEMONSTRATIONS]
    demo_gold = statistics.fmean(judge(d["prompt"], d["response"]).score for d in demos)
    prompts = sorted({d["prompt"] for d in demos})[:64]
    untrained = (
        -2.0
    )  # word salad scores far below 0; the demonstrations average about 2 (their stock closing costs 0.7)

    def gold(mode):
        out = sample_responses(policy, prompts, mode, Decoder(tokenizer, TINY, 0), 128)
        return statistics.fmean(judge(p, r, e).score for p, r, e in zip(out.prompts, out.texts, out.ended))

    greedy, sampled = gold(DecodingMode("greedy", True, 1)), gold(DecodingMode("sample", False, 2))
    # margins: greedy closes at least 70% of the gap, sampling at least 40%
    assert greedy > untrained + 0.7 * (demo_gold - untrained), (greedy, demo_gold)
    assert sampled > untrained + 0.4 * (demo_gold - untrained), (sampled, demo_gold)
