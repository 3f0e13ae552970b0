"""The TRL comparison (benchmarks/ppo_vs_trl.py) runs TRL's PPO on this project's schedule: TRL's batch arithmetic
(trl 1.10 PPOTrainer.__init__ and its update loop), worked out by hand below, must give the profile's rollout batch,
minibatches and optimiser steps. TRL itself is not needed here."""

import math

from benchmarks.ppo_vs_trl import steady_seconds, trl_settings
from components.config import load_config


def test_trl_runs_the_profiles_batch_epochs_minibatches_and_optimiser_steps():
    cfg = load_config("default", [])
    iterations = 6
    settings = trl_settings(cfg, iterations, "/unused")

    # TRL: local_batch_size = per_device_train_batch_size x gradient_accumulation_steps (one process)
    rollout_batch = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    # local_mini_batch_size = local_batch_size / num_mini_batches
    minibatch = rollout_batch // settings["num_mini_batches"]
    # each minibatch is cut into micro-batches of per_device_train_batch_size; the optimiser steps once per
    # gradient_accumulation_steps micro-batches
    micro_batches = math.ceil(minibatch / settings["per_device_train_batch_size"])
    steps_per_iteration = settings["num_ppo_epochs"] * settings["num_mini_batches"] * micro_batches
    steps_per_iteration //= settings["gradient_accumulation_steps"]
    # num_total_batches = ceil(total_episodes / batch_size): the PPO iterations
    trl_iterations = math.ceil(settings["total_episodes"] / rollout_batch)

    assert (rollout_batch, minibatch, micro_batches) == (128, 32, 1)
    assert rollout_batch == cfg.ppo.rollout_batch_size and minibatch == cfg.ppo.minibatch_size
    # this project's ppo_update steps once per minibatch: epochs x rollout / minibatch
    assert steps_per_iteration == cfg.ppo.ppo_epochs * cfg.ppo.rollout_batch_size // cfg.ppo.minibatch_size == 16
    assert trl_iterations == iterations
    # every rollout scored in one forward batch, responses as long as this project's, fp32 as on this project's CPU
    assert settings["local_rollout_forward_batch_size"] == cfg.ppo.rollout_batch_size
    assert settings["response_length"] == cfg.model.max_response_tokens == 40
    assert settings["bf16"] is False and settings["use_cpu"] is True
    assert (settings["kl_coef"], settings["cliprange"], settings["learning_rate"]) == (
        cfg.ppo.kl.kl_coef,
        cfg.ppo.cliprange,
        cfg.ppo.lr,
    )


def test_the_first_iteration_is_left_out_of_the_mean():
    # iterations end 5, 7 and 10 s after the start: 5 s of warm-up, then 2 and 3
    assert steady_seconds([5.0, 7.0, 10.0], 0.0) == 2.5
