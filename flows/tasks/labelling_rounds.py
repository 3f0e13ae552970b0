"""Labelling rounds (``comparisons.rounds`` > 1, or people as the labellers): iterated RLHF, each round a subflow.

Round 1 ranks SFT samples; each later round ranks samples of the current PPO policy. The reward model retrains on
every round's comparisons so far; PPO continues the last round's policy or restarts from SFT (``ppo.between_rounds``;
the KL reference is SFT either way). Iterative DPO, the baseline without which a PPO win could not be credited to
RL, gets the same schedule: round 1's labels, then each round its own policy's samples of the same prompts, ranked
by the same labeller. The rounds share the single round's label budget (``components.training.rounds``). Each
stage is an MLflow run named and tagged by its round; the last round's policies are the run's PPO and DPO.
"""

from __future__ import annotations

import dataclasses

from prefect import flow
from prefect.runtime import deployment

from components.models.saving import stage_key
from components.training import recipe
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


def joined(results: list[recipe.StageResult]) -> recipe.StageResult:
    """Every round's comparisons so far as one stage result, keyed by the rounds' keys."""
    rows = [row for result in results for row in result.model]
    return recipe.StageResult(rows, {"pairs": len(rows)}, key=stage_key(joined=[r.key for r in results]))


def ppo_context(ctx: RunContext) -> RunContext:
    """The round's PPO settings: its share of the iterations, its own seed (fresh prompts and samples); before the
    last round one candidate (the last iteration is what the next round samples from)."""
    cfg, r = ctx.cfg, ctx.round_index
    ppo = cfg.ppo.model_copy(
        update={"iterations": ppo_iterations(cfg.ppo.iterations, cfg.comparisons.rounds, r, cfg.ppo.between_rounds)}
    )
    update = {"ppo": ppo, "seed": cfg.seed + r - 1}
    if not ctx.last_round:
        update["selection"] = cfg.selection.model_copy(update={"candidates": 1})
    return dataclasses.replace(ctx, cfg=cfg.model_copy(update=update))


@dataclasses.dataclass
class Tracks:
    """What the rounds so far made: each track's comparisons per round and current policy (SFT before round 1)."""

    sft: recipe.StageResult
    ppo: recipe.StageResult
    dpo: recipe.StageResult
    reward_model: recipe.StageResult | None = None
    ppo_rounds: list[recipe.StageResult] = dataclasses.field(default_factory=list)
    dpo_rounds: list[recipe.StageResult] = dataclasses.field(default_factory=list)
    made: list[dict[str, recipe.StageResult]] = dataclasses.field(default_factory=list)


def labelled_policies(tracks: Tracks, round_index: int) -> dict[str, recipe.StageResult]:
    """Whose samples people label in a round: PPO's policy, and from round 2 on the iterated DPO's too."""
    return {"ppo": tracks.ppo} if round_index == 1 else {"ppo": tracks.ppo, "dpo": tracks.dpo}


def labelling_round(ctx: RunContext, tracks: Tracks, labels_file: str | None = None) -> None:
    """One round: label each track's current policy's samples, retrain the RM on every label so far, PPO, DPO.
    ``labels_file``: people's labels already given to the run for the pairs it exported (a suspended run)."""
    sft, first = tracks.sft, ctx.round_index == 1
    by_people: dict[str, list[dict] | None] = {"ppo": None, "dpo": None}  # None: the simulated labeller ranks
    if ctx.cfg.comparisons.labeler == "human":  # one page, one wait for both tracks' pairs, shuffled together
        policies = labelled_policies(tracks, ctx.round_index)
        rows = labelled_rows(ctx, labels_file) if labels_file else ranked_by_people(ctx, policies)
        by_people = {track: rows.get(track, []) for track in policies}
    ppo_round = comparisons_task(ctx, tracks.ppo, joined(tracks.ppo_rounds).model, by_people=by_people["ppo"])
    dpo_round = (
        ppo_round
        if first
        else comparisons_task(ctx, tracks.dpo, joined(tracks.dpo_rounds).model, "dpo", by_people["dpo"])
    )
    tracks.ppo_rounds.append(ppo_round)
    tracks.dpo_rounds.append(dpo_round)
    comparisons = joined(tracks.ppo_rounds)
    tracks.reward_model = reward_task(ctx, sft, comparisons)
    start = None if first or ctx.cfg.ppo.between_rounds == "restart" else tracks.ppo
    tracks.ppo = ppo_task(ppo_context(ctx), sft, tracks.reward_model, comparisons, start=start)
    tracks.dpo = iterative_dpo_task(ctx, sft, tracks.dpo, dpo_round, joined(tracks.dpo_rounds))
    tracks.made.append(
        {
            "comparisons": ppo_round,
            "comparisons_dpo": dpo_round,
            "reward_model": tracks.reward_model,
            "ppo": tracks.ppo,
            "dpo": tracks.dpo,
        }
    )


def train_in_rounds(ctx: RunContext) -> Trained:
    """SFT, every round as a subflow (its number the one parameter Prefect records), then the other supervised
    baselines on every label of PPO's rounds (the same total budget)."""
    sft = sft_task(ctx)
    tracks = Tracks(sft, sft, sft)

    @flow(name="labelling round", flow_run_name="round {round_index}")
    def labelling_round_flow(round_index: int, labels_file: str | None = None) -> None:
        labelling_round(dataclasses.replace(ctx, round_index=round_index), tracks, labels_file)

    for round_index in range(1, ctx.cfg.comparisons.rounds + 1):
        labels_file = None
        if ctx.cfg.comparisons.labeler == "human" and deployment.id:  # no process waits while people label
            round_ctx = dataclasses.replace(ctx, round_index=round_index)
            labels_file = suspended_for_labels(round_ctx, labelled_policies(tracks, round_index))
        labelling_round_flow(round_index, labels_file)
    ppo = tracks.ppo
    if ctx.cfg.ppo.between_rounds == "continue":  # the gate's trend rule reads the whole optimisation
        rounds = ctx.cfg.comparisons.rounds
        lengths = [ppo_iterations(ctx.cfg.ppo.iterations, rounds, r, "continue") for r in range(1, rounds + 1)]
        ppo = dataclasses.replace(
            ppo, history=continued_history([made["ppo"].history for made in tracks.made], lengths)
        )
    comparisons = joined(tracks.ppo_rounds)
    baselines = {
        name: baseline_task(ctx, name, sft, comparisons) for name in recipe.SUPERVISED_BASELINES if name != "dpo"
    }
    return Trained(
        sft,
        comparisons,
        tracks.reward_model,
        ppo,
        {**baselines, "dpo": tracks.dpo},
        rounds=tracks.made,
        own_comparisons={"dpo": joined(tracks.dpo_rounds).model},
    )
