"""PPO checkpoints: everything an interrupted run needs to continue exactly where it stopped.

A checkpoint is a directory ``iteration-NNNNNN`` holding ``state.pt`` (policy, critic and both
optimisers' state dicts and torch's RNG state: tensors and plain numbers only, loaded with
``weights_only=True``) and ``meta.json`` (iteration, KL coefficient, the Python RNG state, the
prompt queue, the history so far). Under DeepSpeed ZeRO, whose shards no one rank holds whole, ``state.pt`` has the
RNG states only and ``engines/`` each engine's own checkpoint (every rank's shard). It is written to a temporary
directory and renamed into place, so a crash mid-write leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

PREFIX = "iteration-"
ENGINES = "engines"


@dataclass
class PPOState:
    iteration: int  # the next iteration to run
    kl_coef: float
    python_rng: list
    order: list[str]
    history: list[dict]
    tensors: dict  # policy, critic, policy_opt, critic_opt (unless in engines), torch_rng
    engines: Path | None = None  # DeepSpeed: the engines' own checkpoints, a directory per engine


def save_checkpoint(directory: str | Path, state: PPOState, keep: int = 2) -> Path:
    """``state.engines``: a directory the engines wrote, moved into the checkpoint with the rest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{state.iteration:06d}"
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=directory))
    try:
        torch.save(state.tensors, staging / "state.pt")
        if state.engines is not None:
            shutil.move(state.engines, staging / ENGINES)
        meta = {
            "iteration": state.iteration,
            "kl_coef": state.kl_coef,
            "python_rng": state.python_rng,
            "order": state.order,
            "history": state.history,
        }
        (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path | None) -> PPOState | None:
    """The newest complete checkpoint in ``directory``, or None."""
    if directory is None or not Path(directory).is_dir():
        return None
    candidates = sorted(Path(directory).glob(f"{PREFIX}*"))
    if not candidates:
        return None
    newest = candidates[-1]
    meta = json.loads((newest / "meta.json").read_text(encoding="utf-8"))
    tensors = torch.load(newest / "state.pt", weights_only=True)
    engines = newest / ENGINES if (newest / ENGINES).is_dir() else None
    return PPOState(
        meta["iteration"], meta["kl_coef"], meta["python_rng"], meta["order"], meta["history"], tensors, engines
    )


def python_rng_state(rng) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(rng, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))
