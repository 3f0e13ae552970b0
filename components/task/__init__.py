"""The embedded synthetic task behind the Environment interface (review_task.ReviewTask): prompts, demonstrator, gold
judge, simulated labeller. May import config, io and data; only flows.execution.task_choice imports it."""
