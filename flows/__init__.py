"""Flows: at the top, what a user runs (pipeline, deploy, data_cli, commands); the rooms execution < labelling < tasks.
May import every package of components and every tool; a room imports only the rooms below it, never an entry point."""
