"""GRPO: group-relative advantages (Shao et al. 2024, DeepSeekMath), and Dr. GRPO (Liu et al. 2025).

For each prompt, k responses with rewards R_1..R_k (the score less the summed KL penalty, as for every algorithm
here). GRPO's advantage of y_i, on each of its tokens, is its reward normalised within the group,

    A_i = (R_i - mean(R)) / std(R)

and its loss averages each response over its own tokens before averaging over responses. Dr. GRPO drops both the
division by std(R) and the per-response length average (each token weighs 1 / (responses x length limit)): the two
terms that bias GRPO towards easy prompts and long wrong answers.

Unlike DeepSeekMath, the KL penalty is in the reward, not a k3 term in the loss: on samples of the policy the k3
term's gradient is E_pi[(1 - pi_ref / pi) grad log pi] = grad KL(pi_ref || pi), the forward KL, whose optimum is not
the KL-regularised pi_ref * exp(r / beta) that every other algorithm here reaches.
"""

from __future__ import annotations

import torch

from components.models.runtime import Runtime
from components.training.ppo import Advantages, Algorithm, Rollouts, TokenMean, kl_penalised_rewards

STD_EPS = 1e-4  # keeps a group whose rewards are all equal at advantage 0 rather than 0 / 0


def group_advantages(rewards: torch.Tensor, k: int, scale_by_std: bool) -> torch.Tensor:
    """(N * k,) rewards, each prompt's k adjacent -> (N * k,) advantages."""
    grouped = rewards.view(-1, k)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + STD_EPS)
    return advantages.view(-1)


@torch.no_grad()
def compute_advantages(rollouts: Rollouts, kl_coef: float, k: int, scale_by_std: bool) -> Advantages:
    rewards, kl = kl_penalised_rewards(
        rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs, rollouts.batch.response_mask, kl_coef
    )
    advantages = group_advantages(rewards.sum(dim=1), k, scale_by_std)
    return Advantages(rewards, kl, advantages.unsqueeze(1) * rollouts.mask)


def algorithm(k: int, variant: str, max_response_tokens: int) -> Algorithm:
    dr_grpo = variant == "dr_grpo"

    def advantages(rollouts: Rollouts, kl_coef: float, runtime: Runtime) -> Advantages:
        return compute_advantages(rollouts, kl_coef, k, scale_by_std=not dr_grpo)

    def policy_mean(runtime: Runtime, mask: torch.Tensor) -> TokenMean:
        return runtime.constant_share(mask, max_response_tokens) if dr_grpo else runtime.sequence_share(mask)

    return Algorithm(variant, advantages, group_size=k, policy_mean=policy_mean)
