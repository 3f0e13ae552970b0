"""Training stages, one file per algorithm: sft, reward, ppo and the supervised baselines."""
