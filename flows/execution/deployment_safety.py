"""What a deployment run's parameters may set. Anyone who can reach a Prefect server can start a deployment's run with
parameters of their choosing (an open-source server has no authentication), so a run started from a deployment may
not set, by its parameters, a key that runs code or names a path, unless the worker's own environment allows it:
``RLHF_DEPLOYMENT_MAY_SET``, comma-separated keys (a section allows what is under it), set by whoever starts the
worker. Runs from the command line are not deployment runs and are not limited."""

from __future__ import annotations

import os

from components.config import ConfigError

MAY_SET = "RLHF_DEPLOYMENT_MAY_SET"
# the flow's own path parameters, and the config keys that import code, read or write a path, or send data elsewhere
PATH_PARAMETERS = ("root", "params")
GUARDED_KEYS = (
    "evaluation.judge.entry_point",  # imports and calls any importable function
    "evaluation.judge.model_dir",
    "model.local_dir",
    "data.files",
    "data.dir",
    "prepare.dir",
    "comparisons.dir",
    "validation.report_dir",
    "artifacts_dir",
    "distributed.accelerate_config",
    "tracking.uri",  # where every stage's records and models go
    "versioning.remote_url",  # where the data are pushed
)


def _covers(key: str, other: str) -> bool:
    """``key`` is ``other``, a section above it or a key under it."""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def refused_parameters(
    overrides: list[str], paths: dict[str, str], defaults: dict[str, str], may_set: set[str]
) -> list[str]:
    """The keys a deployment run's parameters set that run code or name a path and ``may_set`` does not allow:
    overrides (``key=value``), and ``paths`` (root, params, tracking_uri) that differ from ``defaults``."""
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    keys += [name for name, value in paths.items() if value is not None and value != defaults.get(name)]

    def allowed(key: str) -> bool:
        return any(key == granted or key.startswith(granted + ".") for granted in may_set)

    guarded = (*PATH_PARAMETERS, *GUARDED_KEYS)
    return [key for key in keys if any(_covers(key, g) for g in guarded) and not allowed(key)]


def refuse_unsafe_parameters(overrides: list[str], paths: dict[str, str], defaults: dict[str, str]) -> None:
    may_set = {key.strip() for key in os.environ.get(MAY_SET, "").split(",") if key.strip()}
    refused = refused_parameters(overrides, paths, defaults, may_set)
    if refused:
        raise ConfigError(
            f"a deployment run's parameters may not set {', '.join(refused)}: they run code or name a path, and "
            f"anyone who reaches the Prefect server can start a run. Allow them on the worker with {MAY_SET}="
            f"{','.join(refused)} (its environment, not the run's), or run from the command line"
        )
