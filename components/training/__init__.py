"""Training stages, one file per algorithm (sft, reward, ppo, the supervised baselines), comparison sampling, selection.
May import only the standard library, libraries other than the tools (mlflow, prefect, gx, dvc), config, io, models."""
