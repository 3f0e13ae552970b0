"""Whether a batch can be shared between ranks: the rules the training loops check before their first step, and the
run checks on the config before any work (so this module imports neither torch nor transformers)."""

from __future__ import annotations

from components.config import OptimConfig, PPOConfig


def check_divisible(stage: str, cfg: OptimConfig, world_size: int) -> None:
    """Every rank's share of a batch must fill every micro-batch."""
    if cfg.batch_size < world_size * cfg.gradient_accumulation_steps:
        raise ValueError(
            f"{stage}.batch_size ({cfg.batch_size}) is smaller than the processes ({world_size}) x "
            f"{stage}.gradient_accumulation_steps ({cfg.gradient_accumulation_steps}): a micro-batch would be empty"
        )


def check_shardable(cfg: PPOConfig, world_size: int, group_size: int = 1) -> None:
    """Every rank gets an equal shard of each rollout batch and of each minibatch (split into micro-batches); with
    ``group_size`` responses per prompt, a whole number of prompts, so every group stays on one rank."""
    per_rank = cfg.minibatch_size // world_size
    if (
        cfg.rollout_batch_size % world_size
        or cfg.minibatch_size % world_size
        or per_rank % cfg.gradient_accumulation_steps
    ):
        raise ValueError(
            f"ppo.rollout_batch_size ({cfg.rollout_batch_size}) and ppo.minibatch_size ({cfg.minibatch_size}) "
            f"must be multiples of the number of processes ({world_size}), and minibatch_size / processes "
            f"of ppo.gradient_accumulation_steps ({cfg.gradient_accumulation_steps})"
        )
    prompts = cfg.rollout_batch_size // group_size
    if cfg.rollout_batch_size % group_size or prompts % world_size:
        raise ValueError(
            f"ppo.rollout_batch_size ({cfg.rollout_batch_size}) / rl.samples_per_prompt ({group_size}) prompts per "
            f"iteration must be a multiple of the number of processes ({world_size}): a prompt's group stays whole"
        )
