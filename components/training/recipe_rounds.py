"""The recipe in labelling rounds (``recipe.train_all``'s rounds variant): which stage each round runs, in which order,
on what. The flow (a subflow per round, flows/tasks/labelling_rounds.py) and the rounds benchmark
(benchmarks/labelling_rounds_race.py) both call this, so what is measured is what is shipped.

Round 1 ranks SFT samples; each later round ranks samples of each track's current policy. The reward model retrains
on every round's comparisons of PPO's track so far; PPO continues the last round's policy or restarts from SFT
(``ppo.between_rounds``; the KL reference is SFT either way). Iterative DPO gets the same schedule of on-policy
labels: round 1's, then each round its own policy's samples. After the rounds, the supervised baselines that are not
iterative train once on every label of PPO's rounds. The schedule's budget: ``components.training.rounds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from components.config import Config
from components.models.saving import stage_key
from components.training.recipe import SUPERVISED_BASELINES, RecipeRun, StageResult
from components.training.rounds import ppo_iterations


@dataclasses.dataclass
class Tracks:
    """What the rounds so far made: each track's comparisons per round and current policy (SFT before round 1)."""

    sft: StageResult
    ppo: StageResult
    dpo: StageResult
    reward_model: StageResult | None = None
    ppo_rounds: list[StageResult] = dataclasses.field(default_factory=list)
    dpo_rounds: list[StageResult] = dataclasses.field(default_factory=list)
    made: list[dict[str, StageResult]] = dataclasses.field(default_factory=list)


class RoundStages(Protocol):
    """Where each stage of a labelling round runs and what it reads: the flow's Prefect tasks, or a benchmark's calls
    of the ``recipe.*_stage`` functions in its own process. ``round_index`` is 1-based."""

    def sft(self) -> StageResult: ...

    def labelling_round(self, round_index: int, tracks: Tracks, train: Callable[[], None]) -> None:
        """Runs ``train`` (the round's stages below); first whatever the round needs before them (the flow: people's
        labels of ``labelled_policies(tracks, round_index)``)."""

    def comparisons(self, round_index: int, track: str, sampler: StageResult, seen: StageResult) -> StageResult:
        """``sampler``'s samples ranked, after the ``seen`` rows of the track's earlier rounds."""

    def reward_model(self, round_index: int, sft: StageResult, comparisons: StageResult) -> StageResult: ...

    def rl(
        self,
        round_index: int,
        sft: StageResult,
        reward_model: StageResult,
        comparisons: StageResult,
        start: StageResult | None,
    ) -> StageResult:
        """The round's RL (``ppo_round_config``) from ``start`` (None: from SFT)."""

    def iterative_dpo(
        self,
        round_index: int,
        sft: StageResult,
        previous: StageResult,
        round_comparisons: StageResult,
        seen: StageResult,
    ) -> StageResult: ...

    def baseline(self, name: str, sft: StageResult, comparisons: StageResult) -> StageResult: ...


@dataclasses.dataclass(frozen=True)
class RoundsRun(RecipeRun):
    """What the rounds trained: the last round's reward model and policies (``baselines["dpo"]``: iterative DPO's),
    every label of PPO's rounds as ``comparisons``, iterative DPO's as ``dpo_comparisons``, each round's stages."""

    dpo_comparisons: StageResult
    rounds: list[dict[str, StageResult]]


def joined(results: list[StageResult]) -> StageResult:
    """Every round's comparisons so far as one stage result, keyed by the rounds' keys."""
    rows = [row for result in results for row in result.model]
    return StageResult(rows, {"pairs": len(rows)}, key=stage_key(joined=[r.key for r in results]))


def labelled_policies(tracks: Tracks, round_index: int) -> dict[str, StageResult]:
    """Whose samples are labelled in a round: PPO's policy, and from round 2 on the iterated DPO's too."""
    return {"ppo": tracks.ppo} if round_index == 1 else {"ppo": tracks.ppo, "dpo": tracks.dpo}


def ppo_round_config(cfg: Config, round_index: int) -> Config:
    """The round's RL settings: its share of the iterations, its own seed (fresh prompts and samples); before the
    last round one candidate (the last iteration is what the next round samples from)."""
    ppo = cfg.ppo.model_copy(
        update={
            "iterations": ppo_iterations(
                cfg.ppo.iterations, cfg.comparisons.rounds, round_index, cfg.ppo.between_rounds
            )
        }
    )
    update = {"ppo": ppo, "seed": cfg.seed + round_index - 1}
    if round_index != cfg.comparisons.rounds:
        update["selection"] = cfg.selection.model_copy(update={"candidates": 1})
    return cfg.model_copy(update=update)


def labelling_round(stages: RoundStages, tracks: Tracks, round_index: int, between_rounds: str) -> None:
    """One round: label each track's current policy's samples (round 1: SFT's, once for both tracks), retrain the RM
    on every label of PPO's track so far, then PPO, then iterative DPO."""
    sft, first = tracks.sft, round_index == 1
    ppo_round = stages.comparisons(round_index, "ppo", tracks.ppo, joined(tracks.ppo_rounds))
    dpo_round = ppo_round if first else stages.comparisons(round_index, "dpo", tracks.dpo, joined(tracks.dpo_rounds))
    tracks.ppo_rounds.append(ppo_round)
    tracks.dpo_rounds.append(dpo_round)
    comparisons = joined(tracks.ppo_rounds)
    tracks.reward_model = stages.reward_model(round_index, sft, comparisons)
    start = None if first or between_rounds == "restart" else tracks.ppo
    tracks.ppo = stages.rl(round_index, sft, tracks.reward_model, comparisons, start)
    tracks.dpo = stages.iterative_dpo(round_index, sft, tracks.dpo, dpo_round, joined(tracks.dpo_rounds))
    tracks.made.append(
        {
            "comparisons": ppo_round,
            "comparisons_dpo": dpo_round,
            "reward_model": tracks.reward_model,
            "ppo": tracks.ppo,
            "dpo": tracks.dpo,
        }
    )


def labelling_rounds(stages: RoundStages, sft: StageResult, rounds: int, between_rounds: str) -> Tracks:
    """Every round from ``sft``, each through ``stages.labelling_round``."""
    tracks = Tracks(sft, sft, sft)
    for round_index in range(1, rounds + 1):
        stages.labelling_round(
            round_index,
            tracks,
            lambda round_index=round_index: labelling_round(stages, tracks, round_index, between_rounds),
        )
    return tracks


def train_rounds(stages: RoundStages, rounds: int, between_rounds: str) -> RoundsRun:
    """SFT, every labelling round, then the supervised baselines but DPO on every label of PPO's rounds (the same
    total budget as one round's); iterative DPO's last round is the DPO baseline."""
    sft = stages.sft()
    tracks = labelling_rounds(stages, sft, rounds, between_rounds)
    comparisons = joined(tracks.ppo_rounds)
    baselines = {name: stages.baseline(name, sft, comparisons) for name in SUPERVISED_BASELINES if name != "dpo"}
    return RoundsRun(
        sft,
        comparisons,
        tracks.reward_model,
        tracks.ppo,
        {**baselines, "dpo": tracks.dpo},
        joined(tracks.dpo_rounds),
        tracks.made,
    )
