"""RLOO: REINFORCE with the leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

For each prompt, k responses y_1..y_k. Each one's reward is the reward model's score less the KL penalty summed over
its tokens, R_i = r(x, y_i) - kl_coef * sum_t (log pi - log pi_ref), and its advantage is that reward less the mean
of the other k - 1:

    A_i = R_i - 1/(k-1) * sum_{j != i} R_j

on every token of y_i. The baseline does not depend on y_i, so the policy gradient stays unbiased; no critic learns.
"""

from __future__ import annotations

import torch

from components.models.runtime import Runtime
from components.training.ppo import Advantages, Algorithm, Rollouts, kl_penalised_rewards


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(N * k,) rewards, each prompt's k adjacent -> (N * k,) advantages."""
    grouped = rewards.view(-1, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)
    return (grouped - baseline).view(-1)


@torch.no_grad()
def compute_advantages(rollouts: Rollouts, kl_coef: float, k: int) -> Advantages:
    rewards, kl = kl_penalised_rewards(
        rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs, rollouts.batch.response_mask, kl_coef
    )
    advantages = leave_one_out_advantages(rewards.sum(dim=1), k)
    return Advantages(rewards, kl, advantages.unsqueeze(1) * rollouts.mask)


def algorithm(k: int) -> Algorithm:
    def advantages(rollouts: Rollouts, kl_coef: float, runtime: Runtime) -> Advantages:
        return compute_advantages(rollouts, kl_coef, k)  # each group lies on one rank: nothing to share

    return Algorithm("rloo", advantages, group_size=k)
