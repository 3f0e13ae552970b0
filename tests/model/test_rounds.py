"""Labelling rounds' training pieces against answers computed another way: PPO continued from a later round's
policy keeps SFT as its KL reference, and iterative DPO is the DPO baseline in round 1 and anchored to SFT after."""

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from components.config import load_config
from components.data.files import DEMONSTRATIONS, PREFERENCES
from components.evaluation.policy_eval import DecodingMode, sample_responses
from components.models.batching import encode_examples
from components.models.decoding import Decoder
from components.training import recipe
from components.training.rounds import RoundLabels
from tests.model.conftest import PPO, SEED, TINY


def perturbed(model, scale: float = 0.05, seed: int = 1):
    """A copy of ``model`` with seeded Gaussian noise on every weight: another policy near it."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return other


def smoke_cfg(**sections):
    cfg = load_config("smoke")
    return cfg.model_copy(update={"model": TINY, "seed": SEED, **sections})


def test_ppo_continued_from_a_later_rounds_policy_measures_its_kl_from_sft(
    tiny_sft, tiny_reward_model, tokenizer, smoke_rows
):
    """From SFT the first rollouts' KL is exactly 0; from another policy it is KL(start || SFT), here estimated
    independently from 2,048 samples of ``start`` scored by both models (agreement within 4 standard errors of the
    difference; and 4 standard errors away from 0, so a reference that were the start policy, KL 0, fails)."""
    sft, rm = tiny_sft[0], tiny_reward_model[0]
    prompts = sorted({d["prompt"] for d in smoke_rows[DEMONSTRATIONS]})
    cfg = smoke_cfg(ppo=PPO.model_copy(update={"iterations": 1, "rollout_batch_size": 256, "minibatch_size": 64}))
    from_sft = recipe.ppo_stage(cfg, tokenizer, sft, rm, prompts, [])
    assert from_sft.history[0]["kl"] == pytest.approx(0.0, abs=1e-6)

    start = perturbed(sft)
    from_start = recipe.ppo_stage(cfg, tokenizer, sft, rm, prompts, [], start=start)
    mode = DecodingMode("sample", greedy=False, samples_per_prompt=1)
    many = [prompts[i % len(prompts)] for i in range(2048)]
    independent = sample_responses(start, many, mode, Decoder(tokenizer, TINY, 5), 256, reference=sft).kl
    mean, spread = statistics.fmean(independent), statistics.stdev(independent)
    difference_se = spread * math.sqrt(1 / 256 + 1 / len(independent))
    assert mean > 4 * spread / math.sqrt(len(independent)), (mean, spread)
    assert from_start.history[0]["kl"] == pytest.approx(mean, abs=4 * difference_se)
    for a, b in zip(start.parameters(), perturbed(sft).parameters()):
        assert torch.equal(a, b), "the start policy handed in is left untouched"


def test_iterative_dpo_round_one_is_the_dpo_baseline(tiny_sft, tokenizer, smoke_rows):
    """One round (the single-round pipeline): iterative DPO from SFT on round 1's labels trains the same weights as
    the DPO baseline, snapshot selection included."""
    cfg = smoke_cfg()
    sft, rows = tiny_sft[0], smoke_rows[PREFERENCES]
    labeller = lambda: lambda prompt, responses, ended: list(range(len(responses)))  # noqa: E731
    baseline = recipe.baseline_stage(cfg, "dpo", tokenizer, sft, rows, make_ranker=labeller)
    iterative = recipe.iterative_dpo_stage(cfg, tokenizer, sft, sft, RoundLabels(1, rows, rows), make_ranker=labeller)
    for (name, a), b in zip(baseline.model.named_parameters(), iterative.model.parameters()):
        assert torch.equal(a, b), name


def sequence_logprob(model, input_ids, attention_mask, response_mask, prompt_width) -> float:
    """log pi(response | prompt) of one encoded row, the padding stripped and the model run on it alone."""
    prompt = input_ids[:prompt_width][attention_mask[:prompt_width].bool()]
    response = input_ids[prompt_width:][response_mask.bool()]
    ids = torch.cat([prompt, response]).unsqueeze(0)
    with torch.no_grad():
        logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) + j - 1, token].item() for j, token in enumerate(response.tolist()))


def test_iterative_dpo_after_round_one_starts_from_the_last_policy_anchored_to_sft(tiny_sft, tokenizer, smoke_rows):
    """Round 2's first loss, over one batch of every training pair, is the DPO loss of the last round's policy
    against SFT: mean of -log sigmoid(beta * ((log pi - log pi_sft)(chosen) - (log pi - log pi_sft)(rejected))),
    computed here row by row. Anchored to the last policy instead, it would be log 2 exactly."""
    rows = smoke_rows[PREFERENCES][:40]
    dpo = load_config("smoke").baselines.dpo.model_copy(update={"batch_size": 64, "epochs": 1, "lr": 1e-12})
    cfg = smoke_cfg(
        baselines=load_config("smoke").baselines.model_copy(update={"dpo": dpo}),
        comparisons=load_config("smoke").comparisons.model_copy(update={"rounds": 3}),
    )
    sft, previous = tiny_sft[0], perturbed(tiny_sft[0])
    result = recipe.iterative_dpo_stage(cfg, tokenizer, sft, previous, RoundLabels(2, rows, rows))

    train, _ = recipe.labelled_split(cfg, rows)
    prompts = [r["prompt"] for r in train]
    batch = encode_examples(
        tokenizer,
        prompts + prompts,
        [r["chosen"] for r in train] + [r["rejected"] for r in train],
        TINY.max_prompt_tokens,
        TINY.max_response_tokens,
    )
    losses = []
    for i in range(len(train)):
        margin = 0.0
        for row, sign in ((i, 1.0), (i + len(train), -1.0)):
            encoded = (batch.input_ids[row], batch.attention_mask[row], batch.response_mask[row], batch.prompt_width)
            margin += sign * (sequence_logprob(previous, *encoded) - sequence_logprob(sft, *encoded))
        losses.append(-F.logsigmoid(torch.tensor(dpo.beta * margin)).item())
    assert result.metrics["first_loss"] == pytest.approx(statistics.fmean(losses), rel=1e-4)
    assert abs(result.metrics["first_loss"] - math.log(2)) > 1e-3
