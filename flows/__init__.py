"""Flows: the Prefect flow and tasks, deployments, process entry points (data stages and CLI, PPO launcher, worker).
May import every package of components and every tool; nothing in components imports flows."""
