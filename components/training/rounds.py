"""Labelling rounds (iterated RLHF, as InstructGPT and Stiennon et al. collected comparisons): the schedule.

The single-round budget of ``comparisons.n_prompts`` ranked groups is drawn once and cut into ``rounds``
consecutive slices, so R rounds label exactly the prompts one round would, R times smaller each. Round r's rows
carry ``round`` (1-based) and group ids after every earlier round's, so whole groups stay together and each round
is split into train / held-out on its own (``split_by_round``): a group held out in round r stays held out when
later rounds add rows. PPO's iterations are shared out the same way: continuing, round r trains its own share;
restarting from SFT, round r trains every share up to its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

ROUND = "round"  # the row field naming the labelling round it came from


@dataclass(frozen=True)
class RoundLabels:
    """One labelling round's comparisons: the round (1-based), its own rows, and every round's rows so far."""

    index: int
    rows: list[dict]
    seen: list[dict]


def shares(total: int, rounds: int) -> list[int]:
    """``total`` cut into ``rounds`` whole shares that differ by at most one, the larger ones first."""
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def round_prompts(drawn: Sequence[str], rounds: int) -> list[list[str]]:
    """The single-round draw, cut into consecutive slices, one per round."""
    slices, start = [], 0
    for size in shares(len(drawn), rounds):
        slices.append(list(drawn[start : start + size]))
        start += size
    return slices


def ppo_iterations(total: int, rounds: int, round_index: int, between_rounds: str) -> int:
    """Iterations the round's PPO runs (``round_index`` 1-based): its own share when it continues the last round's
    policy, all shares up to its own when it restarts from SFT (the last round then trains ``total``)."""
    own = shares(total, rounds)
    return own[round_index - 1] if between_rounds == "continue" else sum(own[:round_index])


def tagged(rows: list[dict], round_index: int, group_offset: int) -> list[dict]:
    """The round's rows, named by round, their ranked groups numbered after every earlier round's."""
    return [{**row, ROUND: round_index, "group": row["group"] + group_offset} for row in rows]


def next_group(rows: Sequence[dict]) -> int:
    """The first group id free after ``rows``."""
    return 1 + max((row["group"] for row in rows), default=-1)


def split_by_round(
    comparisons: Sequence[dict], split: Callable[[Sequence[dict]], tuple[list[dict], list[dict]]]
) -> tuple[list[dict], list[dict]]:
    """``split`` applied to each round's rows on its own (rows without ``round`` are one round), then joined."""
    by_round: dict[object, list[dict]] = {}
    for row in comparisons:
        by_round.setdefault(row.get(ROUND), []).append(row)
    if len(by_round) <= 1:
        return split(comparisons)
    train, held_out = [], []
    for rows in by_round.values():
        round_train, round_held_out = split(rows)
        train += round_train
        held_out += round_held_out
    return train, held_out


def labeller_stream(track: str, round_index: int) -> str:
    """The labeller's noise stream for a round's labels: round 1 (SFT samples, shared by both tracks) on the
    single-round stream, so one round is exactly the single-round pipeline; each later round and track its own."""
    return "labeler" if round_index == 1 else f"labeler/{track}-round-{round_index}"


def continued_history(
    histories: Sequence[list[dict]], lengths: Sequence[int], step_key: str = "iteration"
) -> list[dict]:
    """The rounds' PPO histories as one run (a continued policy's whole optimisation): each round's steps after
    every earlier round's ``lengths`` (its iterations), each entry naming its round. Each round's ``rm_score`` is
    by that round's RM."""
    whole, offset = [], 0
    for round_index, (history, length) in enumerate(zip(histories, lengths, strict=True), start=1):
        whole += [{**entry, step_key: entry[step_key] + offset, ROUND: round_index} for entry in history]
        offset += length
    return whole
