"""PPO checkpoints: everything an interrupted run needs to continue exactly where it stopped.

A checkpoint is a directory ``iteration-NNNNNN`` holding ``state.pt`` (policy, critic and both
optimisers' state dicts and torch's RNG state: tensors and plain numbers only, loaded with
``weights_only=True``) and ``meta.json`` (iteration, KL coefficient, the Python RNG state, the
prompt queue, the history so far). Under DeepSpeed ZeRO, whose shards no one rank holds whole, ``state.pt`` has the
RNG states only and ``engines/`` each engine's own checkpoint (every rank's shard). It is written to a temporary
directory, flushed to disk and renamed into place, so a crash mid-write leaves the previous checkpoint as the latest
one. ``digests.json`` holds every file's SHA-256: a checkpoint whose files no longer match (a disk that lied, a copy
cut short) is passed over for the previous one, and the reason is kept (``PPOState.passed_over``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from components.io import flush_tree, fsync_path, sha256_file

PREFIX = "iteration-"
ENGINES = "engines"
DIGESTS = "digests.json"


@dataclass
class PPOState:
    iteration: int  # the next iteration to run
    kl_coef: float
    python_rng: list
    order: list[str]
    history: list[dict]
    tensors: dict  # policy, critic, policy_opt, critic_opt (unless in engines), torch_rng
    engines: Path | None = None  # DeepSpeed: the engines' own checkpoints, a directory per engine
    passed_over: tuple[str, ...] = ()  # newer checkpoints that failed their check: "<name>: <why>"


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
        (staging / DIGESTS).write_text(json.dumps(_digests(staging)), encoding="utf-8")
        flush_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fsync_path(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path | None) -> PPOState | None:
    """The newest checkpoint in ``directory`` whose files match their digests and load, or None; the newer ones that
    failed are named in ``passed_over`` with the reason."""
    if directory is None or not Path(directory).is_dir():
        return None
    passed_over: list[str] = []
    for candidate in sorted(Path(directory).glob(f"{PREFIX}*"), reverse=True):
        try:
            return _load(candidate, tuple(passed_over))
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as error:
            passed_over.append(f"{candidate.name}: {error}")
    if passed_over:
        raise CorruptCheckpoint(f"no checkpoint in {directory} is intact: " + "; ".join(passed_over))
    return None


class CorruptCheckpoint(RuntimeError):
    pass


def _load(checkpoint: Path, passed_over: tuple[str, ...]) -> PPOState:
    recorded = (
        json.loads((checkpoint / DIGESTS).read_text(encoding="utf-8")) if (checkpoint / DIGESTS).exists() else None
    )
    found = _digests(checkpoint)
    if recorded is not None and found != recorded:  # None: written before digests were kept
        changed = sorted(name for name in set(found) | set(recorded) if found.get(name) != recorded.get(name))
        raise ValueError(f"files differ from their digests: {', '.join(changed)}")
    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    tensors = torch.load(checkpoint / "state.pt", weights_only=True)
    engines = checkpoint / ENGINES if (checkpoint / ENGINES).is_dir() else None
    return PPOState(
        meta["iteration"],
        meta["kl_coef"],
        meta["python_rng"],
        meta["order"],
        meta["history"],
        tensors,
        engines,
        passed_over,
    )


def _digests(checkpoint: Path) -> dict[str, str]:
    """SHA-256 of every file under ``checkpoint`` but the digests themselves, by relative path."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != DIGESTS)
    return {str(path.relative_to(checkpoint)): sha256_file(path) for path in files}


def python_rng_state(rng) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def restore_python_rng(rng, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))
