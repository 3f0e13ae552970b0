"""Credentials from a Prefect Secret block: for deployments whose workers hold no secrets in their
environment. Names are logged, values never."""

from __future__ import annotations

import os
import re

from prefect import get_run_logger

from components.config import ConfigError, OrchestrationConfig

ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def export_credentials(cfg: OrchestrationConfig) -> list[str]:
    """Set the environment variables that the Secret block ``cfg.credentials_block`` holds (a JSON
    object, name -> value) for this run and every process it starts (MLflow and DVC clients, the PPO
    launch); a variable already in the environment wins. Returns the names it set."""
    name = cfg.credentials_block
    if name is None:
        return []
    from prefect.blocks.system import Secret

    try:
        values = Secret.load(name).get()
    except ValueError:
        raise ConfigError(
            f"orchestration.credentials_block: no Prefect Secret block named {name!r} "
            "(create it with prefect.blocks.system.Secret(value={...}).save(name))"
        ) from None
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and ENVIRONMENT_NAME.match(k) and isinstance(v, str) for k, v in values.items()
    ):
        raise ConfigError(
            f"orchestration.credentials_block: the Secret block {name!r} must hold a JSON object "
            "of environment variable names to string values"
        )
    exported = sorted(key for key in values if key not in os.environ)
    os.environ.update({key: values[key] for key in exported})
    kept = sorted(set(values) - set(exported))
    get_run_logger().info(
        "credentials from the Prefect Secret block %r: %s%s",
        name,
        ", ".join(exported) or "none",
        f" (already in the environment, kept: {', '.join(kept)})" if kept else "",
    )
    return exported
