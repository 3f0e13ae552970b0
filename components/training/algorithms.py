"""The RL algorithm a config names, ready for the shared loop (``ppo.train_ppo``)."""

from __future__ import annotations

from components.config import ModelConfig, PPOConfig, RLConfig
from components.training import grpo, reinforce_pp, rloo
from components.training.ppo import Algorithm, ppo_algorithm


def rl_algorithm(rl: RLConfig, cfg: PPOConfig, model_cfg: ModelConfig) -> Algorithm:
    if rl.algorithm == "rloo":
        return rloo.algorithm(rl.samples_per_prompt)
    if rl.algorithm == "grpo":
        return grpo.algorithm(rl.samples_per_prompt, rl.grpo_variant, model_cfg.max_response_tokens)
    if rl.algorithm == "reinforce_pp":
        return reinforce_pp.algorithm(cfg)
    return ppo_algorithm(cfg)
