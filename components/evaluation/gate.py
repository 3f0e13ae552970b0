"""The promotion gate: does the evidence say RLHF beat supervised learning?

A pure function of the evaluation report and the gate config. Every rule is checked under every
decoding mode the gate names; each check becomes a spelled-out reason. Anything the report lacks
counts as a failed rule, so a partial report can never promote.

The report is a plain dict (as the pipeline writes it to MLflow):

    data_validation.success          bool
    data_validation.eval_prompts_in_training  held-out prompts that some stage trained on (must be 0)
    non_finite_stages                list of stage names that produced NaN/inf
    reward_model.accuracy            held-out pairwise accuracy against the labels (an ensemble's: its members' mean)
    reward_model.ensemble_size       reward models in the ensemble PPO optimised (1: a single reward model)
    reward_model.member_agreement    share of held-out pairs every member orders alike (ensembles only)
    ppo_history                      [{iteration, rm_score, gold, ...}] (gold: logged, never trained on)
    modes.<mode>.policies.<name>     {gold: {value, ci}, rm: {value, ci}, kl, ...}
    modes.<mode>.ppo_win_rate.<name> {value, ci: [lo, hi], n}  gold win rate of PPO, ties half; PPO must beat
                                     every baseline the gate names, each head to head
    modes.<mode>.ppo_rm_win_rate.<name>  the same, judged by the reward model
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from components.config import GateConfig

PPO = "ppo"


@dataclass(frozen=True)
class Reason:
    rule: str
    passed: bool
    detail: str
    mode: str | None = None

    def __str__(self) -> str:
        where = f"[{self.mode}] " if self.mode else ""
        return f"{'PASS' if self.passed else 'FAIL'} {where}{self.rule}: {self.detail}"


@dataclass
class Decision:
    promote: bool
    reasons: list[Reason] = field(default_factory=list)
    score: float | None = None  # how clearly PPO won; ranks promoted versions evaluated on the same data

    @property
    def label(self) -> str:
        return "promote" if self.promote else "reject"

    @property
    def failures(self) -> list[Reason]:
        return [r for r in self.reasons if not r.passed]

    def summary(self) -> str:
        return "\n".join([f"decision: {self.label}", *(f"  {r}" for r in self.reasons)])

    def as_dict(self) -> dict:
        return {"decision": self.label, "score": self.score, "reasons": [asdict(r) for r in self.reasons]}


class _Missing(LookupError):
    pass


def _get(report: dict, *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            raise _Missing(".".join(path))
        node = node[key]
    return node


def _linear_slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x if var_x else 0.0


def trend_change(history: list[dict], key: str, tail_fraction: float) -> float:
    """Change of ``key`` over the last ``tail_fraction`` of ``history``, read off a least-squares line."""
    tail = history[-max(2, round(len(history) * tail_fraction)) :]
    xs = [float(h["iteration"]) for h in tail]
    return _linear_slope(xs, [float(h[key]) for h in tail]) * (xs[-1] - xs[0])


def gated_baselines(report: dict, mode: str, baselines: list[str]) -> list[str]:
    """The supervised policies PPO must beat under ``mode``; every one must be in the report."""
    policies = _get(report, "modes", mode, "policies")
    missing = sorted(set(baselines) - set(policies))
    if missing:
        raise _Missing(f"modes.{mode}.policies.{missing}")
    return list(baselines)


def win_lower_bounds(report: dict, mode: str, baselines: list[str]) -> dict[str, float]:
    """The CI lower bound of PPO's gold win rate against each gated baseline under ``mode``."""
    return {name: _get(report, "modes", mode, "ppo_win_rate", name, "ci")[0] for name in gated_baselines(report, mode, baselines)}


def _check(rule: str, test, mode: str | None = None) -> Reason:
    """Run one rule; a rule whose inputs are missing or malformed fails, saying what is wrong."""
    try:
        passed, detail = test()
    except _Missing as missing:
        passed, detail = False, f"missing from the report: {missing}"
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as malformed:
        passed, detail = False, f"malformed report input: {type(malformed).__name__}: {malformed}"
    return Reason(rule, bool(passed), detail, mode)


def _rules_for_mode(report: dict, cfg: GateConfig, mode: str) -> list[Reason]:
    def beats_every_baseline():
        # head to head against each baseline, not against the best by mean: a mean can hide a baseline
        # that beats PPO on most prompts (and means can tie)
        wins = {name: _get(report, "modes", mode, "ppo_win_rate", name) for name in gated_baselines(report, mode, cfg.baselines)}
        beaten = {name: win["ci"][0] > cfg.min_win_rate_lower for name, win in wins.items()}
        shown = "; ".join(f"{name} {w['value']:.3f} [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]{'' if beaten[name] else ' (not beaten)'}"
                          for name, w in wins.items())
        return all(beaten.values()), f"gold win rate vs {shown}; every lower bound must exceed {cfg.min_win_rate_lower}"

    def kl_within_budget():
        kl = _get(report, "modes", mode, "policies", PPO, "kl")
        return kl <= cfg.max_kl, f"KL from the SFT reference {kl:.2f} nats (budget {cfg.max_kl})"

    def not_below_sft():
        ppo = _get(report, "modes", mode, "policies", PPO, "gold", "value")
        sft = _get(report, "modes", mode, "policies", "sft", "gold", "value")
        return ppo >= sft - cfg.sft_tolerance, f"gold {ppo:.3f} vs SFT {sft:.3f} (tolerance {cfg.sft_tolerance})"

    def proxy_agrees_with_gold():
        gaps = {}
        for name in gated_baselines(report, mode, cfg.baselines):
            gold = _get(report, "modes", mode, "ppo_win_rate", name, "value")
            proxy = _get(report, "modes", mode, "ppo_rm_win_rate", name, "value")
            gaps[name] = (proxy - gold, proxy, gold)
        worst = max(gaps, key=lambda name: gaps[name][0])
        gap, proxy, gold = gaps[worst]
        limit = cfg.overoptimisation.max_proxy_gold_gap
        return gap <= limit, f"largest gap vs '{worst}': RM win rate {proxy:.3f}, gold win rate {gold:.3f}, gap {gap:+.3f} (max {limit})"

    return [
        _check("beats every supervised baseline", beats_every_baseline, mode),
        _check("KL within budget", kl_within_budget, mode),
        _check("not worse than SFT", not_below_sft, mode),
        _check("reward model agrees with gold", proxy_agrees_with_gold, mode),
    ]


def decide(report: dict, cfg: GateConfig) -> Decision:
    """Promote only if every rule holds in every configured mode; every check is one reason."""

    def data_valid():
        success = _get(report, "data_validation", "success")
        return success is True, "Great Expectations passed" if success is True else "Great Expectations failed"

    def eval_prompts_unseen():
        leaked = _get(report, "data_validation", "eval_prompts_in_training")
        return leaked == 0, "no held-out prompt was trained on" if leaked == 0 else f"{leaked} held-out prompt(s) were trained on"

    def all_finite():
        bad = _get(report, "non_finite_stages")
        return not bad, "no NaN/inf in any stage" if not bad else f"NaN/inf in: {', '.join(bad)}"

    def rm_accurate():
        accuracy = _get(report, "reward_model", "accuracy")
        return accuracy >= cfg.min_rm_accuracy, f"held-out accuracy {accuracy:.3f} (floor {cfg.min_rm_accuracy})"

    def members_agree():
        size = _get(report, "reward_model", "ensemble_size")
        if size == 1:
            return True, "a single reward model"
        agreement = _get(report, "reward_model", "member_agreement")
        return agreement >= cfg.min_rm_member_agreement, (
            f"the {size} members order {agreement:.3f} of the held-out pairs alike (floor {cfg.min_rm_member_agreement})")

    def no_overoptimisation_trend():
        history = _get(report, "ppo_history")
        if len(history) < 2 or any("gold" not in h or "rm_score" not in h for h in history):
            raise _Missing("ppo_history (rm_score and gold per iteration)")
        rm_change = trend_change(history, "rm_score", cfg.overoptimisation.tail_fraction)
        gold_change = trend_change(history, "gold", cfg.overoptimisation.tail_fraction)
        diverging = rm_change > 0 and gold_change < -cfg.overoptimisation.max_gold_drop
        return not diverging, (
            f"over the last {cfg.overoptimisation.tail_fraction:.0%} of PPO: RM {rm_change:+.3f}, gold {gold_change:+.3f} "
            f"(fails if RM rises while gold falls by more than {cfg.overoptimisation.max_gold_drop})"
        )

    reasons = [
        _check("data validation passed", data_valid),
        _check("held-out prompts unseen in training", eval_prompts_unseen),
        _check("no NaN/inf", all_finite),
        _check("reward model accuracy", rm_accurate),
        _check("reward ensemble members agree", members_agree),
        _check("no over-optimisation trend", no_overoptimisation_trend),
    ]
    for mode in cfg.modes:
        reasons += _rules_for_mode(report, cfg, mode)
    return Decision(promote=all(r.passed for r in reasons), reasons=reasons, score=gate_score(report, cfg))


def gate_score(report: dict, cfg: GateConfig) -> float | None:
    """The smallest CI lower bound of PPO's gold win rate over every gated baseline and every gated mode."""
    try:
        bounds = [bound for mode in cfg.modes for bound in win_lower_bounds(report, mode, cfg.baselines).values()]
        return float(min(bounds)) if bounds else None
    except (_Missing, TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None
