"""The promotion gate: does the evidence say RLHF beat supervised learning?

A pure function of the evaluation report and the gate config. Every rule is checked under every
decoding mode the gate names; each check becomes a spelled-out reason. Anything the report lacks
counts as a failed rule, so a partial report can never promote.

The schema is the pydantic models below: ``GateInput`` and its parts hold exactly what the rules read, and
``gate_input`` is the one way to build it from the pipeline's report dict (keys the gate does not read are
ignored; a piece a run can lack is ``None`` or absent, and fails the rules that need it).
Malformed input (wrong type, NaN/inf, a CI not a pair, a negative count) is refused when built; a rule's own bug raises.
``decide_report``, the pipeline's entry point, records refused input as a rejection that names the bad fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from components.config import GateConfig, OveroptimisationConfig
from components.evaluation.intervals import wilson
from components.evaluation.overoptimisation import overoptimisation_fit
from components.evaluation.power import detection_power

PPO = "ppo"

# how far a CI bound may sit on the wrong side of its estimate: a Wilson interval around a win rate of 0 or 1
# puts the bound ~1e-16 past the value
CI_TOLERANCE = 1e-9

Number = Annotated[float, Strict()]  # finite (see allow_inf_nan below); an int is a number, a str or bool is not
Share = Annotated[float, Strict(), Field(ge=0, le=1)]
Count = Annotated[int, Strict(), Field(ge=0)]


class _Facts(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class JudgeDecided(_Facts):
    """``modes.<mode>.ppo_rm_win_rate.<name>.on_judge_decided``: PPO's win share by the judge and by the RM over the
    same comparisons, those the judge does not tie (None, None, 0 when it ties them all)."""

    judge: Share | None = None
    proxy: Share | None = None
    comparisons: Count = 0


class WinRate(_Facts):
    """``modes.<mode>.ppo_win_rate.<name>``: PPO's win rate head to head (ties half), with its CI over ``n`` prompts;
    the comparisons won, lost and tied (a share) where the report counts them."""

    value: Share
    ci: tuple[Number, Number]
    n: Count | None = None
    wins: Count | None = None
    losses: Count | None = None
    ties: Share | None = None
    comparisons: Count | None = None
    on_judge_decided: JudgeDecided | None = None  # RM win rates only

    @property
    def one_per_prompt(self) -> bool:
        """One comparison per prompt (greedy decoding, people's pairs): the untied prompts can be tested alone."""
        return self.wins is not None and self.losses is not None and self.comparisons == self.n

    @model_validator(mode="after")
    def _ci_around_value(self) -> WinRate:
        lo, hi = self.ci
        if not lo - CI_TOLERANCE <= self.value <= hi + CI_TOLERANCE:
            raise ValueError(f"the CI [{lo}, {hi}] does not hold the value {self.value}")
        return self


class Score(_Facts):
    """A policy's mean score by the judge (``modes.<mode>.policies.<name>.gold``); the gate reads the mean only."""

    value: Number


class PolicyScores(_Facts):
    """``modes.<mode>.policies.<name>``: what the rules read of one policy's evaluation."""

    gold: Score | None = None
    kl: Number | None = None  # from the SFT reference, nats per response


class ModeReport(_Facts):
    """``modes.<mode>``: the policies' scores and PPO's win rates against each, under one decoding mode."""

    policies: dict[str, PolicyScores | None] | None = None
    ppo_win_rate: dict[str, WinRate | None] | None = None  # judged by the judge (``gold``: its scores)
    ppo_rm_win_rate: dict[str, WinRate | None] | None = None  # judged by the reward model


class RewardModelFacts(_Facts):
    """``reward_model``: the reward model (or ensemble) PPO optimised, on held-out pairs."""

    accuracy: Share | None = None  # pairwise accuracy against the labels (an ensemble's: its members' mean)
    ensemble_size: Annotated[int, Strict(), Field(ge=1)] | None = None  # 1: a single reward model
    member_agreement: Share | None = None  # share of pairs every member orders alike (ensembles only)


class DataValidation(_Facts):
    """``data_validation``: the data checks."""

    success: Annotated[bool, Strict()] | None = None
    eval_prompts_in_training: Count | None = None  # held-out prompts some stage trained on (must be 0)


class HistoryPoint(_Facts):
    """``ppo_history[i]``: one logged PPO iteration (gold: logged, never trained on; kl: the rollouts' mean KL from
    the reference)."""

    iteration: Number
    rm_score: Number | None = None
    gold: Number | None = None
    kl: Number | None = None


class JudgeFacts(_Facts):
    """``judge``: who scored the held-out responses (and, if ``scores_ppo_iterations``, PPO's rollouts: the
    ``gold`` of ``ppo_history``). Absent: the embedded task's gold judge."""

    kind: str = "gold"
    name: str = "gold"
    label: str = "gold"  # how a reason names the judge's scores, e.g. "python judge 'scoring:helpfulness'"
    scores_ppo_iterations: Annotated[bool, Strict()] = True
    pairwise: Annotated[bool, Strict()] = False  # compares PPO with each policy (people): win rates, no means


class GateInput(_Facts):
    """Everything the gate reads; ``None`` (or an absent mode, policy or win rate) is a missing piece."""

    judge: JudgeFacts = JudgeFacts()
    data_validation: DataValidation | None = None
    non_finite_stages: list[str] | None = None  # stages that produced NaN/inf
    reward_model: RewardModelFacts | None = None
    ppo_history: list[HistoryPoint] | None = None
    ppo_shipped_iteration: Number | None = None  # the iteration whose rollouts the shipped snapshot sampled; None: last
    modes: dict[str, ModeReport | None] | None = None


class GateInputError(ValueError):
    """The report cannot be read as a ``GateInput``; ``paths`` names each bad field."""

    def __init__(self, error: ValidationError):
        self.paths = [".".join(str(part) for part in e["loc"]) or "report" for e in error.errors()]
        problems = "; ".join(f"{path}: {e['msg']}" for path, e in zip(self.paths, error.errors()))
        super().__init__(f"malformed gate input: {problems}")


def gate_input(report: Mapping[str, Any]) -> GateInput:
    """THE way to build the gate's input from the pipeline's report dict; malformed input raises GateInputError."""
    try:
        return GateInput.model_validate(report)
    except ValidationError as error:
        raise GateInputError(error) from None


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

    def as_record(self) -> dict:
        """What the flow run returns and prints of it: ``as_dict`` with the summary, the verdict and each reason."""
        reasons_text = [str(r) for r in self.reasons]
        return {**self.as_dict(), "summary": self.summary(), "promote": self.promote, "reasons_text": reasons_text}


class _Missing(LookupError):
    """A piece of the input a rule needs is absent: the rule fails, saying which."""


T = TypeVar("T")


def _need(value: T | None, path: str) -> T:
    if value is None:
        raise _Missing(path)
    return value


def _mode(gi: GateInput, mode: str) -> ModeReport:
    return _need(_need(gi.modes, "modes").get(mode), f"modes.{mode}")


def _policy(gi: GateInput, mode: str, name: str) -> PolicyScores:
    policies = _need(_mode(gi, mode).policies, f"modes.{mode}.policies")
    return _need(policies.get(name), f"modes.{mode}.policies.{name}")


def _win(gi: GateInput, mode: str, judge: str, name: str) -> WinRate:
    """PPO's win rate against ``name``; ``judge`` is ``ppo_win_rate`` (gold) or ``ppo_rm_win_rate``."""
    rates = _need(getattr(_mode(gi, mode), judge), f"modes.{mode}.{judge}")
    return _need(rates.get(name), f"modes.{mode}.{judge}.{name}")


def _linear_slope(xs: list[float], ys: list[float]) -> float:
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / var_x if var_x else 0.0


def overoptimisation_verdict(
    history: list[HistoryPoint], shipped: float | None, cfg: OveroptimisationConfig, judge: str
) -> tuple[bool, str]:
    """The shipped snapshot against the whole run (Gao et al. 2022's signs of reward-model over-optimisation).

    Fails on any of: (1) from the start to the shipped iteration, or over the run's last ``tail_fraction``, the RM
    rose while the judge's score fell by more than ``max_gold_drop`` (least-squares lines); (2) the judge's curve
    fitted over the whole run, R(d) = d (alpha - beta log d) with d = sqrt(KL), peaks before the shipped KL and the
    shipped KL sits more than ``max_gold_drop`` below the peak; (3) the same of the run's end while the RM's fitted
    curve still rose: the run over-optimised, whichever snapshot shipped. Without KLs in the history, (2) and (3) are
    not measured, and the reason says so."""
    last = history[-1].iteration
    shipped = last if shipped is None else shipped
    upto = [h for h in history if h.iteration <= shipped]
    if len(upto) < 2:
        upto = history[:2]
    tail = history[-max(2, round(len(history) * cfg.tail_fraction)) :]
    limit, failures, trends = cfg.max_gold_drop, [], []
    for name, points in ((f"start to shipped iteration {shipped:g}", upto), (f"last {cfg.tail_fraction:.0%}", tail)):
        rm_change, gold_change = _change(points, "rm_score"), _change(points, "gold")
        trends.append(f"{name}: RM {rm_change:+.3f}, {judge} {gold_change:+.3f}")
        if rm_change > 0 and gold_change < -limit:
            failures.append(f"{name}: the RM rose while {judge} fell")
    detail = "; ".join(trends)
    if any(h.kl is None for h in history):
        return not failures, detail + "; fitted peak not measured (no KL per iteration)"
    fit = overoptimisation_fit([h.model_dump() for h in history])  # the same fit the PPO stage logs
    gold_fit, proxy_fit = fit["gold"], fit["proxy"]
    shipped_kl = next(h.kl for h in reversed(upto))
    if gold_fit is None or gold_fit.peak_d is None:
        detail += f"; {judge} fitted over the run has no peak (still rising)"
        return not failures, detail + _fails_if(judge, limit)
    peak_d, end_d = gold_fit.peak_d, math.sqrt(max(history[-1].kl, 0.0))
    shipped_d = math.sqrt(max(shipped_kl, 0.0))
    shipped_drop, end_drop = gold_fit(peak_d) - gold_fit(shipped_d), gold_fit(peak_d) - gold_fit(end_d)
    detail += (
        f"; fitted {judge} peaks at KL {gold_fit.peak_kl:.2f}, shipped KL {shipped_kl:.2f} "
        f"({shipped_drop:.3f} below the peak), end KL {history[-1].kl:.2f} ({end_drop:.3f} below)"
    )
    if shipped_d > peak_d and shipped_drop > limit:
        failures.append("shipped past the fitted peak")
    proxy_rose = proxy_fit is not None and proxy_fit(end_d) > proxy_fit(peak_d)
    if end_d > peak_d and end_drop > limit and proxy_rose:
        failures.append("the run went on past the peak while the RM rose")
    return not failures, detail + (f" ({'; '.join(failures)})" if failures else "") + _fails_if(judge, limit)


def _change(points: list[HistoryPoint], key: str) -> float:
    """Change of ``key`` over ``points``, read off a least-squares line through them."""
    xs = [float(h.iteration) for h in points]
    return _linear_slope(xs, [float(getattr(h, key)) for h in points]) * (xs[-1] - xs[0])


def _fails_if(judge: str, limit: float) -> str:
    return f" (fails on a fall of {judge} by more than {limit} while the RM rises)"


def gated_baselines(gi: GateInput, mode: str, baselines: list[str]) -> list[str]:
    """The supervised policies PPO must beat under ``mode``; every one must be in the report."""
    policies = _need(_mode(gi, mode).policies, f"modes.{mode}.policies")
    missing = sorted(set(baselines) - set(policies))
    if missing:
        raise _Missing(f"modes.{mode}.policies.{missing}")
    return list(baselines)


def win_lower_bounds(gi: GateInput, mode: str, baselines: list[str]) -> dict[str, float]:
    """The CI lower bound of PPO's gold win rate against each gated baseline under ``mode``."""
    return {name: _win(gi, mode, "ppo_win_rate", name).ci[0] for name in gated_baselines(gi, mode, baselines)}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str


def head_to_head(win: WinRate, cfg: GateConfig) -> Verdict:
    """Is a baseline beaten? With several comparisons per prompt: the lower bound of PPO's win rate (ties half,
    interval over prompts). With one per prompt: Wilson's interval of the untied prompts' win rate. A lower bound
    above the threshold is a win, and an upper bound below it a loss, whatever the power; power qualifies only the
    interval that holds the threshold: where the test would have detected a ``cfg.detectable_win_rate`` with
    ``cfg.min_power`` it is "not beaten", otherwise "underpowered", and does not veto."""
    shown = f"{win.value:.3f} [{win.ci[0]:.3f}, {win.ci[1]:.3f}]"
    if not win.one_per_prompt:
        beaten = win.ci[0] > cfg.min_win_rate_lower
        return Verdict(beaten, shown + ("" if beaten else " (not beaten)"))
    decisive = win.wins + win.losses
    untied = wilson(win.wins, decisive)
    shown += f", ties {win.comparisons - decisive}/{win.comparisons}, untied {win.wins}-{win.losses}"
    shown += f" [{untied.lo:.3f}, {untied.hi:.3f}]"
    if untied.lo > cfg.min_win_rate_lower:
        return Verdict(True, shown)
    if untied.hi < cfg.min_win_rate_lower:
        return Verdict(False, shown + " (lost)")
    power = detection_power(decisive, cfg.detectable_win_rate, cfg.min_win_rate_lower)
    shown += f", power {power:.2f} at {cfg.detectable_win_rate}"
    if power < cfg.min_power:
        return Verdict(True, shown + " (underpowered: not deciding)")
    return Verdict(False, shown + " (not beaten)")


def _check(rule: str, test, mode: str | None = None) -> Reason:
    """Run one rule; a rule whose inputs are missing fails, saying what is missing (any other error raises)."""
    try:
        passed, detail = test()
    except _Missing as missing:
        passed, detail = False, f"missing from the report: {missing}"
    return Reason(rule, bool(passed), detail, mode)


def _rules_for_mode(gi: GateInput, cfg: GateConfig, mode: str) -> list[Reason]:
    judge = gi.judge.label

    def beats_every_baseline():
        # head to head against each baseline, not against the best by mean: a mean can hide a baseline
        # that beats PPO on most prompts (and means can tie)
        wins = {name: _win(gi, mode, "ppo_win_rate", name) for name in gated_baselines(gi, mode, cfg.baselines)}
        verdicts = {name: head_to_head(win, cfg) for name, win in wins.items()}
        shown = "; ".join(f"{name} {verdict.detail}" for name, verdict in verdicts.items())
        return all(v.passed for v in verdicts.values()), (
            f"{judge} win rate vs {shown}; every lower bound must exceed {cfg.min_win_rate_lower}"
        )

    def kl_within_budget():
        kl = _need(_policy(gi, mode, PPO).kl, f"modes.{mode}.policies.{PPO}.kl")
        return kl <= cfg.max_kl, f"KL from the SFT reference {kl:.2f} nats (budget {cfg.max_kl})"

    def not_below_sft():
        if gi.judge.pairwise:  # no means to compare: PPO must not lose to SFT head to head
            win = _win(gi, mode, "ppo_win_rate", "sft")
            return win.value >= 0.5, f"{judge}: PPO's win rate vs SFT {win.value:.3f} (at least 0.5, ties half)"
        ppo = _need(_policy(gi, mode, PPO).gold, f"modes.{mode}.policies.{PPO}.gold").value
        sft = _need(_policy(gi, mode, "sft").gold, f"modes.{mode}.policies.sft.gold").value
        return ppo >= sft - cfg.sft_tolerance, f"{judge} {ppo:.3f} vs SFT {sft:.3f} (tolerance {cfg.sft_tolerance})"

    def proxy_agrees_with_gold():
        # where the report has them, both rates over the comparisons the judge decides: a judge at its ceiling ties
        # most greedy answers (ties count half) while the RM never ties, and the ties alone would open a "gap"
        gaps, undecided = {}, []
        for name in gated_baselines(gi, mode, cfg.baselines):
            gold = _win(gi, mode, "ppo_win_rate", name).value
            rm = _win(gi, mode, "ppo_rm_win_rate", name)
            decided = rm.on_judge_decided
            if decided is None:
                gaps[name] = (rm.value - gold, rm.value, gold, "")
            elif decided.comparisons == 0:
                undecided.append(name)
            else:
                where = f" on the {decided.comparisons} comparisons {judge} decides"
                gaps[name] = (decided.proxy - decided.judge, decided.proxy, decided.judge, where)
        limit = cfg.overoptimisation.max_proxy_gold_gap
        unmeasured = f"; not measured vs {', '.join(undecided)} ({judge} ties every comparison)" if undecided else ""
        if not gaps:
            return True, f"not measured: {judge} ties every comparison{unmeasured}"
        worst = max(gaps, key=lambda name: gaps[name][0])
        gap, proxy, gold, where = gaps[worst]
        return (
            gap <= limit,
            f"largest gap vs '{worst}': RM win rate {proxy:.3f}, {judge} win rate {gold:.3f}{where}, "
            f"gap {gap:+.3f} (max {limit}){unmeasured}",
        )

    return [
        _check("beats every supervised baseline", beats_every_baseline, mode),
        _check("KL within budget", kl_within_budget, mode),
        _check("not worse than SFT", not_below_sft, mode),
        _check("reward model agrees with gold", proxy_agrees_with_gold, mode),
    ]


def decide(gi: GateInput, cfg: GateConfig) -> Decision:
    """Promote only if every rule holds in every configured mode; every check is one reason."""

    def data_valid():
        success = _need(_need(gi.data_validation, "data_validation").success, "data_validation.success")
        return success is True, "Great Expectations passed" if success is True else "Great Expectations failed"

    def eval_prompts_unseen():
        leaked = _need(
            _need(gi.data_validation, "data_validation").eval_prompts_in_training,
            "data_validation.eval_prompts_in_training",
        )
        return (
            leaked == 0,
            "no held-out prompt was trained on" if leaked == 0 else f"{leaked} held-out prompt(s) were trained on",
        )

    def all_finite():
        bad = _need(gi.non_finite_stages, "non_finite_stages")
        return not bad, "no NaN/inf in any stage" if not bad else f"NaN/inf in: {', '.join(bad)}"

    def rm_accurate():
        accuracy = _need(_need(gi.reward_model, "reward_model").accuracy, "reward_model.accuracy")
        return accuracy >= cfg.min_rm_accuracy, f"held-out accuracy {accuracy:.3f} (floor {cfg.min_rm_accuracy})"

    def members_agree():
        reward_model = _need(gi.reward_model, "reward_model")
        size = _need(reward_model.ensemble_size, "reward_model.ensemble_size")
        if size == 1:
            return True, "a single reward model"
        agreement = _need(reward_model.member_agreement, "reward_model.member_agreement")
        return agreement >= cfg.min_rm_member_agreement, (
            f"the {size} members order {agreement:.3f} of the held-out pairs alike "
            f"(floor {cfg.min_rm_member_agreement})"
        )

    def no_overoptimisation():
        if not gi.judge.scores_ppo_iterations:
            return True, (
                f"not measured: PPO's iterations were not scored by the {gi.judge.label}; "
                "each mode's RM-versus-judge win-rate gap still applies"
            )
        history = _need(gi.ppo_history, "ppo_history")
        if len(history) < 2 or any(h.gold is None or h.rm_score is None for h in history):
            raise _Missing("ppo_history (rm_score and gold per iteration)")
        return overoptimisation_verdict(history, gi.ppo_shipped_iteration, cfg.overoptimisation, gi.judge.label)

    reasons = [
        _check("data validation passed", data_valid),
        _check("held-out prompts unseen in training", eval_prompts_unseen),
        _check("no NaN/inf", all_finite),
        _check("reward model accuracy", rm_accurate),
        _check("reward ensemble members agree", members_agree),
        _check("no over-optimisation", no_overoptimisation),
    ]
    for mode in cfg.modes:
        reasons += _rules_for_mode(gi, cfg, mode)
    return Decision(promote=all(r.passed for r in reasons), reasons=reasons, score=gate_score(gi, cfg))


def decide_report(report: Mapping[str, Any], cfg: GateConfig) -> Decision:
    """``decide`` on the pipeline's report dict; a malformed report is a rejection that says why, never a crash."""
    try:
        gi = gate_input(report)
    except GateInputError as error:
        return Decision(promote=False, reasons=[Reason("gate input well-formed", False, str(error))], score=None)
    return decide(gi, cfg)


def gate_score(gi: GateInput, cfg: GateConfig) -> float | None:
    """The smallest CI lower bound of PPO's gold win rate over every gated baseline and every gated mode
    (None when one is missing)."""
    try:
        bounds = [bound for mode in cfg.modes for bound in win_lower_bounds(gi, mode, cfg.baselines).values()]
    except _Missing:
        return None
    return float(min(bounds)) if bounds else None
