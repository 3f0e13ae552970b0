"""Builds the embedded data set from the config: same params and seed, same bytes."""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

from components.config import Config
from components.data import files
from components.data.demonstrator import draw_carelessness, write_demonstration
from components.data.gold_judge import gold_score
from components.data.labeler import SimulatedLabeler, collect_comparisons, label_agreement
from components.data.task import Prompt, all_prompts

GENERATOR_VERSION = "reviews-v4"  # bump whenever the generator's output changes for the same params


@dataclass
class Dataset:
    rows: dict[str, list[dict]]
    manifest: dict


def _stream(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible random stream per purpose (string seeds hash deterministically)."""
    return random.Random(f"{seed}/{purpose}")


def split_prompts(prompts: list[Prompt], eval_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    shuffled = list(prompts)
    _stream(seed, "split").shuffle(shuffled)
    n_eval = max(1, round(eval_fraction * len(shuffled)))
    return sorted(shuffled[n_eval:], key=lambda p: p.prompt_id), sorted(shuffled[:n_eval], key=lambda p: p.prompt_id)


def synthetic_manifest(cfg: Config) -> dict:
    """What the generated data are made from: cheap to compute, no rows generated."""
    spec = cfg.data.synthetic
    train, held_out = split_prompts(all_prompts(), spec.eval_prompt_fraction, cfg.seed)
    return {
        "source": "synthetic",
        "generator": GENERATOR_VERSION,
        "seed": cfg.seed,
        "params": spec.model_dump(),
        "split": {
            "train_prompt_ids": [p.prompt_id for p in train],
            "eval_prompt_ids": [p.prompt_id for p in held_out],
        },
    }


def generate_synthetic(cfg: Config) -> Dataset:
    spec = cfg.data.synthetic
    train, held_out = split_prompts(all_prompts(), spec.eval_prompt_fraction, cfg.seed)

    demo_rng = _stream(cfg.seed, "demonstrations")
    demonstrations = []
    for _ in range(spec.n_demonstrations):
        prompt = demo_rng.choice(train)
        carelessness = draw_carelessness(demo_rng, spec.carelessness_alpha, spec.carelessness_beta)
        demonstrations.append(
            {
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.text,
                "response": write_demonstration(prompt, carelessness, demo_rng, stock_closing=spec.stock_closing_rate),
                "carelessness": carelessness,
            }
        )

    # The static comparison file: demonstrator responses ranked by the simulated labeler.
    pref_rng = _stream(cfg.seed, "comparisons")
    by_text = {p.text: p for p in train}
    comparison_prompts = [pref_rng.choice(train).text for _ in range(spec.n_comparison_prompts)]

    def sample(prompt_text: str) -> list[str]:
        prompt = by_text[prompt_text]
        return [
            write_demonstration(prompt, draw_carelessness(pref_rng, spec.carelessness_alpha, spec.carelessness_beta), pref_rng,
                                stock_closing=spec.stock_closing_rate)
            for _ in range(spec.responses_per_comparison)
        ]

    labeler = SimulatedLabeler(spec.labeler_temperature, _stream(cfg.seed, "labeler"))
    preferences = [
        {"prompt_id": by_text[pair["prompt"]].prompt_id, **pair, "labeler": "simulated-bradley-terry"}
        for pair in collect_comparisons(comparison_prompts, sample, labeler.rank)
    ]
    eval_prompts = [{"prompt_id": p.prompt_id, "prompt": p.text} for p in held_out]

    rows = {files.DEMONSTRATIONS: demonstrations, files.PREFERENCES: preferences, files.EVAL_PROMPTS: eval_prompts}
    return Dataset(rows, synthetic_manifest(cfg))


def describe(demonstrations: list[dict], preferences: list[dict], temperature: float) -> dict:
    """What a person wants to know about the embedded data (uses the gold judge: reporting only)."""
    gold = [gold_score(d["prompt"], d["response"]) for d in demonstrations]
    agreement = label_agreement(preferences, temperature)
    return {
        "demonstrations_gold_mean": round(statistics.fmean(gold), 4),
        "demonstrations_gold_std": round(statistics.pstdev(gold), 4),
        "demonstrations_gold_quartiles": [round(q, 4) for q in statistics.quantiles(gold, n=4)] if len(gold) > 1 else gold,
        "label_accuracy_vs_gold": round(agreement.accuracy, 4),
        "label_accuracy_expected": round(agreement.expected_accuracy, 4),
        "label_ties": agreement.ties,
    }
