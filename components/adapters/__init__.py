"""Adapters: MLflow (tracking.py), DVC (versioning.py), Great Expectations (validation.py), plots, provenance, runs.
The one package that may import mlflow, prefect, gx, dvc; it may also import config, io, locks, data; never flows."""
