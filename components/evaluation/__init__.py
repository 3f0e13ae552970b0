"""Evaluation: sampling policies on held-out prompts, gold and proxy scores, win rates with intervals."""
