"""The embedded synthetic task behind the Environment interface (environment.ReviewTask): prompts, demonstrator,
gold judge, simulated labeller. May import config, data and training.comparisons; only flows.environment picks it."""
