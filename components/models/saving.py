"""Saving models in the Hugging Face layout (safetensors), atomically, with the config and data version beside them."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.io import replace_directory, write_json
from components.models.ensemble import RewardEnsemble, save_members

CARD = "rlhf_card.json"  # the resolved config, data version and metrics the model came from


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path, card: dict) -> Path:
    """Write to a temp dir beside ``directory`` and swap it in: a crash never leaves half a model."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if isinstance(model, RewardEnsemble):
            save_members(model, staging)
        else:
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(staging / CARD, card)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def stage_key(**parts) -> str:
    """A short hash of everything a stage's output depends on (data hash, config section, upstream keys, seed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_card(directory: str | Path) -> dict | None:
    """The card of a saved model, or None when there is no complete saved model there."""
    path = Path(directory) / CARD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
