"""Preparation: the validated raw data split into the exact inputs of the training stages."""

from __future__ import annotations

import random
from pathlib import Path

from components import io
from components.config import PrepareConfig
from components.data import files

SFT_TRAIN, RM_TRAIN, RM_VALID, EVAL = "sft_train", "rm_train", "rm_valid", "eval_prompts"
DATA_VERSION = "data_version.json"


def prepare(rows: dict[str, list[dict]], cfg: PrepareConfig, seed: int) -> dict[str, list[dict]]:
    """Hold out a share of preference pairs (seeded) so the reward model is measured on pairs it never saw."""
    pairs = list(rows[files.PREFERENCES])
    random.Random(f"{seed}/rm-valid").shuffle(pairs)
    n_valid = max(1, round(cfg.rm_valid_fraction * len(pairs)))
    return {
        SFT_TRAIN: rows[files.DEMONSTRATIONS],
        RM_TRAIN: pairs[n_valid:],
        RM_VALID: pairs[:n_valid],
        EVAL: rows[files.EVAL_PROMPTS],
    }


def write_prepared(directory: str | Path, prepared: dict[str, list[dict]], data_version: dict) -> None:
    """Each file is written atomically; data_version.json ties them to the DVC version they came from."""
    directory = Path(directory)
    for name, rows in prepared.items():
        io.write_jsonl(directory / files.file_name(name), rows)
    io.write_json(directory / DATA_VERSION, {**data_version, "rows": {k: len(v) for k, v in prepared.items()}})
