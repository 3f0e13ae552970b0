"""The held-out evaluation's report, typed: per decoding mode, each policy's summary, PPO's win rates against each
policy (by the judge and by the reward model) and the example rows. JSON only at the edges: ``as_record`` gives the
report as evaluation.json holds it, ``from_record`` reads it back."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

PPO_WIN_RATE, PPO_RM_WIN_RATE = "ppo_win_rate", "ppo_rm_win_rate"


@dataclass(frozen=True)
class ModeEvaluation:
    """One decoding mode's part of the report. Each value is its JSON record: a policy's summary is
    ``policy_eval.summarise``'s, a win rate ``intervals.WinRate.as_dict``'s."""

    policies: dict[str, dict] = field(default_factory=dict)
    ppo_win_rate: dict[str, dict] = field(default_factory=dict)  # by the judge; empty until people judge
    ppo_rm_win_rate: dict[str, dict] = field(default_factory=dict)  # by the reward model
    examples: list[dict] = field(default_factory=list)  # one row per (prompt, policy), for a person to read

    def as_record(self) -> dict:
        """A fresh JSON-ready copy, keys in evaluation.json's order."""
        return copy.deepcopy(
            {
                "policies": self.policies,
                PPO_WIN_RATE: self.ppo_win_rate,
                PPO_RM_WIN_RATE: self.ppo_rm_win_rate,
                "examples": self.examples,
            }
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModeEvaluation:
        """A mode's record; a part it lacks is empty, keys beyond the four are not read."""
        return cls(
            **copy.deepcopy(
                {key: record[key] for key in ("policies", PPO_WIN_RATE, PPO_RM_WIN_RATE, "examples") if key in record}
            )
        )


@dataclass(frozen=True)
class EvaluationReport:
    """Every decoding mode's evaluation, by mode name."""

    modes: dict[str, ModeEvaluation]

    def as_record(self) -> dict:
        """{mode: {policies, ppo_win_rate, ppo_rm_win_rate, examples}}: evaluation.json."""
        return {name: mode.as_record() for name, mode in self.modes.items()}

    @classmethod
    def from_record(cls, record: Mapping[str, Mapping[str, Any]]) -> EvaluationReport:
        return cls({name: ModeEvaluation.from_record(mode) for name, mode in record.items()})

    def with_ppo_win_rates(self, rates: Mapping[str, dict[str, dict]]) -> EvaluationReport:
        """The report with PPO's win rates by another judge (people's labels) in the modes ``rates`` names."""
        modes = dict(self.modes)
        for name, by_policy in rates.items():
            modes[name] = replace(self.modes[name], ppo_win_rate=copy.deepcopy(by_policy))
        return EvaluationReport(modes)
