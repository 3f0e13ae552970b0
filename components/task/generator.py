"""Builds the embedded data set from the config: same params and seed, same bytes."""

from __future__ import annotations

import random

from components.config import Config
from components.data import files
from components.data.environment import Dataset
from components.data.ranking import ranked_pairs
from components.task.demonstrator import draw_carelessness, write_answer
from components.task.labeler import SimulatedLabeler
from components.task.prompts import Prompt, all_prompts

GENERATOR_VERSION = "reviews-v5"  # bump whenever the generator's output changes for the same params


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
    train, held_out = split_prompts(all_prompts(spec.turns), spec.eval_prompt_fraction, cfg.seed)
    params = spec.model_dump()
    if spec.turns == 1:
        del params["turns"]  # a one-turn task's manifest (and data version) stays what it was before turns existed
    return {
        "source": "synthetic",
        "generator": GENERATOR_VERSION,
        "seed": cfg.seed,
        "params": params,
        "split": {
            "train_prompt_ids": [p.prompt_id for p in train],
            "eval_prompt_ids": [p.prompt_id for p in held_out],
        },
    }


def generate_synthetic(cfg: Config) -> Dataset:
    spec = cfg.data.synthetic
    train, held_out = split_prompts(all_prompts(spec.turns), spec.eval_prompt_fraction, cfg.seed)

    demo_rng = _stream(cfg.seed, "demonstrations")
    demonstrations = []
    for _ in range(spec.n_demonstrations):
        prompt = demo_rng.choice(train)
        carelessness = draw_carelessness(demo_rng, spec.carelessness_alpha, spec.carelessness_beta)
        demonstrations.append(
            {
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.text,
                "response": write_answer(prompt, carelessness, demo_rng, stock_closing=spec.stock_closing_rate),
                "carelessness": carelessness,
            }
        )

    # The static comparison file: demonstrator responses ranked by the simulated labeler.
    pref_rng = _stream(cfg.seed, "comparisons")
    by_text = {p.text: p for p in train}
    comparison_prompts = [pref_rng.choice(train).text for _ in range(spec.n_comparison_prompts)]

    def demonstrations_for(prompt_text: str) -> list[tuple[str, bool]]:
        prompt = by_text[prompt_text]
        return [
            (write_answer(prompt, draw(pref_rng), pref_rng, stock_closing=spec.stock_closing_rate), True)
            for _ in range(spec.responses_per_comparison)
        ]

    def draw(rng: random.Random) -> float:
        return draw_carelessness(rng, spec.carelessness_alpha, spec.carelessness_beta)

    labeler = SimulatedLabeler(spec.labeler_temperature, _stream(cfg.seed, "labeler"))
    preferences = [
        {"prompt_id": by_text[prompt].prompt_id, **pair, "labeler": "simulated-bradley-terry"}
        for prompt in comparison_prompts
        for pair, _, _ in ranked_pairs(prompt, demonstrations_for(prompt), labeler.rank)
    ]
    eval_prompts = [{"prompt_id": p.prompt_id, "prompt": p.text} for p in held_out]

    rows = {files.DEMONSTRATIONS: demonstrations, files.PREFERENCES: preferences, files.EVAL_PROMPTS: eval_prompts}
    return Dataset(rows, synthetic_manifest(cfg))
