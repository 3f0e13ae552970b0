"""The five reasons to fine-tune with RL rather than SL on the same labels, each mapped to what a run measures and
given a one-line verdict on this run's task: confirmed, refuted or inconclusive (an interval that holds both), or
not measured. A verdict needs every decoding mode to agree; the prompt is the unit of every interval."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.evaluation.evaluation_report import EvaluationReport

CONFIRMED, REFUTED, INCONCLUSIVE, NOT_MEASURED = "confirmed", "refuted", "inconclusive", "not measured"
WITHOUT_SFT = "rl_without_sft"  # the RL algorithm trained from the model SFT starts from (benchmarks only)


@dataclass(frozen=True)
class Reason:
    number: int
    claim: str
    measurement: str
    verdict: str
    evidence: str

    def line(self) -> str:
        return f"{self.number}. {self.verdict.upper()}: {self.claim} ({self.evidence})"


def side_of(lo: float, hi: float, line: float) -> str:
    """confirmed above ``line``, refuted below, inconclusive where the interval holds it."""
    return CONFIRMED if lo > line else REFUTED if hi < line else INCONCLUSIVE


def agreed(verdicts: list[str]) -> str:
    return verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE


def _flip(verdict: str) -> str:
    return {CONFIRMED: REFUTED, REFUTED: CONFIRMED}.get(verdict, verdict)


def rl_against(evaluation: EvaluationReport, baseline: str, rl: str) -> tuple[str, str]:
    """The RL policy's win rate against ``baseline`` in every mode: (its verdict over 0.5, the evidence)."""
    verdicts, evidence = [], []
    for mode in sorted(evaluation.modes):  # the same line whatever order the modes were stored in
        win = evaluation.modes[mode].ppo_win_rate.get(baseline)
        if win is None:
            continue
        lo, hi = win["ci"]
        verdicts.append(side_of(lo, hi, 0.5))
        evidence.append(f"{rl} vs {baseline}, {mode}: {win['value']:.3f} [{lo:.3f}, {hi:.3f}]")
    if not verdicts:
        return NOT_MEASURED, f"no judge scores of {rl} against {baseline}"
    return agreed(verdicts), "; ".join(evidence)


def reason_two(turns: int) -> tuple[str, str]:
    """Reason 2's claim and measurement: its single-answer half on a one-turn task, its conversational half on a
    two-turn one (data.synthetic.turns: 2), where the second answer's gold counts its consistency with the first."""
    if turns == 2:
        return (
            "coherent conversations need cumulative rewards: RL beats the combined loss on two-turn conversations",
            "the combined likelihood/unlikelihood loss against RL, whose reward adds both answers' up, on the two-turn "
            "task",
        )
    return (
        "a combined loss with a reward term works for single answers",
        "the combined likelihood/unlikelihood loss against RL on single answers (the conversational half: the same "
        "run on the two-turn task, profile two_turn)",
    )


def five_reasons(
    evaluation: EvaluationReport, rm_accuracy: float | None, sensitivity: dict | None, rl: str = "ppo", turns: int = 1
) -> list[Reason]:
    """``evaluation``: the run's held-out evaluation (the RL policy's win rates); ``rm_accuracy``: the
    reward model's held-out accuracy against the labels; ``sensitivity``: token_sensitivity.summarise's record;
    ``turns``: the task's turns (reason 2's half that the run measures)."""
    chosen, chosen_evidence = rl_against(evaluation, "chosen", rl)
    accuracy = f"RM held-out accuracy {rm_accuracy:.3f}; " if rm_accuracy is not None else ""
    combined, combined_evidence = rl_against(evaluation, "combined", rl)
    top_ranked, top_evidence = rl_against(evaluation, "top_ranked", rl)
    sft, sft_evidence = rl_against(evaluation, "sft", rl)
    alone, alone_evidence = rl_against(evaluation, WITHOUT_SFT, rl)
    if alone != NOT_MEASURED:  # SFT + RL must beat both halves alone
        sft, sft_evidence = agreed([sft, alone]), f"{sft_evidence}; {alone_evidence}"
    if sensitivity and "rm_minus_sft_agreement" in sensitivity:
        paired = sensitivity["rm_minus_sft_agreement"]
        tokens = side_of(*paired["ci"], 0.0)
        tokens_evidence = (
            f"{sensitivity['pairs']} {sensitivity.get('edits', 'random')} one-token edits that change the judge's "
            f"score: the RM orders "
            f"{sensitivity['rm_agrees']['value']:.3f} as the judge does, SFT's loss "
            f"{sensitivity['sft_loss_agrees']['value']:.3f}; difference {paired['value']:+.3f} "
            f"[{paired['ci'][0]:+.3f}, {paired['ci'][1]:+.3f}]"
        )
    else:
        tokens, tokens_evidence = NOT_MEASURED, "no automatic judge, or evaluation.token_sensitivity.prompts is 0"
    return [
        Reason(
            1,
            "SL on the labels learns to predict ranks, not responses",
            "the reward model is SL on the ranks; SFT on chosen uses the labels directly; RL turns the first into "
            "responses",
            chosen,
            accuracy + chosen_evidence,
        ),
        Reason(2, *reason_two(turns), combined if turns == 2 else _flip(combined), combined_evidence),
        Reason(
            3,
            "a token-level loss barely moves when one token changes a passage's meaning",
            "one-token edits of SFT's answers that change the judge's score: SFT's loss against the reward model",
            tokens,
            tokens_evidence,
        ),
        Reason(
            4,
            "the SL baseline of Learning to Summarize (SFT on the top-ranked response) loses to RLHF",
            "RL against SFT on each group's top-ranked response",
            top_ranked,
            top_evidence,
        ),
        Reason(
            5,
            "SFT and RL work in combination",
            "RL from SFT against SFT alone and against RL from the model SFT starts from (that one trained by "
            "benchmarks/rlhf_vs_sl.py --rl-without-sft)",
            sft,
            sft_evidence,
        ),
    ]


def as_records(reasons: list[Reason]) -> list[dict]:
    return [asdict(reason) for reason in reasons]


@dataclass(frozen=True)
class FiveReasons:
    """The five reasons' verdicts on a run, and reason 3's own measurement (None where none was made)."""

    token_sensitivity: dict | None  # token_sensitivity.summarise's record, with the kind of edits
    reasons: list[Reason]

    def as_record(self) -> dict:
        return {"token_sensitivity": self.token_sensitivity, "reasons": as_records(self.reasons)}


def format_reasons(reasons: list[Reason]) -> str:
    return "\n".join(["Five reasons for RL over SL on the same labels, on this run:", *(r.line() for r in reasons)])


def format_records(records: list[dict]) -> str:
    return format_reasons([Reason(**record) for record in records])
