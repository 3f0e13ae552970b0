"""What each stage of the recipe holds at once, for the memory plan (components/models/memory.py): its trained and
frozen models and its largest micro-batch, per rank.

- SFT trains the policy (adapters only for a local model: one from scratch trains in full).
- The reward model trains a scalar model made from SFT's transformer (with its new head) while SFT is held; a batch of
  ranked groups scores every distinct response of each group (K of them). With its own transformer
  (``reward.model``, the ``reward_shape``), that transformer's SFT runs first, beside SFT: the stage needs the larger.
- chosen and top_ranked train a copy of SFT; combined and DPO score chosen and rejected in one pass (2 rows a pair);
  DPO also holds its reference (none with adapters: the policy with its adapters off). Each keeps its selection
  snapshots (``selection.candidates`` copies of its weights).
- PPO trains the policy and the critic (the reward model's size; RLOO, GRPO and REINFORCE++: the policy alone) while
  it holds the reward model (each ensemble member, as handed in and the frozen copy it scores with), the reference
  (none with adapters), SFT and its snapshots; one pass runs at a time: the larger of the policy's (with the
  vocabulary's logits) and the critic's, or scoring the rank's whole rollout shard (its logits and their log-softmax)
  when that is larger.
- The evaluation holds every policy it decodes and the reward model; a batch of responses keeps its logits (and their
  log-softmax) for the KL from the reference. A rank decodes whole decodings, so its batch is the configured one.
"""

from __future__ import annotations

import dataclasses

from components.config import Config
from components.models.memory import (
    FP32,
    NO_ACTIVATIONS,
    MicroBatch,
    ModelShape,
    Placement,
    StageMemory,
    micro_rows,
    stage_memory,
)
from components.training.recipe import SUPERVISED_BASELINES


def recipe_memory(
    cfg: Config, shape: ModelShape, place: Placement, reward_shape: ModelShape | None = None
) -> list[StageMemory]:
    """``reward_shape``: the reward model's transformer when ``reward.model`` gives it its own (None: the policy's)."""
    return [
        dataclasses.replace(stage, framework=int(cfg.distributed.memory_framework_gib * 2**30))
        for stage in models_and_activations(cfg, shape, place, reward_shape or shape)
    ]


def together(stage: str, *parts: StageMemory) -> StageMemory:
    """Models held at once: their weights, gradients and optimiser states add up; one pass runs at a time."""
    return StageMemory(
        stage,
        sum(p.weights for p in parts),
        sum(p.gradients for p in parts),
        sum(p.optimizer for p in parts),
        max(p.activations for p in parts),
    )


def larger(a: StageMemory, b: StageMemory) -> StageMemory:
    return a if a.total >= b.total else b


def models_and_activations(
    cfg: Config, shape: ModelShape, place: Placement, reward_shape: ModelShape
) -> list[StageMemory]:
    adapted = cfg.model.peft is not None
    sequence = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    n = place.processes

    def rows(section) -> int:
        return micro_rows(section.batch_size, n, section.gradient_accumulation_steps)

    sft_adapted = adapted and cfg.model.source == "local"
    held_sft = stage_memory("sft", shape, place, adapted, 0, 1, MicroBatch(0, sequence))
    reward = together(
        "reward_model",
        stage_memory(
            "reward_model",
            reward_shape,
            place,
            adapted,
            1,
            0,
            MicroBatch(rows(cfg.reward) * cfg.comparisons.responses_per_prompt, sequence, logits=False),
        ),
        held_sft,
    )
    if cfg.reward.model is not None:  # its own transformer's SFT first, beside SFT
        own_sft = stage_memory(
            "reward_model", reward_shape, place, sft_adapted, 1, 0, MicroBatch(rows(cfg.sft), sequence)
        )
        reward = larger(reward, together("reward_model", own_sft, held_sft))
    stages = [stage_memory("sft", shape, place, sft_adapted, 1, 0, MicroBatch(rows(cfg.sft), sequence)), reward]
    for name in SUPERVISED_BASELINES:
        section = getattr(cfg.baselines, name)
        pairs = name in ("combined", "dpo")  # chosen and rejected in one pass
        frozen = 1 + (name == "dpo" and not adapted) + cfg.selection.candidates
        stages.append(
            stage_memory(name, shape, place, adapted, 1, frozen, MicroBatch(rows(section) * (1 + pairs), sequence))
        )
    ppo_rows = micro_rows(cfg.ppo.minibatch_size, n, cfg.ppo.gradient_accumulation_steps)
    # the policy beside the reference, SFT and the snapshots; PPO's critic (the reward model's size) beside the reward
    # model as handed in and the frozen copy PPO scores with
    critic = int(cfg.rl.algorithm == "ppo")
    ppo = together(
        "ppo",
        stage_memory(
            "ppo",
            shape,
            place,
            adapted,
            1,
            (not adapted) + 1 + cfg.selection.candidates,
            MicroBatch(ppo_rows, sequence),
        ),
        stage_memory(
            "ppo",
            reward_shape,
            place,
            adapted,
            critic,
            2 * cfg.reward.ensemble_size,
            MicroBatch(ppo_rows * critic, sequence, logits=False),
        ),
    )
    # scoring a rank's whole rollout shard: the logits and their log-softmax, without gradient
    scoring = 2 * micro_rows(cfg.ppo.rollout_batch_size, n, 1) * sequence * shape.vocabulary * FP32
    stages.append(dataclasses.replace(ppo, activations=max(ppo.activations, scoring)))
    policies = 2 + len(SUPERVISED_BASELINES)  # sft, the baselines, ppo
    evaluation = together(
        "evaluation",
        stage_memory("evaluation", shape, Placement(), False, 0, policies, NO_ACTIVATIONS),
        stage_memory("evaluation", reward_shape, Placement(), False, 0, cfg.reward.ensemble_size, NO_ACTIVATIONS),
    )
    # each decoding is a rank's whole (decodings are shared out whole, not split), so its batch is not divided
    inference_logits = 2 * cfg.evaluation.batch_size * sequence * shape.vocabulary * FP32
    stages.append(
        StageMemory(evaluation.stage, evaluation.weights, 0, 0, inference_logits)
    )  # logits and log-softmax, no gradient
    return stages
