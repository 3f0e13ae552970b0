"""Labelling rounds (``comparisons.rounds`` > 1, or people as the labellers): iterated RLHF, each round a subflow.

The rounds' order and inputs are the recipe's (``components.training.recipe_rounds``); here each of its stages is
this flow's task, each round a subflow that first waits for people's labels where they label. Each stage is an
MLflow run named and tagged by its round; the last round's policies are the run's PPO and DPO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from prefect import flow
from prefect.runtime import deployment

from components.training import recipe_rounds
from components.training.recipe import StageResult
from components.training.recipe_rounds import Tracks, labelled_policies
from components.training.rounds import continued_history, ppo_iterations
from flows.execution.run_context import RunContext, Trained
from flows.labelling.human_labelling import labelled_rows, ranked_by_people, suspended_for_labels
from flows.tasks.training_tasks import (
    baseline_task,
    comparisons_task,
    iterative_dpo_task,
    ppo_task,
    reward_task,
    sft_task,
)


class FlowRoundStages:
    """The rounds' stages as this flow's tasks, each round a subflow (its number the one parameter Prefect records);
    where people label, the round's pairs are theirs (one page, one wait for both tracks' pairs)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.by_people: dict[str, list[dict]] = {}  # the round's rows people made, by track; none: the labeller ranks

    def in_round(self, round_index: int) -> RunContext:
        return dataclasses.replace(self.ctx, round_index=round_index)

    def sft(self) -> StageResult:
        return sft_task(self.ctx)

    def labelling_round(self, round_index: int, tracks: Tracks, train: Callable[[], None]) -> None:
        ctx, policies = self.in_round(round_index), labelled_policies(tracks, round_index)
        human = ctx.cfg.comparisons.labeler == "human"
        labels_file = None
        if human and deployment.id:  # no process waits while people label
            labels_file = suspended_for_labels(ctx, policies)

        @flow(name="labelling round", flow_run_name="round {round_index}")
        def labelling_round_flow(round_index: int, labels_file: str | None = None) -> None:
            self.by_people = {}
            if human:  # people's labels already given to the run for the pairs it exported (a suspended run)
                rows = labelled_rows(ctx, labels_file) if labels_file else ranked_by_people(ctx, policies)
                self.by_people = {track: rows.get(track, []) for track in policies}
            train()

        labelling_round_flow(round_index, labels_file)

    def comparisons(self, round_index: int, track: str, sampler: StageResult, seen: StageResult) -> StageResult:
        return comparisons_task(self.in_round(round_index), sampler, seen.model, track, self.by_people.get(track))

    def reward_model(self, round_index: int, sft: StageResult, comparisons: StageResult) -> StageResult:
        return reward_task(self.in_round(round_index), sft, comparisons)

    def rl(
        self,
        round_index: int,
        sft: StageResult,
        reward_model: StageResult,
        comparisons: StageResult,
        start: StageResult | None,
    ) -> StageResult:
        ctx = self.in_round(round_index)
        ctx = dataclasses.replace(ctx, cfg=recipe_rounds.ppo_round_config(ctx.cfg, round_index))
        return ppo_task(ctx, sft, reward_model, comparisons, start=start)

    def iterative_dpo(
        self,
        round_index: int,
        sft: StageResult,
        previous: StageResult,
        round_comparisons: StageResult,
        seen: StageResult,
    ) -> StageResult:
        return iterative_dpo_task(self.in_round(round_index), sft, previous, round_comparisons, seen)

    def baseline(self, name: str, sft: StageResult, comparisons: StageResult) -> StageResult:
        return baseline_task(self.ctx, name, sft, comparisons)


def train_in_rounds(ctx: RunContext) -> Trained:
    """The recipe in rounds (``recipe_rounds.train_rounds``) as this flow's tasks; continuing PPO, its history is the
    whole optimisation's (the gate's trend rule reads it)."""
    cfg = ctx.cfg
    made = recipe_rounds.train_rounds(FlowRoundStages(ctx), cfg.comparisons.rounds, cfg.ppo.between_rounds)
    ppo = made.rl
    if cfg.ppo.between_rounds == "continue":
        rounds = cfg.comparisons.rounds
        lengths = [ppo_iterations(cfg.ppo.iterations, rounds, r, "continue") for r in range(1, rounds + 1)]
        ppo = dataclasses.replace(ppo, history=continued_history([m["ppo"].history for m in made.rounds], lengths))
    return Trained(
        made.sft,
        made.comparisons,
        made.reward_model,
        ppo,
        made.baselines,
        rounds=made.rounds,
        own_comparisons={"dpo": made.dpo_comparisons.model},
    )
