"""PPO against a reward model: InstructGPT step 3 (Ouyang et al. 2022), with the details of
Ziegler et al. 2019, Stiennon et al. 2020 and Huang et al. 2024 ("N+ implementation details").

Its loop is every RL algorithm's: RLOO, GRPO and REINFORCE++ (``rloo.py``, ``grpo.py``, ``reinforce_pp.py``) are an
``Algorithm`` handed to ``train_ppo`` that changes only the responses per prompt, the advantages, the loss's token
average, and that no critic learns.

Each iteration reads like CleanRL's loop:

    sampled = sample_responses(...)         # one response per prompt from the policy
    rollouts = score_rollouts(...)          # what the policy, critic, reference and RM say of them
    advantages, returns = compute_advantages(rollouts, kl_coef, ...)   # KL-penalised rewards -> GAE
    stats = ppo_update(...)                 # epochs of clipped policy and value steps over minibatches
    kl_ctl.update(...)                      # the KL coefficient follows the measured KL (if adaptive)

The data-parallel plumbing (sharding, global means, gradient sync) lives in the ``Runtime``; the loss
functions only take the averaging function they are handed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import KLControlConfig, ModelConfig, PPOConfig
from components.models import lora
from components.models.batching import (
    Batch,
    encode_demonstrations,
    encode_prompts,
    gather_logprobs,
    last_index,
    masked_mean,
    response_logits,
)
from components.models.ensemble import member_scores
from components.models.generation import Rollout, decode_responses, generate
from components.models.runtime import SINGLE, Runtime
from components.training.checkpoints import (
    PPOState,
    latest_checkpoint,
    python_rng_state,
    restore_python_rng,
    save_checkpoint,
)
from components.training.loop import QUIET, Harness, Monitor, check_finite, lr_factor
from components.training.sft import sft_loss
from components.training.shards import check_shardable

# how a loss averages its per-token terms: masked_mean, or (data parallel) this rank's share of the global mean
TokenMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- the math -----------------------------------------------------------------------------


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, runtime: Runtime = SINGLE) -> torch.Tensor:
    """Normalise to unit variance over the masked entries (of every rank);
    keep the mean when ``shift_mean`` is False."""
    mean, var = runtime.masked_mean(x, mask), runtime.masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalised_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every token, plus the RM score on the last one.

    Returns (rewards, kl), both (B, R) and zero past EOS.
    """
    mask = response_mask.float()
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores), device=scores.device), last_index(response_mask)] += scores
    return rewards * mask, kl


def ensemble_reward(member_scores: torch.Tensor, objective: str, uncertainty_coef: float) -> torch.Tensor:
    """The reward of a reward ensemble (Coste et al. 2023): (B, M) members' scores -> (B,).

    "mean" trusts the members' average; "mean_minus_std" subtracts ``uncertainty_coef`` times their spread, so a
    response the members disagree on (what the proxy has not learnt) is worth less; "min" takes the most
    pessimistic member. One member's score is returned as it is.
    """
    if member_scores.shape[-1] == 1:
        return member_scores[:, 0]
    if objective == "min":
        return member_scores.min(dim=-1).values
    if objective == "mean_minus_std":
        return member_scores.mean(dim=-1) - uncertainty_coef * member_scores.std(dim=-1)
    return member_scores.mean(dim=-1)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    ``values[:, t]`` is V(s_t), the state before response token t. ``bootstrap_values`` (B,) is V(s)
    after the last position, for responses cut off there by the length limit (0 for rows that
    ended); None treats the end of every response as terminal.
    Returns (advantages, returns), both (B, R) and zero past EOS.
    """
    mask = response_mask.float()
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    next_value = bootstrap_values.float() if bootstrap_values is not None else rewards.new_zeros(rewards.shape[0])
    advantages_reversed = []
    last_gae = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(length)):
        # values past EOS are masked to 0, so the step after EOS is terminal
        following = values[:, t + 1] if t + 1 < length else next_value
        delta = rewards[:, t] + gamma * following - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    mean: TokenMean = masked_mean,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate; a ratio outside 1 +- cliprange on the pessimistic side gets no gradient."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": mean((pg_losses_clipped > pg_losses).float(), mask).item(),
            "approx_kl": mean(0.5 * log_ratio**2, mask).item(),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    mean: TokenMean = masked_mean,
) -> tuple[torch.Tensor, dict[str, float]]:
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses, losses_clipped = (values - returns) ** 2, (values_clipped - returns) ** 2
    loss = 0.5 * mean(torch.max(losses, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = mean((losses_clipped > losses).float(), mask).item()
    return loss, {"value_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, runtime: Runtime = SINGLE
) -> float:
    return (1 - runtime.masked_var(returns - values, mask) / runtime.masked_var(returns, mask).clamp(min=1e-8)).item()


class KLController:
    """Fixed beta, or Ziegler et al.'s adaptive controller: beta follows the KL towards a target."""

    def __init__(self, cfg: KLControlConfig):
        self.cfg = cfg
        self.value = cfg.kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        if not self.cfg.adaptive:
            return
        proportional_error = max(-0.2, min(0.2, current_kl / self.cfg.target - 1))
        self.value *= 1 + proportional_error * n_steps / self.cfg.horizon


# --- reading the models -------------------------------------------------------------------


def policy_logprobs(policy: torch.nn.Module, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs, logits) of the response tokens under the sampling distribution softmax(logits / temperature):
    (B, R), (B, R, V). The ratio, the KL and the entropy are all of the distribution the tokens came from."""
    logits = response_logits(policy, batch) / temperature
    return gather_logprobs(logits, batch.response_ids), logits


class TokenValues(torch.nn.Module):
    """The critic (a scalar-head model) read before every response token, as one forward pass DDP can wrap."""

    def __init__(self, critic: PreTrainedModel):
        super().__init__()
        self.critic = critic

    def forward(self, input_ids, attention_mask, position_ids, prompt_width: int) -> torch.Tensor:
        hidden = self.critic.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        # V(s_t) is read where the policy's logits for token t are: at the position before it (P-1 : -1),
        # so the value of a token never sees the token itself (reading P: would estimate Q(s_t, a_t))
        return self.critic.score(hidden[:, prompt_width - 1 : -1]).squeeze(-1).float()


def token_values(values_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return values_model(batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_width)


# --- one iteration: rollouts -> advantages -> update -----------------------------------------


@dataclass
class Rollouts:
    """One rank's share of an iteration's samples and what the frozen and trained models said of them."""

    prompts: list[str]
    batch: Batch
    ended: torch.Tensor  # (B,)
    logprobs: torch.Tensor  # (B, R) of the sampling policy
    ref_logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor | None  # (B, R) V(s_t) before each response token; None without a critic
    rm_scores: torch.Tensor  # (B,) the reward model's score (an ensemble's: its members' mean)
    rm_disagreement: torch.Tensor  # (B,) the standard deviation of the ensemble members' scores (0 for one model)
    scores: torch.Tensor  # (B,) the score PPO optimises: the ensemble reward less the missing-EOS penalty

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.response_mask.float()


@dataclass
class Advantages:
    rewards: torch.Tensor  # (B, R) KL-penalised per-token rewards
    kl: torch.Tensor  # (B, R) log pi - log pi_ref
    advantages: torch.Tensor  # (B, R) what the policy loss weighs each token's log-ratio by
    returns: torch.Tensor | None = None  # (B, R) the critic's targets; None without a critic


# how one minibatch's policy loss averages its per-token terms, made from the runtime and the minibatch's response mask
PolicyMean = Callable[[Runtime, torch.Tensor], TokenMean]


def token_mean(runtime: Runtime, mask: torch.Tensor) -> TokenMean:
    return runtime.token_share(mask)


@dataclass(frozen=True)
class Algorithm:
    """What an RL algorithm changes in the shared loop; everything else (sampling, the reference, the KL penalty, the
    reward, the clipped update, selection, checkpoints, the processes) is the same for all."""

    name: str
    # (rollouts, kl_coef, runtime) -> advantages; the rows of one prompt's group are adjacent
    compute_advantages: Callable[[Rollouts, float, Runtime], Advantages]
    group_size: int = 1  # responses sampled per prompt
    has_critic: bool = False
    policy_mean: PolicyMean = token_mean


def ppo_algorithm(cfg: PPOConfig) -> Algorithm:
    return Algorithm(
        "ppo", lambda rollouts, kl_coef, runtime: compute_advantages(rollouts, kl_coef, cfg, runtime), has_critic=True
    )


@dataclass
class PPOModels:
    """What PPO trains (policy, critic) and what it only reads (reference, reward model)."""

    policy: torch.nn.Module  # DDP-wrapped when data parallel
    values_model: torch.nn.Module | None  # TokenValues(critic), DDP-wrapped when data parallel; None without a critic
    reference: PreTrainedModel
    reward_model: PreTrainedModel
    policy_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer | None
    runtime: Runtime

    @property
    def sampler(self) -> torch.nn.Module:
        """The policy without its DDP wrapper: the no-grad passes (generation, scoring) skip DDP."""
        return self.runtime.unwrap(self.policy)

    @property
    def critic(self) -> torch.nn.Module | None:
        return None if self.values_model is None else self.runtime.unwrap(self.values_model)

    def trained(self) -> list[tuple[torch.nn.Module, torch.optim.Optimizer]]:
        pairs = [(self.policy, self.policy_opt)]
        return pairs if self.values_model is None else [*pairs, (self.values_model, self.critic_opt)]


@torch.no_grad()
def sample_responses(
    models: PPOModels, prompts: list[str], tokenizer: PreTrainedTokenizerBase, cfg: PPOConfig, model_cfg: ModelConfig
) -> Rollout:
    """One response per prompt from the policy, at the policy's temperature."""
    prompt_ids, prompt_mask = (
        t.to(models.runtime.device) for t in encode_prompts(tokenizer, prompts, model_cfg.max_prompt_tokens)
    )
    # ZeRO-3 shards the parameters: gather the policy's once for the whole of generation, not layer by layer per token
    with models.runtime.gathered(models.sampler):
        return generate(
            models.sampler,
            prompt_ids,
            prompt_mask,
            model_cfg.max_response_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            cfg.temperature,
        )


@torch.no_grad()
def score_rollouts(models: PPOModels, prompts: list[str], sampled: Rollout, cfg: PPOConfig) -> Rollouts:
    """What the policy, the critic and the frozen models say of the sampled responses: log-probs, values, RM score."""
    batch = sampled.batch
    with models.runtime.gathered(models.sampler):
        logprobs, _ = policy_logprobs(models.sampler, batch, cfg.temperature)
    values = None
    if models.critic is not None:
        with models.runtime.gathered(models.critic):
            values = token_values(models.critic, batch) * batch.response_mask.float()
    with models.runtime.autocast():  # the frozen models in the trained ones' precision: KL 0 at the start
        ref_logprobs, _ = policy_logprobs(models.reference, batch, cfg.temperature)
        by_member = member_scores(models.reward_model, batch)  # (B, M)
    disagreement = by_member.std(dim=-1) if by_member.shape[-1] > 1 else torch.zeros_like(by_member[:, 0])
    scores = (
        ensemble_reward(by_member, cfg.ensemble_reward, cfg.uncertainty_coef)
        - cfg.missing_eos_penalty * (~sampled.ended).float()
    )
    return Rollouts(
        prompts, batch, sampled.ended, logprobs, ref_logprobs, values, by_member.mean(dim=-1), disagreement, scores
    )


@torch.no_grad()
def compute_advantages(rollouts: Rollouts, kl_coef: float, cfg: PPOConfig, runtime: Runtime = SINGLE) -> Advantages:
    """KL-penalised per-token rewards, then GAE; whitening uses every rank's tokens."""
    rewards, kl = kl_penalised_rewards(
        rollouts.scores, rollouts.logprobs, rollouts.ref_logprobs, rollouts.batch.response_mask, kl_coef
    )
    if cfg.whiten_rewards:
        rewards = whiten(rewards, rollouts.mask, shift_mean=False, runtime=runtime)
    advantages, returns = compute_gae(rewards, rollouts.values, rollouts.batch.response_mask, cfg.gamma, cfg.lam)
    return Advantages(rewards, kl, whiten(advantages, rollouts.mask, runtime=runtime), returns)


def ppo_update(
    models: PPOModels,
    rollouts: Rollouts,
    advantages: Advantages,
    cfg: PPOConfig,
    iteration: int,
    ptx: Callable[[], Batch] | None = None,
    policy_mean: PolicyMean = token_mean,
) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes over the rollouts in minibatches: clipped policy and (with a critic) value losses.

    ``ptx`` draws this rank's share of demonstrations for PPO-ptx (InstructGPT's pretraining mix); ``policy_mean``
    averages the policy loss's tokens. Returns the mean of each loss statistic over all minibatch steps (and ranks).
    """
    runtime = models.runtime
    sums: dict[str, float] = {}
    steps = 0
    size = rollouts.batch.input_ids.shape[0]  # this rank's share
    minibatch = cfg.minibatch_size // runtime.world_size
    micro = minibatch // cfg.gradient_accumulation_steps
    for _ in range(cfg.ppo_epochs):
        permutation = torch.randperm(size)
        for start in range(0, size, minibatch):
            index = permutation[start : start + minibatch]
            share = runtime.token_share(rollouts.batch.response_mask[index])
            policy_share = policy_mean(runtime, rollouts.batch.response_mask[index])

            if ptx is not None:
                ptx_loss = cfg.ptx_coef * sft_loss(models.policy, ptx())
                check_finite("ppo", iteration, ptx_loss=ptx_loss.item())
                with runtime.no_sync(models.policy):
                    runtime.backward(ptx_loss, models.policy)

            for micro_start in range(0, len(index), micro):
                rows = index[micro_start : micro_start + micro]
                synced = micro_start + micro >= len(index)  # the last micro-batch's backward all-reduces the gradients
                mb = rollouts.batch.select(rows)
                mask = mb.response_mask.float()

                with runtime.accumulating(models.policy, synced):
                    logprobs, logits = policy_logprobs(models.policy, mb, cfg.temperature)
                    pg_loss, pg_stats = clipped_policy_loss(
                        logprobs,
                        rollouts.logprobs[rows],
                        advantages.advantages[rows],
                        mask,
                        cfg.cliprange,
                        policy_share,
                    )
                    check_finite("ppo", iteration, policy_loss=pg_loss.item())
                    runtime.backward_share(pg_loss, models.policy)
                with torch.no_grad():
                    stats = {"policy_loss": pg_loss.item(), "entropy": share(entropy_from_logits(logits), mask).item()}

                if models.values_model is not None:
                    with runtime.accumulating(models.values_model, synced):
                        values = token_values(models.values_model, mb)
                        vf_loss, vf_stats = clipped_value_loss(
                            values, rollouts.values[rows], advantages.returns[rows], mask, cfg.cliprange_value, share
                        )
                        check_finite("ppo", iteration, value_loss=vf_loss.item())
                        runtime.backward_share(vf_loss, models.values_model)
                    stats |= {"value_loss": vf_loss.item(), **vf_stats}

                for key, value in {**stats, **pg_stats}.items():
                    sums[key] = sums.get(key, 0.0) + value

            for model, optimizer in models.trained():
                runtime.step(model, optimizer, cfg.max_grad_norm)
            steps += 1
    totals = runtime.sum(torch.tensor(list(sums.values()), dtype=torch.float64, device=runtime.device))
    return {key: total / steps for key, total in zip(sums, totals.tolist())}


# --- the loop -----------------------------------------------------------------------------


class PromptQueue:
    """One global prompt order (the same on every rank): shuffled passes over the prompts, drawn a batch at a time."""

    def __init__(self, prompts: list[str], rng: random.Random):
        self.prompts, self.rng, self.order = list(prompts), rng, []

    def next_batch(self, size: int) -> list[str]:
        while len(self.order) < size:
            fresh = list(self.prompts)
            self.rng.shuffle(fresh)
            self.order += fresh
        batch, self.order = self.order[:size], self.order[size:]
        return batch


def ptx_rows(examples: list[dict], minibatch_size: int, rng: random.Random, runtime: Runtime) -> list[dict]:
    """This rank's share of one global draw of ``minibatch_size`` demonstrations (the same draw on every rank)."""
    return runtime.shard(rng.sample(examples, min(minibatch_size, len(examples))))


def ptx_sampler(
    examples: list[dict], tokenizer, cfg: PPOConfig, model_cfg: ModelConfig, rng: random.Random, runtime: Runtime
) -> Callable[[], Batch]:
    """PPO-ptx's demonstrations, one batch per minibatch step: this rank's share, encoded, on its device."""

    def draw() -> Batch:
        rows = ptx_rows(examples, cfg.minibatch_size, rng, runtime)
        return encode_demonstrations(tokenizer, rows, model_cfg).to(runtime.device)

    return draw


@dataclass(frozen=True)
class RLModels:
    """What an RL run starts from: the policy it trains, the critic it trains beside it (None for an algorithm
    without one), the frozen reference and reward model, and the tokenizer the four share."""

    policy: PreTrainedModel
    reference: PreTrainedModel
    critic: PreTrainedModel | None
    reward_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def train_ppo(
    start: RLModels,
    prompts: list[str],
    cfg: PPOConfig,
    model_cfg: ModelConfig,
    seed: int,
    ptx_examples: list[dict] | None = None,
    algorithm: Algorithm | None = None,
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Optimise ``start.policy`` in place; the reference and the reward model stay frozen.
    Returns (policy, metrics, history).

    ``algorithm`` (PPO by default) decides the responses per prompt and the advantages; the critic is trained
    beside the policy when it has one, and must be None when it has not. ``ptx_examples``: PPO-ptx's demonstrations.

    The harness's ``snapshots`` receive the policy after each of their iterations (rank 0 only), the candidates
    that selection chooses from; its ``monitor`` watches the logged iterations' rollouts. With its
    ``checkpoint_dir``, the full state is saved every ``cfg.checkpoint_every`` iterations and a run that finds a
    checkpoint there continues from it: same result as never stopping.
    Data parallel (a runtime of N processes): every rank draws the same global prompt order and samples its own 1/N
    of each rollout batch; whitening, metrics and the KL controller see all ranks' rollouts; DDP averages the
    gradients, so every rank holds the same weights.
    """
    runtime, tokenizer = harness.runtime, start.tokenizer
    algorithm = algorithm or ppo_algorithm(cfg)
    if (start.critic is not None) != algorithm.has_critic:
        raise ValueError(f"{algorithm.name} {'needs' if algorithm.has_critic else 'has no'} critic")
    check_shardable(cfg, runtime.world_size, algorithm.group_size)
    torch.manual_seed(seed + runtime.rank)  # each rank samples different responses
    rng = random.Random(f"{seed}/ppo")  # the same on every rank: one global prompt order, one PPO-ptx draw
    counts = ready_to_train(start, runtime)
    models, run = start_or_resume(start, cfg, runtime, rng, prompts, harness.checkpoint_dir)
    ptx = (
        ptx_sampler(ptx_examples, tokenizer, cfg, model_cfg, rng, runtime)
        if cfg.ptx_coef > 0 and ptx_examples
        else None
    )

    for iteration in range(run.start, cfg.iterations):
        set_learning_rates(models, cfg, iteration)
        # a whole number of prompts per rank, each repeated group_size times in adjacent rows
        prompt_draw = runtime.shard(run.queue.next_batch(cfg.rollout_batch_size // algorithm.group_size))
        batch_prompts = [prompt for prompt in prompt_draw for _ in range(algorithm.group_size)]

        clock = [time.perf_counter()]
        sampled = sample_responses(models, batch_prompts, tokenizer, cfg, model_cfg)
        clock.append(time.perf_counter())
        rollouts = score_rollouts(models, batch_prompts, sampled, cfg)
        advantages = algorithm.compute_advantages(rollouts, run.kl_ctl.value, runtime)
        check_finite("ppo", iteration, rm_score=rollouts.rm_scores.mean().item(), kl=advantages.kl.sum(1).mean().item())
        clock.append(time.perf_counter())
        update_stats = ppo_update(models, rollouts, advantages, cfg, iteration, ptx, algorithm.policy_mean)
        clock.append(time.perf_counter())

        batch_means = rollout_means(rollouts, advantages, cfg, runtime)
        run.kl_ctl.update(batch_means["kl"], cfg.rollout_batch_size)  # the whole (all ranks') batch's KL per response

        if iteration % cfg.log_every == 0 or iteration == cfg.iterations - 1:
            entry = log_entry(iteration, batch_means, run.kl_ctl.value, models, cfg, clock, update_stats)
            entry |= watched(harness.monitor, batch_prompts, rollouts, advantages, tokenizer, runtime)
            run.history.append(entry)
            if harness.log:
                harness.log(iteration, entry)
        keep_progress(iteration, models, run, cfg, rng, harness)

    last = run.history[-1]
    metrics = {"final_rm_score": last["rm_score"], "final_kl": last["kl"], "final_kl_coef": run.kl_ctl.value}
    metrics.update({"iterations": cfg.iterations, **counts})
    return runtime.full_model(models.policy), metrics, run.history


def ready_to_train(start: RLModels, runtime: Runtime) -> dict[str, int]:
    """The reference and reward model frozen on the device; the policy and critic in eval mode (dropout off: rollouts
    and updates see the same network) with their trainable parameters on. Returns the parameter counts."""
    policy, critic = start.policy, start.critic
    for model in (start.reference, start.reward_model):
        model.eval()
        model.requires_grad_(False)
        runtime.to_device(model)
    for trained in (policy, critic) if critic is not None else (policy,):
        trained.eval()
        lora.keep_checkpointing(trained)
        if not lora.has_adapters(trained):  # an adapted model trains its adapters (and new head) only
            trained.requires_grad_(True)
    critic_counts = lora.parameter_counts(critic)["trainable_parameters"] if critic is not None else 0
    return {**lora.parameter_counts(policy), "critic_trainable_parameters": critic_counts}


@dataclass
class RunState:
    """What a PPO run carries from iteration to iteration, and a checkpoint restores."""

    kl_ctl: KLController
    queue: PromptQueue
    history: list[dict[str, float]]
    start: int  # the first iteration still to run


def watched(
    monitor: Monitor | None,
    prompts: list[str],
    rollouts: Rollouts,
    advantages: Advantages,
    tokenizer: PreTrainedTokenizerBase,
    runtime: Runtime,
) -> dict[str, float]:
    """What watches a logged iteration beside the loss: the monitor's view of the rollouts (every rank's mean) and
    a critic's fit to the returns."""
    entry = {}
    if monitor:
        responses = decode_responses(tokenizer, rollouts.batch)
        entry = runtime.mean_of_floats(monitor(prompts, responses, rollouts.ended.tolist()))
    if rollouts.values is not None:
        entry["explained_variance"] = explained_variance(rollouts.values, advantages.returns, rollouts.mask, runtime)
    return entry


def keep_progress(
    iteration: int, models: PPOModels, run: RunState, cfg: PPOConfig, rng: random.Random, harness: Harness
) -> None:
    """After an iteration: the policy to the snapshots at their iterations, the whole state to a checkpoint every
    ``cfg.checkpoint_every``."""
    snapshots, runtime, directory = harness.snapshots, models.runtime, harness.checkpoint_dir
    if snapshots is not None and iteration in snapshots.steps(cfg.iterations):
        with runtime.gathered(models.sampler):  # every rank gathers (a collective); rank 0 writes
            if runtime.is_main:
                snapshots.take(iteration, models.sampler)
    if directory and cfg.checkpoint_every and (iteration + 1) % cfg.checkpoint_every == 0:
        _save_checkpoint(directory, iteration + 1, models, run.kl_ctl, rng, run.queue, run.history)


def start_or_resume(
    start: RLModels,
    cfg: PPOConfig,
    runtime: Runtime,
    rng: random.Random,
    prompts: list[str],
    checkpoint_dir: str | None,
) -> tuple[PPOModels, RunState]:
    """The optimisers and the models prepared by the runtime (``frozen``: the reference and the reward model), from
    the latest checkpoint in ``checkpoint_dir`` when there is one (weights, optimiser states, RNGs, KL coefficient,
    prompt order, history)."""
    policy, critic = start.policy, start.critic
    values_model = TokenValues(critic) if critic is not None else None
    policy_opt = torch.optim.AdamW(trainable(policy), lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    critic_opt = (
        torch.optim.AdamW(trainable(critic), lr=cfg.critic_lr, eps=1e-5, weight_decay=0.0)
        if critic is not None
        else None
    )
    run = RunState(KLController(cfg.kl), PromptQueue(prompts, rng), [], 0)
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        torch_rng = _rank_rng_state(resumed.tensors["torch_rng"], runtime)
        if (resumed.engines is None) != runtime.checkpoints_whole_state:
            raise ValueError(
                f"the PPO checkpoint in {checkpoint_dir} was written {'with' if resumed.engines else 'without'} "
                "DeepSpeed: resume it with the profile that wrote it"
            )
        if resumed.engines is None:
            policy.load_state_dict(resumed.tensors["policy"])
            policy_opt.load_state_dict(resumed.tensors["policy_opt"])
            if critic is not None:
                critic.load_state_dict(resumed.tensors["critic"])
                critic_opt.load_state_dict(resumed.tensors["critic_opt"])
        restore_python_rng(rng, resumed.python_rng)
        run.kl_ctl.value, run.queue.order = resumed.kl_coef, resumed.order
        run.history, run.start = resumed.history, resumed.iteration
    policy, values_model, policy_opt, critic_opt = prepared(
        runtime, (policy, policy_opt), (values_model, critic_opt), cfg.max_grad_norm
    )
    models = PPOModels(policy, values_model, start.reference, start.reward_model, policy_opt, critic_opt, runtime)
    if resumed is not None:
        if resumed.engines is not None:
            runtime.load_engines(_engines(models), resumed.engines)
        torch.set_rng_state(torch_rng)
    return models, run


def set_learning_rates(models: PPOModels, cfg: PPOConfig, iteration: int) -> None:
    fraction = lr_factor(iteration, cfg.iterations, 0, cfg.lr_schedule)  # of the iteration alone: resuming agrees
    for (_, optimizer), lr in zip(models.trained(), (cfg.lr, cfg.critic_lr)):
        for group in optimizer.param_groups:
            group["lr"] = fraction * lr


def rollout_means(rollouts: Rollouts, advantages: Advantages, cfg: PPOConfig, runtime: Runtime) -> dict[str, float]:
    """Per response of the whole (all ranks') rollout batch: RM score, KL, length, share ended, RM disagreement."""
    sums = torch.stack(
        [
            rollouts.rm_scores.sum(),
            advantages.kl.sum(),
            rollouts.mask.sum(),
            rollouts.ended.float().sum(),
            rollouts.rm_disagreement.sum(),
        ]
    ).double()
    means = (runtime.sum(sums) / cfg.rollout_batch_size).tolist()
    return dict(zip(("rm_score", "kl", "response_length", "ended", "rm_disagreement"), means, strict=True))


def log_entry(
    iteration: int,
    means: dict[str, float],
    kl_coef: float,
    models: PPOModels,
    cfg: PPOConfig,
    clock: list[float],
    update_stats: dict[str, float],
) -> dict[str, float]:
    """One logged iteration: the batch's means, the KL controller and learning rate, where the time went."""
    started, generated, scored, updated = clock
    return {
        "iteration": iteration,
        "rm_score": means["rm_score"],
        "rm_disagreement": means["rm_disagreement"],
        "kl": means["kl"],
        "kl_coef": kl_coef,
        "lr": models.policy_opt.param_groups[0]["lr"],
        "non_score_reward": -kl_coef * means["kl"],
        "response_length": means["response_length"],
        "ended": means["ended"],
        "response_tokens": means["response_length"] * cfg.rollout_batch_size,
        "generation_seconds": generated - started,
        "scoring_seconds": scored - generated,
        "update_seconds": updated - scored,
        **update_stats,
    }


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def prepared(runtime: Runtime, policy_pair: tuple, critic_pair: tuple, max_grad_norm: float) -> tuple:
    """(policy, values_model, policy_opt, critic_opt) ready to train; without a critic its pair stays (None, None)."""
    pairs = [policy_pair] if critic_pair[0] is None else [policy_pair, critic_pair]
    ready = runtime.prepare(*pairs, max_grad_norm=max_grad_norm)
    (policy, policy_opt), (values_model, critic_opt) = ready[0], ready[1] if len(ready) > 1 else (None, None)
    return policy, values_model, policy_opt, critic_opt


def _engines(models: PPOModels) -> dict[str, torch.nn.Module]:
    engines = {"policy": models.policy}
    return engines if models.values_model is None else {**engines, "critic": models.values_model}


def _save_checkpoint(
    directory: str,
    iteration: int,
    models: PPOModels,
    kl_ctl: KLController,
    rng: random.Random,
    queue: PromptQueue,
    history: list[dict],
) -> None:
    runtime = models.runtime
    tensors = {"torch_rng": torch.stack(runtime.gather_objects(torch.get_rng_state()))}
    engines = None
    if runtime.checkpoints_whole_state:
        tensors |= {"policy": models.sampler.state_dict(), "policy_opt": models.policy_opt.state_dict()}
        if models.critic is not None:
            tensors |= {"critic": models.critic.critic.state_dict(), "critic_opt": models.critic_opt.state_dict()}
    else:  # every rank writes its shards beside the checkpoint; rank 0 moves them in with the rest
        engines = Path(directory) / f".engines-{iteration:06d}"
        runtime.save_engines(_engines(models), engines)
    if runtime.is_main:  # one writer; the other ranks' RNG states travel in the same file
        save_checkpoint(
            directory,
            PPOState(iteration, kl_ctl.value, python_rng_state(rng), queue.order, history, tensors, engines),
        )


def _rank_rng_state(saved: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    states = saved.unsqueeze(0) if saved.dim() == 1 else saved
    if len(states) != runtime.world_size:
        raise ValueError(
            f"the PPO checkpoint was written by {len(states)} process(es); "
            f"resume it with {len(states)}, not {runtime.world_size}"
        )
    return states[runtime.rank].clone()  # set_rng_state needs its own storage, not a row view
