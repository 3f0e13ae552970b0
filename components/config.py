"""The one typed config of the pipeline, loaded from ``params.yaml``.

``params.yaml`` holds the ``default`` profile at its top level and, under ``profiles``,
named partial overrides (``smoke``, ...). A profile is deep-merged onto the defaults and the
result is validated: unknown keys and wrong types fail with the key's dotted path.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
DEFAULT_PROFILE = "default"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


# scheme://user:password@host, or any user info in an http(s) URL (user:token@, token@)
_URL_CREDENTIALS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@|https?://[^/@\s]+@)", re.IGNORECASE)
CREDENTIALS_ELSEWHERE = (
    "give them through the environment (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
    "MLFLOW_TRACKING_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or a Prefect Secret block "
    "named by orchestration.credentials_block"
)


def holds_credentials(url: str | None) -> bool:
    return bool(url) and bool(_URL_CREDENTIALS.match(url))


def no_credentials(url: str | None) -> str | None:
    """Credentials never live in params.yaml, where every log, run record and MLflow param would copy them."""
    if holds_credentials(url):
        raise PydanticCustomError("credentials_in_config", f"holds credentials in the URL; {CREDENTIALS_ELSEWHERE}")
    return url


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataConfig(Section):
    """The embedded synthetic review task (see components/data/)."""

    eval_prompt_fraction: float = Field(
        0.3, gt=0, lt=1, description="share of distinct prompts held out for evaluation"
    )
    n_demonstrations: int = Field(20000, ge=1, description="demonstrations written by the noisy demonstrator")
    n_comparison_prompts: int = Field(10000, ge=1, description="training prompts for the static comparison file")
    responses_per_comparison: int = Field(
        2, ge=2, le=9, description="K responses ranked per prompt; gives K*(K-1)/2 pairs"
    )
    labeler_temperature: float = Field(
        0.6, gt=0, description="Bradley-Terry noise temperature of the simulated labeler"
    )
    carelessness_alpha: float = Field(1.0, gt=0, description="Beta(alpha, beta) of each demonstration's carelessness")
    carelessness_beta: float = Field(1.5, gt=0, description="Beta(alpha, beta) of each demonstration's carelessness")
    stock_closing_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of demonstrations ending with a stock line the gold judge penalises "
        "(a habit: above 0.5 it is the mode, so greedy SFT keeps it); 0 gives the habit-free task",
    )
    turns: Literal[1, 2] = Field(
        1,
        description="1: a review; 2: a conversation, the review then a follow-up answer whose gold counts its "
        "consistency with the review (profile two_turn)",
    )


class UserFilesConfig(Section):
    """Real data: JSONL files or HF datasets saved with ``save_to_disk``."""

    demonstrations: str = Field(description="path of the demonstrations {prompt, response}")
    preferences: str = Field(description="path of the preferences {prompt, chosen, rejected}")
    eval_prompts: str = Field(description="path of the held-out prompts {prompt}")


class DataConfig(Section):
    source: Literal["synthetic", "files"] = Field(
        "synthetic", description="generate the embedded task or import user files"
    )
    dir: str = Field("data", description="the raw data directory, versioned by data.dvc")
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    files: UserFilesConfig | None = Field(None, description="required when source is 'files'")

    @model_validator(mode="after")
    def _files_given_for_file_source(self) -> DataConfig:
        if self.source == "files" and self.files is None:
            raise ValueError("data.files must be set when data.source is 'files'")
        return self


class RowBounds(Section):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> RowBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


class ValidationConfig(Section):
    """Great Expectations suites run on every data file before training reads it."""

    min_response_words: int = Field(3, ge=1, description="shortest acceptable response")
    max_response_words: int = Field(60, ge=1, description="longest acceptable response")
    max_prompt_words: int = Field(40, ge=1, description="longest acceptable prompt")
    check_vocabulary: bool = Field(
        True,
        description="every word must be in the embedded task's vocabulary (no effect on user files)",
    )
    chosen_position_min: float = Field(
        0.35,
        ge=0,
        le=1,
        description="lowest mean of chosen_position (share of pairs whose chosen response was shown second)",
    )
    chosen_position_max: float = Field(
        0.65,
        ge=0,
        le=1,
        description="highest mean of chosen_position (share of pairs whose chosen response was shown second)",
    )
    max_contradicting_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="highest share of preference rows whose pair appears again with chosen and rejected swapped",
    )
    demonstrations_rows: RowBounds = RowBounds(min=1000, max=1_000_000)
    preferences_rows: RowBounds = RowBounds(min=1000, max=1_000_000)
    eval_prompts_rows: RowBounds = RowBounds(min=20, max=100_000)
    report_dir: str = Field("reports/validation", description="validation summary and Great Expectations Data Docs")
    max_examples: int = Field(5, ge=1, description="offending rows quoted per failed expectation")


class PrepareConfig(Section):
    """Turns the validated raw data into the exact inputs of the training stages."""

    dir: str = Field("artifacts/prepared", description="where the prepared files go")
    rm_valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of preference pairs held out to measure the reward model"
    )


class PeftConfig(Section):
    """Low-rank adapters (LoRA through PEFT) instead of full fine-tuning, for every stage that fine-tunes an existing
    model: SFT of a local model, the reward model, every supervised baseline, DPO, PPO's policy and critic."""

    r: int = Field(8, ge=1, description="rank of each adapter's update B A")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input (off while PPO samples)")
    target_modules: list[str] = Field(
        ["c_attn", "c_proj", "c_fc"],
        min_length=1,
        description="names of the layers that get adapters: GPT-2's attention and MLP projections by default "
        "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj for Llama-style models)",
    )


class ModelConfig(Section):
    """The policy architecture (trained from scratch) or a local Hugging Face model directory."""

    source: Literal["scratch", "local"] = Field(
        "scratch", description="a small GPT-2 from scratch, or a local HF model"
    )
    local_dir: str | None = Field(None, description="HF model directory (safetensors only) when source is 'local'")
    n_layer: int = Field(3, ge=1, description="transformer blocks")
    n_embd: int = Field(128, ge=8, description="hidden width")
    n_head: int = Field(4, ge=1, description="attention heads")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in every stage (PPO always runs with dropout off)")
    activation: Literal["gelu_pytorch_tanh", "gelu_new"] = Field(
        "gelu_pytorch_tanh",
        description="GPT-2's tanh-approximated GELU, as one fused torch kernel (gelu_pytorch_tanh) or as transformers' "
        "five elementwise ops (gelu_new, GPT-2's original): the same function, within 5e-7",
    )
    cpu_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="the matmuls of every stage on the CPU: fp32, or bf16 autocast (weights, optimiser and losses stay "
        "fp32), only on a CPU with native bf16 (AVX-512 BF16 or AMX); not the default until its learning results are "
        "checked against fp32's on such a CPU",
    )
    peft: PeftConfig | None = Field(None, description="LoRA adapters instead of full fine-tuning; null: full")
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward instead of keeping them (less memory)"
    )
    max_prompt_tokens: int = Field(24, ge=1, description="prompts are cut to their last N tokens")
    max_response_tokens: int = Field(40, ge=2, description="longest response, EOS included")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.source == "local" and not self.local_dir:
            raise ValueError("model.local_dir must be set when model.source is 'local'")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


LRSchedule = Literal["linear", "constant"]
LR_SCHEDULE_DESCRIPTION = "after the linear warm-up: linear: decay linearly to 0 at the end | constant"


class OptimConfig(Section):
    """A supervised optimisation loop: AdamW, linear warm-up, then the learning-rate schedule."""

    epochs: float = Field(1.0, gt=0, description="passes over the data (fractions allowed)")
    batch_size: int = Field(64, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps")
    lr_schedule: LRSchedule = Field("linear", description=LR_SCHEDULE_DESCRIPTION)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="micro-batches per step on each process (the same gradient, less memory)"
    )
    log_every: int = Field(10, ge=1, description="steps between history entries")


class SFTConfig(OptimConfig):
    """Supervised fine-tuning on the demonstrations (response tokens only)."""


class HumanLabellingConfig(Section):
    """People ranking a labelling round's samples (``comparisons.labeler: human``), pair by pair."""

    min_answered_share: float = Field(
        1.0, gt=0, le=1, description="the share of the exported pairs the labels must answer"
    )
    timeout_seconds: int = Field(86_400, ge=1, description="how long the paused round waits for labels before it fails")
    poll_seconds: int = Field(10, ge=1, description="how often the paused round checks for a resume")


class ComparisonsConfig(Section):
    """InstructGPT's comparison collection: K samples per training prompt from the SFT policy, ranked."""

    source: Literal["sft_samples", "static"] = Field(
        "sft_samples", description="label SFT samples, or use the static preference file"
    )
    n_prompts: int = Field(4000, ge=1, description="training prompts to sample for")
    responses_per_prompt: int = Field(4, ge=2, le=9, description="K; each prompt gives K*(K-1)/2 pairs")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    batch_size: int = Field(256, ge=1, description="prompts per generation batch")
    dir: str = Field("artifacts/comparisons", description="where the collected comparisons are written")
    labeler: Literal["simulated", "human"] = Field(
        "simulated",
        description="who ranks the samples: the embedded task's simulated labeller (at once), or people (each round "
        "exports its samples as pairs and the flow run pauses until it is given their labels file)",
    )
    human: HumanLabellingConfig = HumanLabellingConfig()
    rounds: int = Field(
        1,
        ge=1,
        description="labelling rounds (iterated RLHF): round 1 ranks SFT samples, each later round the current "
        "policy's; the n_prompts budget is split between them",
    )

    @model_validator(mode="after")
    def _budget_covers_rounds(self) -> ComparisonsConfig:
        if self.rounds > self.n_prompts:
            raise ValueError(f"rounds ({self.rounds}) must not exceed n_prompts ({self.n_prompts}): each round labels")
        return self


class RewardBackboneConfig(Section):
    """The reward model's own transformer, when it is not SFT's: of another size (from scratch) or another local
    model with the policy's tokenizer. It is SFT-trained on the same demonstrations first (InstructGPT's reward models
    start from an SFT model), then given its scalar head; the reward stage's time includes that SFT."""

    n_layer: int | None = Field(None, ge=1, description="transformer blocks (null: the policy's)")
    n_embd: int | None = Field(None, ge=8, description="hidden width (null: the policy's)")
    n_head: int | None = Field(None, ge=1, description="attention heads (null: the policy's)")
    local_dir: str | None = Field(
        None, description="a local HF model directory (safetensors, the policy's tokenizer), for model.source local"
    )


class RewardConfig(OptimConfig):
    """The reward model: -log sigmoid(r(chosen) - r(rejected)), read at the last response token."""

    model: RewardBackboneConfig | None = Field(
        None,
        description="the reward model's own transformer (Gao et al. 2022: gold at a given KL improves with the reward "
        "model's size); null: SFT's",
    )

    loss: Literal["pairwise", "plackett_luce"] = Field(
        "pairwise",
        description="pairwise: every pair of a ranked group (InstructGPT) | plackett_luce: the likelihood of each "
        "group's whole ranking (a group whose pairs are not one complete ranking falls back to its pairs)",
    )

    valid_fraction: float = Field(0.1, gt=0, lt=1, description="share of comparisons held out for accuracy")
    select_epoch: bool = Field(
        True, description="keep the epoch whose held-out groups' loss is lowest (false: the last epoch)"
    )
    reference_samples: int = Field(
        512,
        ge=0,
        description=(
            "SFT samples on training prompts on which the reward is normalised to mean 0, std 1 (0: not normalised)"
        ),
    )
    shuffle_labels: bool = Field(
        False, description="negative control: swap chosen/rejected at random, so the RM learns nothing real"
    )
    ensemble_size: int = Field(
        1,
        ge=1,
        description=(
            "reward models trained from independent initialisations (Coste et al. 2023); PPO reads them together"
        ),
    )


class KLControlConfig(Section):
    kl_coef: float = Field(0.05, ge=0, description="initial beta of the per-token KL penalty")
    adaptive: bool = Field(False, description="Ziegler et al.'s adaptive controller instead of a fixed beta")
    target: float = Field(6.0, gt=0, description="KL target (nats per response) of the adaptive controller")
    horizon: int = Field(10000, ge=1, description="horizon (in rollouts) of the adaptive controller")


class PPOConfig(Section):
    """PPO against the reward model (InstructGPT / Stiennon et al. / Huang et al. details)."""

    iterations: int = Field(100, ge=1, description="rollout + update rounds")
    rollout_batch_size: int = Field(128, ge=1, description="responses sampled per iteration")
    minibatch_size: int = Field(32, ge=1, description="responses per gradient step")
    ppo_epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    lr: float = Field(3e-4, gt=0, description="policy learning rate")
    critic_lr: float = Field(1e-3, gt=0, description="value model learning rate")
    lr_schedule: LRSchedule = Field(
        "linear", description="both learning rates, per iteration (no warm-up): " + LR_SCHEDULE_DESCRIPTION
    )
    kl: KLControlConfig = KLControlConfig()
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip epsilon")
    cliprange_value: float = Field(0.2, gt=0, description="value clip around the rollout's values")
    gamma: float = Field(1.0, gt=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    temperature: float = Field(
        1.0,
        gt=0,
        description="rollout sampling temperature; log-probs, KL and entropy are of softmax(logits / temperature)",
    )
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="subtracted from the RM score of responses that never end"
    )
    ensemble_reward: Literal["mean", "mean_minus_std", "min"] = Field(
        "mean_minus_std",
        description="how a reward ensemble's members make the reward PPO optimises (one member: its score)",
    )
    uncertainty_coef: float = Field(1.0, ge=0, description="lambda of mean - lambda * std over the ensemble's members")
    whiten_rewards: bool = Field(False, description="whiten the per-token rewards before GAE")
    ptx_coef: float = Field(0.0, ge=0, description="PPO-ptx: weight of the demonstrations' LM loss")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    log_every: int = Field(1, ge=1, description="iterations between history entries")
    checkpoint_every: int = Field(10, ge=0, description="iterations between resumable checkpoints (0: none)")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="micro-batches per minibatch (same gradient, less memory)"
    )
    between_rounds: Literal["continue", "restart"] = Field(
        "restart",
        description="with comparisons.rounds > 1: each round's PPO continues the last round's policy for its share "
        "of the iterations, or restarts from SFT for all iterations so far (the KL reference is SFT either way)",
    )

    @model_validator(mode="after")
    def _divisible(self) -> PPOConfig:
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) "
                f"must be a multiple of minibatch_size ({self.minibatch_size})"
            )
        return self


RLAlgorithm = Literal["ppo", "rloo", "grpo", "reinforce_pp"]
GROUP_ALGORITHMS = ("rloo", "grpo")  # the algorithms whose baseline is the other samples of the same prompt


class RLConfig(Section):
    """Which RL algorithm trains the policy from SFT against the reward model. Every one shares ``ppo``'s settings:
    sampling, the KL penalty, the reward, the clipped update, the schedule, selection and checkpoints."""

    algorithm: RLAlgorithm = Field(
        "ppo",
        description="ppo (a critic and GAE) | rloo (leave-one-out baseline, Ahmadian et al. 2024) | grpo (group-"
        "normalised advantages, Shao et al. 2024) | reinforce_pp (global-batch-normalised returns, Hu 2025)",
    )
    samples_per_prompt: int = Field(
        4, ge=2, description="rloo and grpo: responses sampled per prompt (k); ppo and reinforce_pp sample one"
    )
    grpo_variant: Literal["grpo", "dr_grpo"] = Field(
        "grpo",
        description="grpo: advantages divided by the group's standard deviation, each response's loss averaged over "
        "its own tokens | dr_grpo (Liu et al. 2025): neither; every token weighs alike",
    )

    @property
    def group_size(self) -> int:
        """Responses per prompt in a rollout batch."""
        return self.samples_per_prompt if self.algorithm in GROUP_ALGORITHMS else 1


class CombinedLossConfig(OptimConfig):
    """Likelihood on chosen plus unlikelihood on rejected responses, optimised jointly (seed reason 2)."""

    unlikelihood_coef: float = Field(0.5, ge=0, description="weight of the unlikelihood term on rejected tokens")
    unlikelihood_tokens: Literal["all", "after_shared_prefix", "not_in_chosen"] = Field(
        "not_in_chosen",
        description=(
            "rejected tokens penalised: all, all but the opening shared with chosen, or those absent from chosen"
        ),
    )
    min_one_minus_p: float = Field(
        1e-5, gt=0, lt=1, description="clamp of 1 - p in -log(1 - p): caps one token's unlikelihood"
    )


class DPOConfig(OptimConfig):
    """Direct Preference Optimisation against the frozen SFT policy (Rafailov et al. 2023)."""

    beta: float = Field(0.1, gt=0, description="DPO temperature: strength of the implicit KL constraint")


class BestOfNConfig(Section):
    """Best-of-n sampling against the reward model: a reference point, nothing is trained."""

    n: int = Field(8, ge=1, description="samples per prompt; the RM picks one")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the n samples")
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="subtracted from the RM score of samples that never end (as in PPO)"
    )


TRAINED_BASELINES = ("chosen", "top_ranked", "combined", "dpo")


class BaselinesConfig(Section):
    """The supervised baselines: each trains on the same comparisons as the reward model
    (its held-out slice too is held out)."""

    chosen: SFTConfig = Field(SFTConfig(), description="SFT on every pair's chosen response")
    top_ranked: SFTConfig = Field(
        SFTConfig(), description="SFT on each ranked group's best response (rejection-sampling fine-tuning)"
    )
    combined: CombinedLossConfig = CombinedLossConfig()
    dpo: DPOConfig = DPOConfig()
    best_of_n: BestOfNConfig = BestOfNConfig()


class SelectionConfig(Section):
    """Which snapshot of each trained policy ships: the one the labeller prefers on the held-out slice,
    never by gold."""

    candidates: int = Field(
        4,
        ge=1,
        description="snapshots per trained policy (PPO and each preference baseline), spaced by `spacing`; 1: the last",
    )
    spacing: Literal["log", "even"] = Field(
        "log",
        description="log: at total^(k/candidates), the first within the first few steps (over-optimisation can peak "
        "there) | even: at total*k/candidates",
    )
    prompts: int = Field(
        200, ge=0, description="held-out ranked groups each snapshot answers (one fresh label each); 0: no selection"
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the snapshots' answers")
    batch_size: int = Field(256, ge=1, description="prompts per generation batch")


class JudgeConfig(Section):
    """Who judges the held-out responses in place of the embedded task's gold judge (evaluation/judges.py)."""

    kind: Literal["gold", "reward_model", "python", "human"] = Field(
        "gold",
        description="gold (the embedded task), reward_model (a judge model directory), python (a function) or human "
        "(people label blinded pairs while the flow run waits)",
    )
    model_dir: str | None = Field(
        None, description="the judge model directory (HF layout, safetensors) for reward_model"
    )
    entry_point: str | None = Field(None, description="'module:function(prompts, responses) -> scores' for python")
    pairs_per_baseline: int = Field(
        50, ge=1, description="human: held-out responses of PPO put against each other policy's, per decoding mode"
    )
    min_answered_share: float = Field(
        1.0, gt=0, le=1, description="human: the share of the exported pairs the labels must answer"
    )
    timeout_seconds: int = Field(
        86_400, ge=1, description="human: how long the paused flow run waits for labels before it fails"
    )
    poll_seconds: int = Field(10, ge=1, description="human: how often the paused flow run checks for a resume")
    monitor_ppo: bool = Field(
        True,
        description="score PPO's rollouts with the judge at every iteration, for the gate's over-optimisation rule "
        "(off for a slow judge: the rule then says it was not measured)",
    )

    @model_validator(mode="after")
    def _what_the_kind_needs(self) -> JudgeConfig:
        if self.kind == "reward_model" and not self.model_dir:
            raise ValueError("evaluation.judge.model_dir must be set when evaluation.judge.kind is 'reward_model'")
        if self.kind == "python" and (not self.entry_point or ":" not in self.entry_point):
            raise ValueError(
                "evaluation.judge.entry_point must be 'module:function' when evaluation.judge.kind is 'python'"
            )
        return self


class TokenSensitivityConfig(Section):
    """Seed reason 3, measured: one-token edits of SFT's answers that change the judge's score, and whether SFT's
    token-level loss or the reward model follows the change."""

    prompts: int = Field(200, ge=0, description="held-out prompts, one edited answer each (0: not measured)")
    tries: int = Field(8, ge=1, description="one-token edits tried per answer until one changes its score")
    edits: Literal["fluent", "random"] = Field(
        "fluent",
        description="fluent: the replacement is one of SFT's own top_k tokens at that place (the edit reads as "
        "well as the answer, only its meaning moves); random: any token of the vocabulary (most break the grammar)",
    )
    top_k: int = Field(4, ge=1, description="fluent edits: SFT's most likely tokens to draw the replacement from")


class EvaluationConfig(Section):
    """Held-out evaluation: every policy decoded the same way, seeded."""

    modes: list[Literal["sample", "greedy"]] = Field(
        ["sample", "greedy"], min_length=1, description="decoding modes to evaluate under"
    )
    samples_per_prompt: int = Field(8, ge=1, description="samples per eval prompt in 'sample' mode (greedy: 1)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature in 'sample' mode")
    batch_size: int = Field(256, ge=1, description="responses per generation batch")
    n_examples: int = Field(
        8, ge=0, description="held-out prompts shown with every policy's response in the example table"
    )
    judge: JudgeConfig = JudgeConfig()
    token_sensitivity: TokenSensitivityConfig = TokenSensitivityConfig()


class OveroptimisationConfig(Section):
    """Signs that PPO exploits the reward model (Gao et al. 2022)."""

    tail_fraction: float = Field(0.3, gt=0, le=1, description="last share of PPO iterations whose trend is checked")
    max_gold_drop: float = Field(
        0.05,
        ge=0,
        description="largest gold fall tolerated while the RM score rises: from the start to the shipped snapshot, "
        "over the tail, and below the peak of gold's curve fitted over the run (at the shipped KL, and at the end)",
    )
    max_proxy_gold_gap: float = Field(
        0.15, ge=0, description="largest excess of PPO's RM win rate over its gold win rate against any gated baseline"
    )


class GateConfig(Section):
    """When the PPO policy is promoted to the registry alias `champion`: every rule, in every mode."""

    modes: list[Literal["sample", "greedy"]] = Field(
        ["sample", "greedy"], min_length=1, description="decoding modes every rule must hold under"
    )
    baselines: list[str] = Field(
        ["sft", "chosen", "top_ranked", "combined", "dpo"],
        min_length=1,
        description="supervised policies PPO must beat, every one of them",
    )
    min_win_rate_lower: float = Field(
        0.5,
        ge=0,
        le=1,
        description="PPO's gold win rate against each gated baseline: its CI's lower bound must exceed this",
    )
    min_rm_accuracy: float = Field(
        0.6, ge=0, le=1, description="floor of the reward model's held-out pairwise accuracy"
    )
    min_rm_member_agreement: float = Field(
        0.7,
        ge=0,
        le=1,
        description="a reward ensemble's members must order at least this share of the held-out pairs alike",
    )
    detectable_win_rate: float = Field(
        0.6,
        gt=0.5,
        lt=1,
        description="one comparison per prompt (greedy, people's pairs): the head-to-head rule decides on the untied "
        "prompts only, and only where it detects this win rate with min_power; else it reports 'underpowered' and "
        "vetoes only a significant loss",
    )
    min_power: float = Field(0.8, gt=0, lt=1, description="power the head-to-head rule needs to decide (see above)")
    max_kl: float = Field(20.0, gt=0, description="KL budget (nats per response) of PPO from the SFT reference")
    sft_tolerance: float = Field(0.0, ge=0, description="how far PPO's mean gold score may fall below SFT's")
    overoptimisation: OveroptimisationConfig = OveroptimisationConfig()


class TuningConfig(Section):
    """How the recipe's settings were chosen (benchmarks/tune.py): recorded as every policy's tuning budget."""

    seed: int = Field(7, description="the tuning seed: none of the evaluation seeds")
    evaluation_seed: int = Field(
        20270601,
        description="benchmarks/rlhf_vs_sl.py's first seed (then +1, +2, ...): fresh ones, never used while "
        "developing; the main job keeps the top-level seed",
    )
    configurations_per_method: int = Field(
        6, ge=1, description="configurations tried for PPO and for each supervised baseline alike"
    )
    ppo_length_configurations: int = Field(
        6,
        ge=0,
        description="PPO's second sweep, its iterations x kl_coef (tuning_ppo_length.json), on top of the above",
    )
    results: str = Field("benchmarks/results/tuning.json", description="the sweep's table")


class TrackingConfig(Section):
    """MLflow: where runs and the model registry live."""

    uri: str | None = Field(
        None, description="tracking URI; null: $MLFLOW_TRACKING_URI, else the project's mlruns/ store"
    )
    experiment: str = Field("rlhf-pipeline", description="MLflow experiment of the pipeline runs")
    registered_model: str = Field("rlhf-policy", description="registry name of the PPO policies")
    log_models: bool = Field(True, description="log every trained model (HF layout) as an MLflow artefact")
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="a tracking server must answer its health check within this at start"
    )

    _no_credentials = field_validator("uri")(no_credentials)


class OrchestrationConfig(Section):
    """How Prefect runs the pipeline: reuse, retries and the deployment's schedule."""

    reuse_finished_stages: bool = Field(
        True,
        description=(
            "reuse a stage's saved model when data hash, its config section and its upstream stages are unchanged"
        ),
    )
    tracking_retries: int = Field(
        3, ge=0, description="Prefect retries of the tasks that only talk to MLflow (a tracking server hiccup)"
    )
    tracking_retry_delays: list[float] = Field(
        [10.0, 30.0, 90.0], description="seconds before each retry (backoff; the last repeats)"
    )
    schedule_cron: str = Field("0 2 * * *", description="cron schedule of the deployment")
    schedule_timezone: str = Field("UTC", description="time zone of the cron schedule")
    work_pool: str = Field("rlhf-process", description="the process work pool the deployment runs on")
    keep_stage_outputs: int | None = Field(
        3, ge=1, description="finished outputs kept per stage, the most recently used first; null: keep all"
    )
    runs_dir: str = Field(
        "artifacts/runs", description="each run's own directory, named by its MLflow run id: run record, PPO job"
    )
    credentials_block: str | None = Field(
        None,
        description=(
            "a Prefect Secret block holding {ENV_NAME: value} (tracking credentials, S3 keys) set for the run; "
            "the environment wins"
        ),
    )


class TimeoutsConfig(Section):
    """Deadlines: a part that hangs fails the run naming itself (nothing registered) instead of holding it forever.
    The defaults leave a slow CPU's default run, and a large model's stage, far inside them."""

    launch_seconds: float = Field(
        86_400.0, gt=0, description="a whole `accelerate launch` (one stage); its process group is killed after this"
    )
    progress_seconds: float = Field(
        3600.0,
        gt=0,
        description="a stage in the flow's own process reports a step (a PPO iteration) at least this often, or fails",
    )
    judge_call_seconds: float = Field(1800.0, gt=0, description="one call of a python judge's function")
    collective_seconds: float = Field(
        1800.0,
        gt=0,
        description="a collective between ranks waits this long for a hung or dead rank, then the ranks fail "
        "(the gloo/NCCL process group's timeout)",
    )


class DistributedConfig(Section):
    """Where every stage runs: one process (the flow's own), or `accelerate launch` with a profile from
    infra/accelerate/ (processes, machines, GPUs, DeepSpeed)."""

    accelerate_config: str = Field(
        "infra/accelerate/cpu-1proc.yaml", description="accelerate config file (relative to the project root)"
    )
    num_processes: int | None = Field(None, ge=1, description="override the profile's process count")
    launch: Literal["auto", "accelerate"] = Field(
        "auto",
        description="auto: a profile of one process on one machine runs in the flow's own process (no launcher, "
        "no second interpreter); accelerate: always under `accelerate launch`",
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="GPU ranks; auto: bf16 on a GPU that supports it (CPU ranks: model.cpu_precision)"
    )
    kill_grace_seconds: float = Field(
        10.0, gt=0, description="SIGTERM, then SIGKILL after this, when a launch is stopped"
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="rendezvous port on one machine; null: a free port"
    )
    log_tail_lines: int = Field(60, ge=1, description="last log lines quoted when a launch fails")
    memory_framework_gib: float = Field(
        1.0,
        ge=0,
        description="what a rank's process holds before any model (torch, transformers, a GPU's CUDA context), "
        "added to every stage's memory plan",
    )
    memory_fraction: float = Field(
        0.9,
        gt=0,
        le=1,
        description="the share of a rank's device memory (a GPU's, or the host's available memory divided among the "
        "machine's processes) a stage's planned memory may take; a stage planned beyond it stops the run before any "
        "training (exit 2)",
    )


class VersioningConfig(Section):
    remote_name: str = Field("local", description="DVC remote that push/pull use")
    remote_url: str = Field("../dvc-remote", description="remote location; relative paths are relative to .dvc/")
    push: bool = Field(True, description="push every new data version to the remote")

    _no_credentials = field_validator("remote_url")(no_credentials)


class Config(Section):
    profile: str = Field(DEFAULT_PROFILE, description="name of the profile this config was resolved from")
    seed: int = Field(0, description="seed of every random draw in the pipeline")
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    prepare: PrepareConfig = PrepareConfig()
    versioning: VersioningConfig = VersioningConfig()
    model: ModelConfig = ModelConfig()
    sft: SFTConfig = SFTConfig()
    comparisons: ComparisonsConfig = ComparisonsConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    rl: RLConfig = RLConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    selection: SelectionConfig = SelectionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    tuning: TuningConfig = TuningConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    distributed: DistributedConfig = DistributedConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    artifacts_dir: str = Field("artifacts/models", description="where trained models are saved")

    @model_validator(mode="before")
    @classmethod
    def _comparisons_follow_the_data(cls, raw: Any) -> Any:
        """Where ``comparisons.source`` is not given it follows the data: SFT samples ranked by the embedded task's
        labeller, or by people; on a user's own files labelled by no one, their preference file (``static``)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("comparisons", {}), dict):
            return raw
        comparisons, data = raw.get("comparisons", {}), raw.get("data", {})
        if "source" in comparisons:
            return raw
        user_files = (data.get("source") if isinstance(data, dict) else getattr(data, "source", None)) == "files"
        unlabelled = comparisons.get("labeler", "simulated") == "simulated"
        source = "static" if user_files and unlabelled else "sft_samples"
        return {**raw, "comparisons": {**comparisons, "source": source}}

    @model_validator(mode="after")
    def _embedded_parts_need_the_embedded_task(self) -> Config:
        """The simulated labeller and the gold judge know only the embedded task's prompts."""
        if self.data.source != "files":
            return self
        if self.comparisons.source == "sft_samples" and self.comparisons.labeler == "simulated":
            raise ValueError(
                "comparisons.source is 'sft_samples' with comparisons.labeler 'simulated', but the simulated labeller "
                "knows only the embedded task: for data.source 'files' set comparisons.labeler: human (people label "
                "the samples), or comparisons.source: static to train the reward model on your preference file"
            )
        if self.evaluation.judge.kind == "gold":
            raise ValueError(
                "evaluation.judge.kind is 'gold', but the embedded task's gold judge reads only its own prompts: for "
                "data.source 'files' set evaluation.judge.kind to reward_model (a judge model you trust), python (your "
                "scoring function) or human (people label blinded pairs)"
            )
        return self

    @model_validator(mode="after")
    def _reward_model_of_the_policy_kind(self) -> Config:
        own = self.reward.model
        if own is None:
            return self
        sizes = [name for name in ("n_layer", "n_embd", "n_head") if getattr(own, name) is not None]
        if not sizes and not own.local_dir:
            raise ValueError("reward.model sets neither a size nor a local_dir: null gives the reward model SFT's own")
        if self.model.source == "scratch" and own.local_dir:
            raise ValueError(
                "reward.model.local_dir is set but model.source is 'scratch': the reward model reads the policy's "
                "tokens, so it is a local model only beside a local policy; give it its own size instead"
            )
        if self.model.source == "local" and (sizes or not own.local_dir):
            raise ValueError(
                f"reward.model sets {', '.join(sizes) or 'no local_dir'} but model.source is 'local': a local model's "
                "size is its own; set reward.model.local_dir to the reward model's directory"
            )
        try:
            reward_model_config(self)
        except ValidationError as error:
            raise ValueError(f"reward.model: {error.errors()[0]['msg']}") from None
        return self

    @model_validator(mode="after")
    def _every_round_has_ppo(self) -> Config:
        if self.comparisons.rounds > self.ppo.iterations:
            raise ValueError(
                f"comparisons.rounds ({self.comparisons.rounds}) exceeds ppo.iterations ({self.ppo.iterations}): "
                "every labelling round's PPO needs at least one iteration"
            )
        return self

    @model_validator(mode="after")
    def _whole_groups(self) -> Config:
        k = self.rl.group_size
        if self.ppo.rollout_batch_size % k:
            raise ValueError(
                f"ppo.rollout_batch_size ({self.ppo.rollout_batch_size}) must be a multiple of "
                f"rl.samples_per_prompt ({k}) for rl.algorithm {self.rl.algorithm}: each prompt's group is whole"
            )
        return self

    @model_validator(mode="after")
    def _one_schedule_family(self) -> Config:
        """A fair race: every method the gate compares decays its learning rate the same way."""
        schedules = {
            "sft": self.sft.lr_schedule,
            "ppo": self.ppo.lr_schedule,
            **{f"baselines.{name}": getattr(self.baselines, name).lr_schedule for name in TRAINED_BASELINES},
        }
        if len(set(schedules.values())) > 1:
            listed = ", ".join(f"{section}.lr_schedule={value}" for section, value in schedules.items())
            raise ValueError(f"every compared method needs the same learning-rate schedule (a fair race): {listed}")
        return self

    @model_validator(mode="after")
    def _rounds_need_samples(self) -> Config:
        rounds = self.comparisons.rounds
        if rounds > 1 and self.comparisons.source != "sft_samples":
            raise ValueError(
                f"comparisons.rounds ({rounds}) needs comparisons.source: sft_samples (a static file has no rounds)"
            )
        return self


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) or a nested dict."""
    if not overrides:
        return raw
    if isinstance(overrides, dict):
        return _deep_merge(raw, overrides)
    result = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return result


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif not err["loc"]:  # a rule across sections: its message names the keys; the input is the whole config
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "credentials_in_config":
            lines.append(f"  {key}: {err['msg']}")  # never echo the value
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def reward_model_config(cfg: Config) -> ModelConfig:
    """What the reward model's transformer is built from: the policy's model section, with ``reward.model``'s size
    or directory in place of its own."""
    own = cfg.reward.model
    if own is None:
        return cfg.model
    return ModelConfig.model_validate({**cfg.model.model_dump(), **own.model_dump(exclude_none=True)})


def load_config(
    profile: str = DEFAULT_PROFILE,
    overrides: list[str] | dict[str, Any] | None = None,
    path: str | Path = DEFAULT_PARAMS,
) -> Config:
    """Resolve ``profile`` from ``path`` and validate it; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    profiles = document.pop("profiles", {}) or {}
    if profile != DEFAULT_PROFILE and profile not in profiles:
        known = ", ".join([DEFAULT_PROFILE, *sorted(profiles)])
        raise ConfigError(f"{path}: unknown profile {profile!r} (known: {known})")
    raw = _deep_merge(document, profiles.get(profile, {}) or {})
    raw = apply_overrides(raw, overrides)
    raw["profile"] = profile
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{path}, profile {profile!r}")) from None


def profile_names(path: str | Path = DEFAULT_PARAMS) -> list[str]:
    document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [DEFAULT_PROFILE, *sorted(document.get("profiles", {}) or {})]
