"""What each stage of the recipe holds at once, for the memory plan (components/models/memory.py): its trained and
frozen models and its largest micro-batch, per rank.

- SFT trains the policy (adapters only for a local model: one from scratch trains in full).
- The reward model trains a scalar model made from SFT's transformer (with its new head) while SFT is held; a batch of
  ranked groups scores every distinct response of each group (K of them).
- chosen and top_ranked train a copy of SFT; combined and DPO score chosen and rejected in one pass (2 rows a pair);
  DPO also holds its reference (none with adapters: the policy with its adapters off). Each keeps its selection
  snapshots (``selection.candidates`` copies of its weights).
- PPO trains the policy and the critic (RLOO, GRPO and REINFORCE++: the policy alone) while it holds the reward
  model (each ensemble member, as handed in and the frozen copy it scores with), the reference (none with adapters),
  SFT and its snapshots; the policy's pass (with the vocabulary's logits) is the larger of the two, or scoring the
  rank's whole rollout shard (its logits and their log-softmax) when that is larger.
- The evaluation holds every policy it decodes and the reward model; a batch of responses keeps its logits (and their
  log-softmax) for the KL from the reference. A rank decodes whole decodings, so its batch is the configured one.
"""

from __future__ import annotations

import dataclasses

from components.config import Config
from components.models.memory import FP32, ModelShape, Placement, StageMemory, micro_rows, stage_memory
from components.training.recipe import SUPERVISED_BASELINES


def recipe_memory(cfg: Config, shape: ModelShape, place: Placement) -> list[StageMemory]:
    return [
        dataclasses.replace(stage, framework=int(cfg.distributed.memory_framework_gib * 2**30))
        for stage in models_and_activations(cfg, shape, place)
    ]


def models_and_activations(cfg: Config, shape: ModelShape, place: Placement) -> list[StageMemory]:
    adapted = cfg.model.peft is not None
    sequence = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    n = place.processes

    def rows(section) -> int:
        return micro_rows(section.batch_size, n, section.gradient_accumulation_steps)

    stages = [
        stage_memory("sft", shape, place, adapted and cfg.model.source == "local", 1, 0, rows(cfg.sft), sequence),
        stage_memory(
            "reward_model",
            shape,
            place,
            adapted,
            1,
            1,
            rows(cfg.reward) * cfg.comparisons.responses_per_prompt,
            sequence,
            logits=False,
        ),
    ]
    for name in SUPERVISED_BASELINES:
        section = getattr(cfg.baselines, name)
        pairs = name in ("combined", "dpo")  # chosen and rejected in one pass
        frozen = 1 + (name == "dpo" and not adapted) + cfg.selection.candidates
        stages.append(stage_memory(name, shape, place, adapted, 1, frozen, rows(section) * (1 + pairs), sequence))
    ppo_rows = micro_rows(cfg.ppo.minibatch_size, n, cfg.ppo.gradient_accumulation_steps)
    # the reward model as handed in and the frozen copy PPO scores with, the reference, SFT, the snapshots
    frozen = 2 * cfg.reward.ensemble_size + (not adapted) + 1 + cfg.selection.candidates
    trained = 2 if cfg.rl.algorithm == "ppo" else 1  # the policy, and PPO's critic
    ppo = stage_memory("ppo", shape, place, adapted, trained, frozen, ppo_rows, sequence)
    # scoring a rank's whole rollout shard: the logits and their log-softmax, without gradient
    scoring = 2 * micro_rows(cfg.ppo.rollout_batch_size, n, 1) * sequence * shape.vocabulary * FP32
    stages.append(dataclasses.replace(ppo, activations=max(ppo.activations, scoring)))
    policies = 2 + len(SUPERVISED_BASELINES)  # sft, the baselines, ppo
    evaluation = stage_memory("evaluation", shape, Placement(), False, 0, policies + cfg.reward.ensemble_size, 0, 0)
    # each decoding is a rank's whole (decodings are shared out whole, not split), so its batch is not divided
    inference_logits = 2 * cfg.evaluation.batch_size * sequence * shape.vocabulary * FP32
    stages.append(
        StageMemory(evaluation.stage, evaluation.weights, 0, 0, inference_logits)
    )  # logits and log-softmax, no gradient
    return stages
