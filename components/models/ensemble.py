"""A reward model ensemble (Coste et al. 2023): several reward models trained from independent
initialisations, read together.

Every function here takes either one scalar-head model or a ``RewardEnsemble``: a single reward model
is an ensemble of one. Saved, an ensemble is a directory of ``member-<k>`` model directories; an
ensemble of one is saved as the plain model directory it is, so plain transformers loads it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from components.models.batching import Batch, sequence_scores
from components.models.builders import load_scalar_model

MEMBER = "member-{}"


class RewardEnsemble(torch.nn.Module):
    def __init__(self, members: list[PreTrainedModel]):
        super().__init__()
        if not members:
            raise ValueError("a reward ensemble needs at least one member")
        self.members = torch.nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)


def members_of(reward_model: torch.nn.Module) -> list[PreTrainedModel]:
    return list(reward_model.members) if isinstance(reward_model, RewardEnsemble) else [reward_model]


def member_scores(reward_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Every member's score of every sequence: (B, M)."""
    return torch.stack([sequence_scores(member, batch) for member in members_of(reward_model)], dim=-1)


def reward_scores(reward_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The ensemble's proxy reward, the members' mean: (B,). For one model, its own score."""
    return member_scores(reward_model, batch).mean(dim=-1)


def save_members(reward_model: torch.nn.Module, directory: Path) -> None:
    """``save_pretrained`` of every member into ``directory`` (a plain model directory for an ensemble of one)."""
    members = members_of(reward_model)
    if len(members) == 1:
        members[0].save_pretrained(directory, safe_serialization=True)
        return
    for k, member in enumerate(members):
        member.save_pretrained(directory / MEMBER.format(k), safe_serialization=True)


def load_reward_model(directory: str | Path) -> torch.nn.Module:
    """A saved reward model: the scalar model itself, or a ``RewardEnsemble`` of the member directories."""
    directory = Path(directory)
    member_dirs = sorted(directory.glob(MEMBER.format("*")), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not member_dirs:
        return load_scalar_model(directory)
    return RewardEnsemble([load_scalar_model(d) for d in member_dirs])
