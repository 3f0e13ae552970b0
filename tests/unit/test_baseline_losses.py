"""The baselines' losses on hand-computed cases, and DPO's reference staying frozen."""

import copy
import math

import pytest
import torch

from components.config import DPOConfig, ModelConfig
from components.models.builders import build_policy, frozen_copy
from components.models.tokenizer import build_word_tokenizer
from components.task.lexicon import VOCABULARY
from components.training.combined import (
    ResponseTokens,
    combined_loss,
    not_in_chosen_mask,
    penalised_mask,
    shared_prefix_mask,
    unlikelihood,
)
from components.training.dpo import dpo_loss, encode_pairs, pair_logprobs, train_dpo

TINY = ModelConfig(n_layer=1, n_embd=32, n_head=2, max_prompt_tokens=12, max_response_tokens=12)
PAIRS = [
    {
        "prompt": "write a positive review of the kettle.",
        "chosen": "the lid is great.",
        "rejected": "the lid is awful.",
    },
    {
        "prompt": "write a negative review of the camera.",
        "chosen": "the screen is poor.",
        "rejected": "the screen is nice. the screen is nice.",
    },
    {
        "prompt": "write a positive review of the blender.",
        "chosen": "i love this blender.",
        "rejected": "i want to return this blender",
    },
    {
        "prompt": "write a negative review of the backpack.",
        "chosen": "the zipper is bad.",
        "rejected": "the the zipper is great.",
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(VOCABULARY)


@pytest.fixture
def policy(tokenizer):
    return build_policy(TINY, tokenizer, seed=0)


# --- DPO -------------------------------------------------------------------------------------


def test_dpo_loss_is_log_2_per_pair_when_policy_equals_reference(policy, tokenizer):
    reference = frozen_copy(policy)
    batch = encode_pairs(tokenizer, PAIRS, TINY)
    policy.eval()
    logprobs_chosen, logprobs_rejected = pair_logprobs(policy, batch)
    ref_chosen, ref_rejected = pair_logprobs(reference, batch)
    loss, rewards_chosen, rewards_rejected = dpo_loss(
        logprobs_chosen, logprobs_rejected, ref_chosen, ref_rejected, beta=0.1
    )
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.allclose(rewards_chosen, torch.zeros(len(PAIRS)), atol=1e-6)
    assert torch.allclose(rewards_rejected, torch.zeros(len(PAIRS)), atol=1e-6)


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected_by_beta_times_sigmoid_of_minus_margin():
    # one pair: margin = beta * ((-1 - -2) - (-3 - -3)) = 0.5 * 1 = 0.5
    logprobs_chosen = torch.tensor([-1.0], requires_grad=True)
    logprobs_rejected = torch.tensor([-3.0], requires_grad=True)
    loss, _, _ = dpo_loss(logprobs_chosen, logprobs_rejected, torch.tensor([-2.0]), torch.tensor([-3.0]), beta=0.5)
    loss.backward()
    sigmoid_minus_margin = 1 / (1 + math.exp(0.5))  # 0.3775...
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), abs=1e-6)
    assert logprobs_chosen.grad.item() == pytest.approx(
        -0.5 * sigmoid_minus_margin, abs=1e-6
    )  # descent raises log pi(chosen)
    assert logprobs_rejected.grad.item() == pytest.approx(
        +0.5 * sigmoid_minus_margin, abs=1e-6
    )  # and lowers log pi(rejected)


def test_one_dpo_step_lowers_the_loss_and_raises_chosen_relative_to_rejected(policy, tokenizer):
    reference = frozen_copy(policy)
    batch = encode_pairs(tokenizer, PAIRS, TINY)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logprobs(reference, batch)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)

    def step_loss():
        logprobs_chosen, logprobs_rejected = pair_logprobs(policy, batch)
        loss, _, _ = dpo_loss(logprobs_chosen, logprobs_rejected, ref_chosen, ref_rejected, beta=0.1)
        return loss, (logprobs_chosen - logprobs_rejected).detach()

    loss_before, gap_before = step_loss()
    optimizer.zero_grad()
    loss_before.backward()
    optimizer.step()
    loss_after, gap_after = step_loss()
    assert loss_after.item() < loss_before.item() - 1e-4
    assert (gap_after - gap_before).mean().item() > 0


def test_dpo_training_leaves_the_reference_and_the_sft_policy_untouched(policy, tokenizer):
    reference = frozen_copy(policy)
    reference_before = copy.deepcopy(reference.state_dict())
    sft_before = copy.deepcopy(policy.state_dict())
    cfg = DPOConfig(epochs=3, batch_size=2, lr=1e-2, warmup_steps=0, log_every=1)
    trained, _, history = train_dpo(policy, tokenizer, PAIRS, cfg, TINY, seed=0, reference=reference)
    assert all(not p.requires_grad for p in reference.parameters())
    assert not reference.training
    for name, value in reference.state_dict().items():
        assert torch.equal(value, reference_before[name]), name
    for name, value in policy.state_dict().items():
        assert torch.equal(value, sft_before[name]), name
    assert any(not torch.equal(v, sft_before[k]) for k, v in trained.state_dict().items())  # the copy did move
    assert len(history) == 6


def test_dpo_refuses_a_reference_that_is_not_frozen(policy, tokenizer):
    with pytest.raises(ValueError, match="frozen"):
        train_dpo(
            policy, tokenizer, PAIRS, DPOConfig(epochs=1, batch_size=2), TINY, seed=0, reference=copy.deepcopy(policy)
        )


# --- likelihood + unlikelihood -----------------------------------------------------------------


def test_unlikelihood_of_a_token_at_probability_one_half_is_minus_log_one_half():
    assert unlikelihood(torch.tensor([math.log(0.5)])).item() == pytest.approx(-math.log(0.5), abs=1e-6)


def test_unlikelihood_stays_finite_for_a_certain_token_and_is_about_p_for_a_rare_one():
    assert unlikelihood(torch.tensor([0.0]), min_one_minus_p=1e-5).item() == pytest.approx(
        -math.log(1e-5), rel=1e-3
    )  # float32 rounds 1 - 1e-5
    assert unlikelihood(torch.tensor([math.log(1e-8)])).item() == pytest.approx(1e-8, rel=1e-3)


def _logits_for(probabilities: list[float]) -> torch.Tensor:
    """(1, R, 2) logits whose softmax puts ``p`` on token 0 and ``1 - p`` on token 1 at each position."""
    return torch.tensor([[[math.log(p), math.log(1 - p)] for p in probabilities]])


def test_combined_loss_is_likelihood_plus_coef_times_unlikelihood_on_a_hand_computed_case():
    # chosen: tokens (0, 0) at p = (0.5, 0.75); rejected: tokens (0, 1, 0) at p(token 0) = (0.25, 0.5, 0.9),
    # the third rejected token is padding (mask 0), so the rejected tokens have p = 0.25 and 1 - 0.5 = 0.5
    chosen_logits = _logits_for([0.5, 0.75])
    rejected_logits = _logits_for([0.25, 0.5, 0.9])
    coef = 0.3
    loss, metrics = combined_loss(
        ResponseTokens(chosen_logits, torch.tensor([[0, 0]]), torch.tensor([[1, 1]])),
        ResponseTokens(rejected_logits, torch.tensor([[0, 1, 0]]), torch.tensor([[1, 1, 0]])),
        unlikelihood_coef=coef,
    )
    likelihood = (-math.log(0.5) - math.log(0.75)) / 2
    unlikely = (-math.log(1 - 0.25) - math.log(1 - 0.5)) / 2
    assert metrics["likelihood"] == pytest.approx(likelihood, abs=1e-6)
    assert metrics["unlikelihood"] == pytest.approx(unlikely, abs=1e-6)
    assert loss.item() == pytest.approx(likelihood + coef * unlikely, abs=1e-6)


def test_shared_prefix_mask_covers_only_the_common_opening_of_chosen_and_rejected():
    chosen = torch.tensor([[5, 6, 7, 1, 0], [5, 6, 1, 0, 0]])
    chosen_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    rejected = torch.tensor([[5, 6, 9, 7, 1], [8, 6, 1, 0, 0]])
    rejected_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    expected = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])  # a later match (6, EOS) is not a shared prefix
    assert torch.equal(shared_prefix_mask(chosen, chosen_mask, rejected, rejected_mask), expected)


def test_not_in_chosen_mask_spares_every_token_the_chosen_response_uses():
    chosen = torch.tensor([[5, 6, 7, 1, 0]])
    chosen_mask = torch.tensor([[1, 1, 1, 1, 0]])
    rejected = torch.tensor([[5, 9, 7, 0, 1]])  # 0 is padding in chosen, so it does not count as used
    assert torch.equal(not_in_chosen_mask(chosen, chosen_mask, rejected), torch.tensor([[0, 1, 0, 1, 0]]))
    rejected_mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert torch.equal(
        penalised_mask("not_in_chosen", chosen, chosen_mask, rejected, rejected_mask), torch.tensor([[0, 1, 0, 1, 0]])
    )
    assert torch.equal(penalised_mask("all", chosen, chosen_mask, rejected, rejected_mask), rejected_mask)
    assert torch.equal(
        penalised_mask("after_shared_prefix", chosen, chosen_mask, rejected, rejected_mask),
        torch.tensor([[0, 1, 1, 1, 0]]),
    )


# --- what the supervised baselines train on ----------------------------------------------------


def test_top_ranked_keeps_each_groups_best_response_once():
    """K = 3 ranked a > b > c gives pairs (a, b), (a, c), (b, c): 'chosen' trains on a twice and b once, the
    top-ranked baseline on a once. A static file's pairs are groups of one: their chosen is the best."""
    from components.training.chosen import chosen_examples, top_ranked_examples

    group = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "group": 0},
        {"prompt": "p", "chosen": "a", "rejected": "c", "group": 0},
        {"prompt": "p", "chosen": "b", "rejected": "c", "group": 0},
        {"prompt": "q", "chosen": "y", "rejected": "x", "group": 1},
    ]
    assert [e["response"] for e in chosen_examples(group)] == ["a", "a", "b", "y"]
    assert top_ranked_examples(group) == [{"prompt": "p", "response": "a"}, {"prompt": "q", "response": "y"}]
    assert top_ranked_examples(PAIRS) == [{"prompt": r["prompt"], "response": r["chosen"]} for r in PAIRS]


@pytest.mark.parametrize("name", ["chosen", "top_ranked", "combined", "dpo"])
def test_every_baseline_trains_on_the_reward_models_training_split_only(name, monkeypatch, tokenizer, policy):
    """The held-out slice the reward model is measured on is held out from every baseline too."""
    from components.config import load_config
    from components.training import recipe
    from components.training.reward import split_comparisons

    cfg = load_config("smoke")
    rows = [
        {"prompt": f"p{g}", "chosen": f"c{g}-{i}", "rejected": f"r{g}-{i}", "group": g}
        for g in range(40)
        for i in range(3)
    ]
    seen = []
    trainer = {
        "chosen": "train_chosen",
        "top_ranked": "train_top_ranked",
        "combined": "train_combined",
        "dpo": "train_dpo",
    }[name]
    monkeypatch.setattr(
        recipe, trainer, lambda sft, tok, preferences, *args, **kwargs: (seen.extend(preferences) or sft, {}, [])
    )
    recipe.baseline_stage(cfg, name, tokenizer, policy, rows)
    train, held_out = split_comparisons(rows, cfg.reward.valid_fraction, cfg.seed)  # the reward model's own split
    assert held_out and seen == train
    assert not {r["group"] for r in seen} & {r["group"] for r in held_out}
