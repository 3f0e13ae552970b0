"""Which snapshot of a trained policy ships: the one the labellers prefer on the held-out slice, never the gold judge.

Every trained policy (PPO and each preference baseline) keeps ``selection.candidates`` snapshots, evenly
spaced over its training. On the held-out slice of the labelled comparisons (the ranked groups that neither
the reward model nor any baseline trained on), each snapshot samples one response per prompt, and the
labeller compares it with the response that group's labellers ranked first. The snapshot with the highest
win rate (ties count half) ships. Those comparisons are fresh labels: they count in each method's label
budget, the same number for every method. Every snapshot meets the same prompts, the same reference
responses and, for a simulated labeller, the same noise (common random numbers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, SelectionConfig
from components.data.ranking import Ranker
from components.models.decoding import Decoder
from components.models.runtime import SINGLE, Runtime
from components.training.comparisons import sample_responses
from components.training.reward import group_comparisons


@dataclass(frozen=True)
class SliceItem:
    prompt: str
    reference: str  # the response the group's labellers ranked first
    reference_ended: bool


@dataclass(frozen=True)
class LabelledSlice:
    """What selection spends labels on: the held-out slice, and a fresh labeller for each snapshot judged on it (so
    each meets the same noise)."""

    items: list[SliceItem]
    make_ranker: Callable[[], Ranker] | None


def held_out_slice(held_out: list[dict], n_prompts: int) -> list[SliceItem]:
    """One item per held-out ranked group (at most ``n_prompts``), in the split's order:
    its prompt and best response."""
    items = []
    for group in group_comparisons(held_out)[:n_prompts]:
        rejected = {row["rejected"] for row in group}
        best = next(row for row in group if row["chosen"] not in rejected)
        items.append(SliceItem(best["prompt"], best["chosen"], bool(best.get("chosen_ended", True))))
    return items


def label_win_rate(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[SliceItem],
    ranker: Ranker,
    cfg: SelectionConfig,
    model_cfg: ModelConfig,
    seed: int,
    runtime: Runtime = SINGLE,
) -> float:
    """Share of the slice's prompts on which the labeller prefers the policy's sample to the reference (ties half)."""
    prompts = [item.prompt for item in items]
    decoder = Decoder(tokenizer, model_cfg, seed, runtime)
    samples = sample_responses(policy, prompts, decoder, 1, cfg.temperature, cfg.batch_size)
    wins = 0.0
    for item, ((text, ended),) in zip(items, samples, strict=True):
        if text == item.reference:
            wins += 0.5
            continue
        order = ranker(item.prompt, [text, item.reference], [ended, item.reference_ended])
        wins += order[0] == 0
    return wins / len(items)


@dataclass
class Selection:
    chosen_step: int  # -1: the final model, nothing was selected
    scores: dict[int, float]  # step -> label win rate on the slice (empty when nothing was selected)
    labels: int  # fresh labeller comparisons spent

    def metrics(self, unit: str = "step") -> dict[str, float]:
        chosen = {"selection.chosen_win_rate": self.scores[self.chosen_step]} if self.scores else {}
        return {
            f"selection.chosen_{unit}": float(self.chosen_step),
            "selection.labels": float(self.labels),
            **chosen,
            **{f"selection.win_rate.{unit}_{step}": score for step, score in self.scores.items()},
        }


def select_snapshot(
    final_model: PreTrainedModel,
    snapshots: list[tuple[int, dict[str, torch.Tensor]]],
    tokenizer: PreTrainedTokenizerBase,
    held_out: LabelledSlice,
    cfg: SelectionConfig,
    model_cfg: ModelConfig,
    seed: int,
    runtime: Runtime = SINGLE,
) -> tuple[PreTrainedModel, Selection]:
    """The snapshot the labellers prefer on the ``held_out`` slice (the latest on a tie), loaded into a copy of
    ``final_model``. No slice or one snapshot: the final model ships without spending labels."""
    items, make_ranker = held_out.items, held_out.make_ranker
    if not items or len(snapshots) <= 1:
        return final_model, Selection(snapshots[-1][0] if snapshots else -1, {}, 0)
    candidate = copy.deepcopy(final_model)

    def win_rates(_: int, taken: list[tuple[int, dict]]) -> list[tuple[int, float]]:
        rates = []
        for step, state in taken:
            candidate.load_state_dict(state)
            rates.append(
                (step, label_win_rate(candidate, tokenizer, items, make_ranker(), cfg, model_cfg, seed, local))
            )
        return rates

    # each snapshot whole on one rank (snapshot j on rank j mod N), as one process would judge it
    local = runtime.local()
    scores = dict(runtime.map_chunks(snapshots, 1, win_rates))
    chosen = max(scores, key=lambda step: (scores[step], step))
    candidate.load_state_dict(dict(snapshots)[chosen])
    return candidate, Selection(chosen, scores, len(items) * len(snapshots))
