"""Keeps every tool that phones home quiet. Called by entry points, never at import time."""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def stay_offline() -> None:
    """Turn telemetry off unless the user explicitly set the variable otherwise."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
