"""REINFORCE++ (Hu 2025): REINFORCE with PPO's per-token KL penalty in the reward and the return normalised over the
global batch, instead of a critic's baseline.

Per-token rewards r_t = -kl_coef * (log pi - log pi_ref) on every token, plus the reward model's score on the last;
the return G_t = sum_{s >= t} gamma^(s - t) r_s; the advantage is G_t whitened over every token of the batch (every
rank's), so one prompt's responses need no group of their own.
"""

from __future__ import annotations

import torch

from components.config import PPOConfig
from components.models.runtime import Runtime
from components.training.ppo import Advantages, Algorithm, Rollouts, kl_penalised_rewards, whiten


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_(t+1) over response tokens, 0 past EOS: (B, R)."""
    mask = response_mask.float()
    returns = torch.zeros_like(rewards)
    following = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        following = (rewards[:, t] + gamma * following) * mask[:, t]
        returns[:, t] = following
    return returns


@torch.no_grad()
def compute_advantages(rollouts: Rollouts, kl_coef: float, gamma: float, runtime: Runtime) -> Advantages:
    rewards, kl = kl_penalised_rewards(
        rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs, rollouts.batch.response_mask, kl_coef
    )
    returns = discounted_returns(rewards, rollouts.batch.response_mask, gamma)
    return Advantages(rewards, kl, whiten(returns, rollouts.mask, runtime=runtime))


def algorithm(cfg: PPOConfig) -> Algorithm:
    def advantages(rollouts: Rollouts, kl_coef: float, runtime: Runtime) -> Advantages:
        return compute_advantages(rollouts, kl_coef, cfg.gamma, runtime)

    return Algorithm("reinforce_pp", advantages)
