"""PPO's pieces against hand-computed numbers."""

import pytest
import torch

from components.config import KLControlConfig
from components.training.ppo import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    explained_variance,
    kl_penalised_rewards,
    whiten,
)


def test_gae_matches_a_trajectory_computed_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: d=1-0.7=0.3; t=1: d=0.9*0.7-0.6=0.03, A=0.03+0.72*0.3; t=0: d=0.9*0.6-0.5=0.04, A=0.04+0.72*0.246
    assert advantages.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0])


def test_returns_with_a_bootstrap_value_for_a_truncated_response():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 3), 0.9, 0.8, bootstrap_values=torch.tensor([2.0]))
    # t=2: d=1+0.9*2-0.7=2.1; t=1: 0.03+0.72*2.1=1.542; t=0: 0.04+0.72*1.542=1.15024
    assert advantages.tolist()[0] == pytest.approx([1.15024, 1.542, 2.1])
    assert returns.tolist()[0] == pytest.approx([1.65024, 2.142, 2.8])


def test_nothing_flows_past_eos():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    a1, _ = compute_gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.2, 0.3, 9.0]]), mask, 1.0, 0.95)
    a2, _ = compute_gae(torch.tensor([[0.0, 1.0, -7.0]]), torch.tensor([[0.2, 0.3, -3.0]]), mask, 1.0, 0.95)
    assert torch.equal(a1, a2) and a1[0, 2] == 0
    assert a1[0, 1].item() == pytest.approx(1.0 - 0.3)  # EOS step is terminal


def test_kl_penalty_on_every_token_and_score_on_the_last_only():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # EOS at index 2, padding after
    rewards, kl = kl_penalised_rewards(torch.tensor([3.0]), logprobs, ref_logprobs, mask, kl_coef=0.1)
    assert kl.tolist()[0] == pytest.approx([0.5, -1.0, 0.0, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 3.0, 0.0])


def test_kl_estimator_is_unbiased_for_the_sequence_kl():
    torch.manual_seed(0)
    pi = torch.tensor([0.6, 0.3, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    samples = torch.multinomial(pi, 200_000, replacement=True)
    estimate = (pi.log()[samples] - ref.log()[samples]).mean()
    exact = (pi * (pi / ref).log()).sum()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.01)


def test_whitening_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w[0, :3].var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3] == 0
    kept = whiten(x, mask, shift_mean=False)
    assert kept[0, :3].mean().item() == pytest.approx(2.0, abs=1e-5)


def _grad_of_policy_loss(ratio: float, advantage: float) -> float:
    old = torch.zeros(1, 1)
    new = torch.tensor([[torch.log(torch.tensor(ratio)).item()]], requires_grad=True)
    loss, _ = clipped_policy_loss(new, old, torch.tensor([[advantage]]), torch.ones(1, 1), cliprange=0.2)
    loss.backward()
    return new.grad.item()


def test_clip_removes_the_gradient_outside_the_trust_region():
    assert _grad_of_policy_loss(1.5, advantage=1.0) == 0.0  # gain already taken: clipped
    assert _grad_of_policy_loss(0.5, advantage=-1.0) == 0.0
    assert _grad_of_policy_loss(1.1, advantage=1.0) == pytest.approx(-1.1)  # inside: d(-A*r)/dlogp = -A*r
    assert _grad_of_policy_loss(0.5, advantage=1.0) == pytest.approx(-0.5)  # pessimistic side keeps the gradient


def test_policy_loss_reports_clip_fraction():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]]))
    _, stats = clipped_policy_loss(new, old, torch.ones(1, 2), torch.ones(1, 2), 0.2)
    assert stats["clipfrac"] == pytest.approx(0.5)


def test_value_clipping_takes_the_pessimistic_loss():
    old, returns, mask = torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1)
    loss, stats = clipped_value_loss(torch.tensor([[1.0]]), old, returns, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.2 - 1.0) ** 2) and stats["value_clipfrac"] == 1.0
    loss, _ = clipped_value_loss(torch.tensor([[0.1]]), old, returns, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.9**2)


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    ctl = KLController(KLControlConfig(kl_coef=0.1, adaptive=True, target=6.0, horizon=1000))
    ctl.update(current_kl=12.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(current_kl=3.0, n_steps=100)
    assert ctl.value < 0.1 * 1.02
    fixed = KLController(KLControlConfig(kl_coef=0.1, adaptive=False))
    fixed.update(100.0, 100)
    assert fixed.value == 0.1


def test_explained_variance_is_one_for_perfect_values_and_zero_for_the_mean():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), returns, mask) == pytest.approx(0.0, abs=1e-6)


def test_ensemble_reward_by_hand():
    from components.training.ppo import ensemble_reward

    scores = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0]])  # two responses, three members
    assert ensemble_reward(scores, "mean", 1.0).tolist() == [2.0, 2.0]
    assert ensemble_reward(scores, "min", 1.0).tolist() == [1.0, 2.0]
    # mean - 0.5 * sample std: std of (1, 3, 2) is 1, of (2, 2, 2) is 0
    assert ensemble_reward(scores, "mean_minus_std", 0.5).tolist() == pytest.approx([1.5, 2.0])
    assert ensemble_reward(scores[:, :1], "mean_minus_std", 0.5).tolist() == [1.0, 2.0]  # one member: its score


def test_ensemble_agreement_counts_pairs_every_member_orders_alike():
    from components.training.reward import ensemble_agreement

    margins = torch.tensor([[0.5, 0.2], [-0.1, -0.3], [0.4, -0.2], [0.0, 0.1]])  # r(chosen) - r(rejected), two members
    assert ensemble_agreement(margins) == pytest.approx(0.5)  # rows 0 and 1 agree; a tie is not a win
