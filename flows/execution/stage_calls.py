"""What each stage that trains or decodes calls, in one place for both ways it runs: in the flow's own process with
the models in memory, or launched under `accelerate launch` (flows/execution/stage_worker.py) with the models loaded
from
their directories. Each call takes the config, the tokenizer, the stage's plain inputs (rows, prompts, options),
its input models by name, the runtime, the preference task (None for user data) and a progress callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from components.config import Config
from components.data.environment import Environment
from components.data.ranking import Ranker
from components.evaluation import report
from components.evaluation.report import reward_model_gold_accuracy
from components.models.decoding import Decoder
from components.models.runtime import Runtime
from components.training import recipe
from components.training.loop import Harness
from components.training.rounds import RoundLabels

Log = Callable[[int, dict], None] | None


def selection_ranker(environment: Environment | None) -> Callable[[], Ranker] | None:
    """A fresh labeller per candidate snapshot, every one with the same noise (common random numbers); none for
    user data, where the last snapshot ships."""
    if environment is None:
        return None
    return lambda: environment.labeller("selection")


def sft(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    return recipe.sft_stage(cfg, tokenizer, args["demonstrations"], log=log, runtime=runtime)


def comparisons(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    """The sampler's samples on the round's draw of training prompts, ranked by the task's labeller on its
    ``stream``."""
    rank = environment.labeller(args["stream"]) if environment is not None else None
    label = recipe.comparison_labeller(cfg, rank, args["demonstrations"])
    return recipe.comparisons_stage(
        cfg,
        tokenizer,
        models["sampler"],
        args["train_prompts"],
        label,
        args.get("round_index"),
        args.get("group_offset", 0),
        runtime=runtime,
    )


def reward_model(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    """The reward model (ensemble); with the task, its held-out accuracy by the gold judge too."""
    result = recipe.reward_stage(
        cfg,
        tokenizer,
        models["sft"],
        args["comparisons"],
        args["train_prompts"],
        args.get("demonstrations"),
        log=log,
        runtime=runtime,
    )
    _, valid = recipe.labelled_split(cfg, args["comparisons"])
    if valid and environment is not None:
        result.metrics["accuracy_gold"] = reward_model_gold_accuracy(
            result.model, tokenizer, valid, cfg.model, environment.gold, runtime
        )
    return result


def baseline(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    return recipe.baseline_stage(
        cfg,
        args["name"],
        tokenizer,
        models["sft"],
        args["comparisons"],
        log=log,
        make_ranker=selection_ranker(environment),
        runtime=runtime,
    )


def iterative_dpo(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    labels = RoundLabels(args["round_index"], args["round_rows"], args["seen_rows"])
    harness = Harness(runtime, log)
    return recipe.iterative_dpo_stage(
        cfg, tokenizer, models["sft"], models["previous"], labels, selection_ranker(environment), harness
    )


def decode(cfg: Config, tokenizer, args: dict, models: dict, runtime: Runtime, environment, log: Log):
    """The held-out decodings ``args["wanted"]`` ([policy, mode] pairs; best-of-n samples the reference) of the
    policies in ``models`` ('sft' among them, the KL reference), scored by ``models["reward_model"]``: as
    ``{"policy/mode": Responses as a dict}``."""
    policies = {name: model for name, model in models.items() if name != "reward_model"}
    # each decoding whole on one rank (decoding j on rank j mod N): a held-out decoding is one or two batches, too
    # few to split, and one rank decodes it exactly as one process would
    decodings = report.decoders(
        report.EvaluatedModels(policies, models["reward_model"]),
        args["eval_prompts"],
        cfg.evaluation,
        Decoder(tokenizer, cfg.model, cfg.seed, runtime.local()),
        cfg.baselines.best_of_n,
    )

    def decoded(_: int, wanted: list) -> list[dict]:
        return [dataclasses.asdict(decodings[mode][policy]()) for policy, mode in wanted]

    responses = runtime.map_chunks(args["wanted"], 1, decoded)
    named = {f"{policy}/{mode}": out for (policy, mode), out in zip(args["wanted"], responses, strict=True)}
    return recipe.StageResult(named, {"decodings": len(named)})


CALLS: dict[str, Callable[..., Any]] = {
    "sft": sft,
    "comparisons": comparisons,
    "reward_model": reward_model,
    "baseline": baseline,
    "iterative_dpo": iterative_dpo,
    "decode": decode,
}
# what each call hands back: a causal LM, a reward model (ensemble), or JSON (rows, responses)
OUTPUTS = {"sft": "policy", "comparisons": "rows", "reward_model": "reward_model", "baseline": "policy"}
OUTPUTS |= {"iterative_dpo": "policy", "decode": "rows"}
