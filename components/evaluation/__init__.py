"""Evaluation: sampling policies on held-out prompts, gold and proxy scores, win rates with intervals, the gate.
May import libraries other than the tools (mlflow, prefect, gx, dvc), components.config, data, models, training."""
