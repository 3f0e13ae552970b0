"""The held-out evaluation report: every policy decoded the same way, under every configured mode.

Per mode: each policy's summary (gold mean with CI, RM score, KL from the SFT reference, length,
distinct-1/2, unterminated share), PPO's win rate against every other policy judged by gold and by the reward model
(ties count half; under sampling every sample against every sample of the same prompt; intervals over prompts, the
unit: components/evaluation/intervals.py), and an example table for a person to read.
Best-of-n over the SFT policy joins sampling mode as a non-training reference point.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import PreTrainedModel

from components.config import BestOfNConfig, EvaluationConfig, ModelConfig
from components.evaluation.best_of_n import best_of_n
from components.evaluation.evaluation_report import EvaluationReport, ModeEvaluation
from components.evaluation.intervals import on_judge_decided, win_rate
from components.evaluation.policy_eval import DecodingMode, GoldFn, Responses, Scores, sample_responses, summarise
from components.models.decoding import Decoder
from components.models.runtime import SINGLE, Runtime
from components.models.scoring import score_comparisons

PPO = "ppo"
REFERENCE = "sft"
BEST_OF_N = "best_of_n"

Decode = Callable[[], Responses]
# (policy, mode, decode) -> the policy's responses under the mode before any judge reads them: decode()'s, or the same
# responses remembered from an earlier decoding (flows/tasks/decoding_reuse.py)
Recall = Callable[[str, DecodingMode, Decode], Responses]


def decode_now(policy: str, mode: DecodingMode, decode: Decode) -> Responses:
    return decode()


def decodes_best_of_n(mode: DecodingMode) -> bool:
    """Best-of-n is a reference point for sampling: under greedy decoding its n samples would be one."""
    return not mode.greedy


def decoding_modes(cfg: EvaluationConfig) -> list[DecodingMode]:
    return [
        DecodingMode(name, name == "greedy", 1 if name == "greedy" else cfg.samples_per_prompt, cfg.temperature)
        for name in cfg.modes
    ]


def example_rows(responses: dict[str, Responses], mode: DecodingMode, n_examples: int) -> list[dict]:
    """The first sample of each policy for the first ``n_examples`` prompts, one row per (prompt, policy)."""
    rows = []
    first = next(iter(responses.values()))
    for p in range(min(n_examples, len(first.prompts) // mode.samples_per_prompt)):
        i = p * mode.samples_per_prompt
        for name, out in responses.items():
            rows.append(
                {
                    "mode": mode.name,
                    "prompt": out.prompts[i],
                    "policy": name,
                    "response": out.texts[i],
                    "gold": out.gold[i] if out.gold else None,
                    "rm": out.rm_scores[i] if out.rm_scores else None,
                }
            )
    return rows


@dataclass(frozen=True)
class EvaluatedModels:
    """The policies under evaluation by name ('sft' among them: every policy's KL reference and best-of-n's sampler)
    and the reward model that scores every response and picks best-of-n's."""

    policies: dict[str, PreTrainedModel]
    reward_model: PreTrainedModel


def best_of_n_responses(
    reference: PreTrainedModel,
    reward_model: PreTrainedModel,
    eval_prompts: list[str],
    mode: DecodingMode,
    cfg: BestOfNConfig,
    decoder: Decoder,
) -> Responses:
    """Best-of-n over the reference for every sample the mode takes of each prompt; its RM score is the pick's."""
    expanded = [p for p in eval_prompts for _ in range(mode.samples_per_prompt)]
    texts, ended, scores = best_of_n(reference, reward_model, expanded, cfg, decoder)
    return Responses(expanded, texts, ended, scores)


def decoders(
    models: EvaluatedModels,
    eval_prompts: list[str],
    cfg: EvaluationConfig,
    decoder: Decoder,
    best_of_n_cfg: BestOfNConfig | None = None,
) -> dict[str, dict[str, Decode]]:
    """{mode: {policy: decode}}: how each policy is decoded on the held-out prompts under each mode (best-of-n over
    the reference under sampling modes)."""
    reference, reward_model = models.policies[REFERENCE], models.reward_model
    decodings: dict[str, dict[str, Decode]] = {}
    for mode in decoding_modes(cfg):
        decodings[mode.name] = {
            name: partial(
                sample_responses,
                policy,
                eval_prompts,
                mode,
                decoder,
                cfg.batch_size,
                reference=reference,
                reward_model=reward_model,
            )
            for name, policy in models.policies.items()
        }
        if best_of_n_cfg is not None and decodes_best_of_n(mode):
            decodings[mode.name][BEST_OF_N] = partial(
                best_of_n_responses, reference, reward_model, eval_prompts, mode, best_of_n_cfg, decoder
            )
    return decodings


def evaluate_policies(
    models: EvaluatedModels,
    eval_prompts: list[str],
    cfg: EvaluationConfig,
    decoder: Decoder,
    judge: Scores | None,
    best_of_n_cfg: BestOfNConfig | None = None,
    on_responses: Callable[[DecodingMode, dict[str, Responses]], None] | None = None,
    recall: Recall = decode_now,
) -> EvaluationReport:
    """Every mode's policies, PPO's win rates and examples; ``models.policies`` must hold 'sft' and 'ppo'.

    Without a ``judge`` (people judge pairs later) no policy has a judge score and ``ppo_win_rate`` is empty;
    ``on_responses`` sees every mode's responses, e.g. to put them in pairs. ``recall`` may hand back a decoding
    made before instead of decoding again; the judge scores every response afresh either way."""
    modes: dict[str, ModeEvaluation] = {}
    decodings = decoders(models, eval_prompts, cfg, decoder, best_of_n_cfg)
    for mode in decoding_modes(cfg):
        responses: dict[str, Responses] = {}
        for name, decode in decodings[mode.name].items():
            out = recall(name, mode, decode)
            out.gold = judge(out.prompts, out.texts, out.ended) if judge is not None else []
            responses[name] = out
        if on_responses is not None:
            on_responses(mode, responses)
        ppo = responses[PPO]
        modes[mode.name] = ModeEvaluation(
            policies={name: summarise(out, mode.samples_per_prompt) for name, out in responses.items()},
            ppo_win_rate={
                name: win_rate(ppo.gold, out.gold, mode.samples_per_prompt).as_dict()
                for name, out in responses.items()
                if name != PPO and judge is not None
            },
            ppo_rm_win_rate={
                name: win_rate(ppo.rm_scores, out.rm_scores, mode.samples_per_prompt).as_dict()
                | (
                    {
                        "on_judge_decided": on_judge_decided(
                            ppo.gold, out.gold, ppo.rm_scores, out.rm_scores, mode.samples_per_prompt
                        )
                    }
                    if judge is not None
                    else {}
                )
                for name, out in responses.items()
                if name != PPO and out.rm_scores
            },
            examples=example_rows(responses, mode, cfg.n_examples),
        )
    return EvaluationReport(modes)


def judge_monitor(judge: Scores) -> Callable[[list[str], list[str], list[bool]], dict[str, float]]:
    """PPO's ``Monitor``: the judge's mean score of its rollouts, logged as ``gold`` beside the RM score, never used
    for training."""

    def monitor(prompts: list[str], texts: list[str], ended: list[bool]) -> dict[str, float]:
        return {"gold": statistics.fmean(judge(prompts, texts, ended))}

    return monitor


def gold_accuracy(
    chosen_rewards: Sequence[float] | torch.Tensor,
    rejected_rewards: Sequence[float] | torch.Tensor,
    chosen_gold: Sequence[float],
    rejected_gold: Sequence[float],
) -> float:
    """Share of pairs the reward model orders as the gold judge does; pairs the judge ties are skipped."""
    agree = decided = 0
    for rc, rr, gc, gr in zip(
        _floats(chosen_rewards), _floats(rejected_rewards), chosen_gold, rejected_gold, strict=True
    ):
        if gc == gr:
            continue
        decided += 1
        agree += (rc > rr) == (gc > gr)
    return agree / decided if decided else float("nan")


def _floats(values: Sequence[float] | torch.Tensor) -> list[float]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def reward_model_gold_accuracy(
    reward_model: PreTrainedModel,
    tokenizer,
    rows: list[dict],
    model_cfg: ModelConfig,
    gold: GoldFn,
    runtime: Runtime = SINGLE,
) -> float:
    """Share of held-out comparison pairs the reward model orders as the gold judge does."""
    chosen, rejected = score_comparisons(reward_model, tokenizer, rows, model_cfg, runtime)
    return gold_accuracy(
        chosen,
        rejected,
        [gold(r["prompt"], r["chosen"], r.get("chosen_ended", True)) for r in rows],
        [gold(r["prompt"], r["rejected"], r.get("rejected_ended", True)) for r in rows],
    )


def format_table(report: EvaluationReport, judge: str = "gold") -> str:
    """Every policy under every mode: the judge's mean [CI], RM, KL, length, unterminated, PPO's win rate [CI] by the
    judge (``judge``: how to name it, "gold" for the embedded task's)."""
    lines = []
    for mode, block in report.modes.items():
        lines.append(f"\n== {mode} decoding, held-out prompts ==")
        if judge != "gold":
            lines.append(f"(scored by the {judge})")
        judged = "gold" if judge == "gold" else "judge"
        lines.append(
            f"{'policy':<10} {judged + ' mean [95% CI]':<24} {'RM':>7} {'KL':>7} {'len':>5} {'unterm':>6}  "
            f"PPO {judged} win rate [95% CI over prompts]"
        )
        for name, s in block.policies.items():
            g, wr = s.get("gold"), block.ppo_win_rate.get(name)
            wins = f"{wr['value']:.3f} [{wr['ci'][0]:.3f}, {wr['ci'][1]:.3f}]" if wr else "-"
            if wr and "ties" in wr:
                wins += f" ties {wr['ties']:.2f}"
            kl = f"{s['kl']:7.2f}" if "kl" in s else "      -"
            mean = f"{g['value']:6.3f} [{g['ci'][0]:.3f}, {g['ci'][1]:.3f}]{'':<4}" if g else f"{'-':<25}"
            lines.append(
                f"{name:<10} {mean} {s['rm']['value']:7.3f} {kl} {s['length']:5.1f} {s['unterminated']:6.3f}  {wins}"
            )
    return "\n".join(lines)


@dataclass(frozen=True)
class ComparisonTerms:
    """What makes the comparison fair: one SFT start and one set of held-out prompts for every policy, each policy's
    label budget (recipe.label_budgets' record: validation slices and selection labels included) and the
    configurations its settings were chosen from."""

    sft_start: str  # the SFT stage's key
    eval_prompt_count: int
    eval_prompts_md5: str  # of the sorted held-out prompts, one a line
    label_budgets: dict[str, dict]
    tuning_budgets: dict[str, int]
    tuning: dict  # the tuning section as JSON
    tuned_on_these_data: bool  # False: every setting is params.yaml's, chosen on the embedded task

    def as_record(self) -> dict:
        """budgets.json."""
        return {
            "sft_start": self.sft_start,
            "eval_prompts": {"count": self.eval_prompt_count, "md5": self.eval_prompts_md5},
            "label_budgets": self.label_budgets,
            "tuning_budgets": self.tuning_budgets,
            "tuning": {**self.tuning, "on_these_data": self.tuned_on_these_data},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ComparisonTerms:
        tuning = dict(record["tuning"])
        on_these_data = tuning.pop("on_these_data", True)
        prompts = record["eval_prompts"]
        return cls(
            record["sft_start"],
            prompts["count"],
            prompts["md5"],
            record["label_budgets"],
            record["tuning_budgets"],
            tuning,
            on_these_data,
        )


def format_budgets(terms: ComparisonTerms) -> str:
    """What each policy used: one SFT start and one prompt set for all, each policy's labels, configurations tried
    and trained parameters (all of them, or its adapters)."""
    lines = [
        f"\n== what each policy used (one SFT start {terms.sft_start}, "
        f"the same {terms.eval_prompt_count} held-out prompts) ==",
        f"{'policy':<11} {'train pairs':>11} {'held-out':>9} {'selection':>10} "
        f"{'all labels':>10} {'configs tried':>13} {'trained params':>14}",
    ]
    for name, budget in terms.label_budgets.items():
        trained = budget.get("trainable_parameters")
        lines.append(
            f"{name:<11} {budget['train_pairs']:>11} {budget['held_out_pairs']:>9} {budget['selection_labels']:>10} "
            f"{budget['total']:>10} {terms.tuning_budgets.get(name, 0):>13} "
            f"{'-' if trained is None else f'{trained:,}':>14}"
        )
    if terms.tuned_on_these_data:
        lines.append(
            f"(configurations tried on tuning seed {terms.tuning['seed']}, selected by held-out labels: "
            f"{terms.tuning['results']})"
        )
    else:
        lines.append("(nothing was tuned on these data: every setting is params.yaml's, chosen on the embedded task)")
    return "\n".join(lines)
