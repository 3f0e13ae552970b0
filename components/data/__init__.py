"""Data: the embedded synthetic task (prompts, gold judge, demonstrators, simulated labeler), file schemas, rules.
May import the standard library, libraries other than the tools (mlflow, prefect, gx, dvc), components.config, io."""
