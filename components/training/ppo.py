"""PPO against a reward model: InstructGPT step 3 (Ouyang et al. 2022), with the details of
Ziegler et al. 2019, Stiennon et al. 2020 and Huang et al. 2024 ("N+ implementation details").

Each iteration: sample responses from the policy (temperature 1) -> score them with the reward
model and the frozen reference -> per-token rewards (KL penalty on every token, RM score on the
last) -> GAE advantages and returns -> several epochs of clipped policy and value updates over
minibatches -> update the KL coefficient.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import KLControlConfig, ModelConfig, PPOConfig
from components.models.batching import (
    Batch,
    encode_examples,
    encode_prompts,
    gather_logprobs,
    last_index,
    masked_mean,
    response_logits,
    response_logprobs,
    sequence_scores,
)
from components.models.generation import decode_responses, generate
from components.training.checkpoints import PPOState, latest_checkpoint, python_rng_state, restore_python_rng, save_checkpoint
from components.training.loop import Log, check_finite
from components.training.ranks import Ranks
from components.training.sft import sft_loss

SINGLE = Ranks()

# (prompts, responses, ended) -> metrics: watches rollouts (e.g. the gold judge); never feeds training.
Monitor = Callable[[list[str], list[str], list[bool]], dict[str, float]]


# --- the math -----------------------------------------------------------------------------


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, ranks: Ranks = SINGLE) -> torch.Tensor:
    """Normalise to unit variance over the masked entries (of every rank); keep the mean when ``shift_mean`` is False."""
    mean, var = ranks.masked_mean(x, mask), ranks.masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (log pi - log pi_ref) on every token, plus the RM score on the last one.

    Returns (rewards, kl), both (B, R) and zero past EOS.
    """
    mask = response_mask.float()
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(scores), device=scores.device), last_index(response_mask)] += scores
    return rewards * mask, kl


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    ``bootstrap_values`` (B,) is V(s) after the last position, for responses cut off there by the
    length limit (0 for rows that ended); None treats the end of every response as terminal.
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


# how a loss averages its per-token terms: masked_mean, or (data parallel) this rank's share of the global mean
TokenMean = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float,
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
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float,
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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, ranks: Ranks = SINGLE) -> float:
    return (1 - ranks.masked_var(returns - values, mask) / ranks.masked_var(returns, mask).clamp(min=1e-8)).item()


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


# --- the loop -----------------------------------------------------------------------------


class TokenValues(torch.nn.Module):
    """The critic (a scalar-head model) read at every response token, as one forward pass DDP can wrap."""

    def __init__(self, critic: PreTrainedModel):
        super().__init__()
        self.critic = critic

    def forward(self, input_ids, attention_mask, position_ids, prompt_width: int) -> torch.Tensor:
        hidden = self.critic.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
        return self.critic.score(hidden[:, prompt_width:]).squeeze(-1).float()


def token_values(values_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    return values_model(batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_width)


@dataclass
class RolloutBatch:
    batch: Batch
    ended: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor  # (B, R)
    old_values: torch.Tensor  # (B, R)
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)


def check_shardable(cfg: PPOConfig, world_size: int) -> None:
    """Every rank gets an equal shard of each rollout batch and of each minibatch (split into micro-batches)."""
    per_rank = cfg.minibatch_size // world_size
    if cfg.rollout_batch_size % world_size or cfg.minibatch_size % world_size or per_rank % cfg.gradient_accumulation_steps:
        raise ValueError(
            f"ppo.rollout_batch_size ({cfg.rollout_batch_size}) and ppo.minibatch_size ({cfg.minibatch_size}) must be multiples of "
            f"the number of processes ({world_size}), and minibatch_size / processes of ppo.gradient_accumulation_steps ({cfg.gradient_accumulation_steps})"
        )


def train_ppo(
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    critic: PreTrainedModel,
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: PPOConfig,
    model_cfg: ModelConfig,
    seed: int,
    ptx_examples: list[dict] | None = None,
    monitor: Monitor | None = None,
    log: Log | None = None,
    checkpoint_dir: str | None = None,
    ranks: Ranks = SINGLE,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Optimise ``policy`` in place; ``ref_policy`` and ``reward_model`` stay frozen. Returns (policy, metrics, history).

    With ``checkpoint_dir``, the full state is saved every ``cfg.checkpoint_every`` iterations and
    a run that finds a checkpoint there continues from it: same result as never stopping.
    Data parallel (``ranks`` of N processes): every rank draws the same global prompt order and
    samples its own 1/N of each rollout batch; whitening, metrics and the KL controller see all
    ranks' rollouts; DDP averages the gradients, so every rank holds the same weights.
    """
    check_shardable(cfg, ranks.world_size)
    torch.manual_seed(seed + ranks.rank)  # each rank samples different responses
    rng = random.Random(f"{seed}/ppo")  # the same on every rank: one global prompt order
    for frozen in (ref_policy, reward_model):
        frozen.eval()
        frozen.requires_grad_(False)
        ranks.to_device(frozen)
    for trained in (policy, critic):
        trained.eval()  # dropout off: rollouts and updates see the same network
        trained.requires_grad_(True)
    values_model = TokenValues(critic)
    policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, eps=1e-5, weight_decay=0.0)
    kl_ctl = KLController(cfg.kl)
    history: list[dict[str, float]] = []
    order: list[str] = []
    start = 0
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        torch_rng = _rank_rng_state(resumed.tensors["torch_rng"], ranks)
        policy.load_state_dict(resumed.tensors["policy"])
        critic.load_state_dict(resumed.tensors["critic"])
        policy_opt.load_state_dict(resumed.tensors["policy_opt"])
        critic_opt.load_state_dict(resumed.tensors["critic_opt"])
        torch.set_rng_state(torch_rng)
        restore_python_rng(rng, resumed.python_rng)
        kl_ctl.value, order, history, start = resumed.kl_coef, resumed.order, resumed.history, resumed.iteration
    policy, values_model, policy_opt, critic_opt = ranks.prepare(policy, values_model, policy_opt, critic_opt)
    sampler, values_reader = ranks.unwrap(policy), ranks.unwrap(values_model)  # the no-grad passes skip DDP

    for iteration in range(start, cfg.iterations):
        if len(order) < cfg.rollout_batch_size:
            fresh = list(prompts)
            rng.shuffle(fresh)
            order += fresh
        batch_prompts, order = order[: cfg.rollout_batch_size], order[cfg.rollout_batch_size :]
        batch_prompts = batch_prompts[ranks.rank :: ranks.world_size]  # this rank's shard

        # 1. rollout
        started = time.perf_counter()
        prompt_ids, prompt_mask = (t.to(ranks.device) for t in encode_prompts(tokenizer, batch_prompts, model_cfg.max_prompt_tokens))
        rollout = generate(sampler, prompt_ids, prompt_mask, model_cfg.max_response_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.temperature)
        batch, mask = rollout.batch, rollout.batch.response_mask.float()
        generated = time.perf_counter()

        # 2. score: reward model, reference and value estimates of the sampled responses
        with torch.no_grad():
            old_logprobs = response_logprobs(sampler, batch)
            ref_logprobs = response_logprobs(ref_policy, batch)
            old_values = token_values(values_reader, batch) * mask
            rm_scores = sequence_scores(reward_model, batch)
            scores = rm_scores - cfg.missing_eos_penalty * (~rollout.ended).float()

            # 3. rewards and advantages (whitened over every rank's rollouts)
            rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, batch.response_mask, kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False, ranks=ranks)
            advantages, returns = compute_gae(rewards, old_values, batch.response_mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask, ranks=ranks)
        check_finite("ppo", iteration, rm_score=rm_scores.mean().item(), kl=kl.sum(1).mean().item())
        data = RolloutBatch(batch, rollout.ended, old_logprobs, old_values, advantages, returns)
        scored = time.perf_counter()

        # 4. several epochs of minibatch updates over the rollout batch
        update_stats = _update(policy, values_model, policy_opt, critic_opt, data, cfg, tokenizer, model_cfg, ptx_examples, rng, iteration, ranks)
        updated = time.perf_counter()

        # 5. the KL controller sees the mean KL per response of the whole (all ranks') batch
        rollout_sums = ranks.sum(torch.stack([rm_scores.sum(), kl.sum(), mask.sum(), rollout.ended.float().sum()]).double())
        rm_score, mean_kl, response_length, ended = (rollout_sums / cfg.rollout_batch_size).tolist()
        kl_ctl.update(mean_kl, cfg.rollout_batch_size)
        variance_explained = explained_variance(old_values, returns, mask, ranks)
        watched = ranks.mean_of_floats(monitor(batch_prompts, decode_responses(tokenizer, rollout), rollout.ended.tolist())) if monitor else {}

        if iteration % cfg.log_every == 0 or iteration == cfg.iterations - 1:
            entry = {
                "iteration": iteration,
                "rm_score": rm_score,
                "kl": mean_kl,
                "kl_coef": kl_ctl.value,
                "non_score_reward": -kl_ctl.value * mean_kl,
                "response_length": response_length,
                "ended": ended,
                "explained_variance": variance_explained,
                "response_tokens": response_length * cfg.rollout_batch_size,
                "generation_seconds": generated - started,
                "scoring_seconds": scored - generated,
                "update_seconds": updated - scored,
                **update_stats,
                **watched,
            }
            history.append(entry)
            if log:
                log(iteration, entry)

        if checkpoint_dir and cfg.checkpoint_every and (iteration + 1) % cfg.checkpoint_every == 0:
            rng_states = torch.stack(ranks.gather_objects(torch.get_rng_state()))
            if ranks.is_main:  # one writer; the other ranks' RNG states travel in the same file
                save_checkpoint(checkpoint_dir, PPOState(
                    iteration + 1, kl_ctl.value, python_rng_state(rng), order, history,
                    {"policy": sampler.state_dict(), "critic": critic.state_dict(), "policy_opt": policy_opt.state_dict(),
                     "critic_opt": critic_opt.state_dict(), "torch_rng": rng_states},
                ))

    last = history[-1]
    metrics = {"final_rm_score": last["rm_score"], "final_kl": last["kl"], "final_kl_coef": kl_ctl.value, "iterations": cfg.iterations}
    return sampler, metrics, history


def _rank_rng_state(saved: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    states = saved.unsqueeze(0) if saved.dim() == 1 else saved
    if len(states) != ranks.world_size:
        raise ValueError(f"the PPO checkpoint was written by {len(states)} process(es); resume it with {len(states)}, not {ranks.world_size}")
    return states[ranks.rank].clone()  # set_rng_state needs its own storage, not a row view


def _update(policy, values_model, policy_opt, critic_opt, data: RolloutBatch, cfg: PPOConfig, tokenizer, model_cfg, ptx_examples, rng, iteration, ranks: Ranks) -> dict[str, float]:
    sums: dict[str, float] = {}
    n = 0
    size = data.batch.input_ids.shape[0]  # this rank's shard
    minibatch = cfg.minibatch_size // ranks.world_size
    micro = minibatch // cfg.gradient_accumulation_steps
    for _ in range(cfg.ppo_epochs):
        permutation = torch.randperm(size)
        for start in range(0, size, minibatch):
            index = permutation[start : start + minibatch]
            count = ranks.sum(data.batch.response_mask[index].float().sum())  # response tokens of this minibatch, all ranks

            def share(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                """This micro-batch's part of the minibatch's token mean (summed over micro-batches and ranks: the mean)."""
                return (values * mask.float()).sum() / count.clamp(min=1.0)

            if cfg.ptx_coef > 0 and ptx_examples:
                # PPO-ptx: keep the likelihood of the demonstrations (InstructGPT's pretraining mix)
                rows = rng.sample(ptx_examples, min(cfg.minibatch_size, len(ptx_examples)))
                ptx = encode_examples(tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], model_cfg.max_prompt_tokens, model_cfg.max_response_tokens)
                ptx_loss = cfg.ptx_coef * sft_loss(policy, ptx.to(ranks.device))
                check_finite("ppo", iteration, ptx_loss=ptx_loss.item())
                with ranks.no_sync(policy):
                    ranks.backward(ptx_loss)

            for micro_start in range(0, len(index), micro):
                rows_index = index[micro_start : micro_start + micro]
                synced = micro_start + micro >= len(index)  # the last micro-batch's backward all-reduces the gradients
                mb = data.batch.select(rows_index)
                mask = mb.response_mask.float()

                with contextlib.nullcontext() if synced else ranks.no_sync(policy):
                    logits = response_logits(policy, mb)
                    logprobs = gather_logprobs(logits, mb.response_ids)
                    pg_loss, pg_stats = clipped_policy_loss(logprobs, data.old_logprobs[rows_index], data.advantages[rows_index], mask, cfg.cliprange, share)
                    check_finite("ppo", iteration, policy_loss=pg_loss.item())
                    ranks.backward(pg_loss * ranks.world_size)  # DDP averages over ranks; the shares add up

                with contextlib.nullcontext() if synced else ranks.no_sync(values_model):
                    values = token_values(values_model, mb)
                    vf_loss, vf_stats = clipped_value_loss(values, data.old_values[rows_index], data.returns[rows_index], mask, cfg.cliprange_value, share)
                    check_finite("ppo", iteration, value_loss=vf_loss.item())
                    ranks.backward(vf_loss * ranks.world_size)

                with torch.no_grad():
                    entropy = share(entropy_from_logits(logits), mask).item()
                for key, value in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": entropy, **pg_stats, **vf_stats}.items():
                    sums[key] = sums.get(key, 0.0) + value

            for model, optimizer in ((policy, policy_opt), (values_model, critic_opt)):
                ranks.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n += 1
    totals = ranks.sum(torch.tensor(list(sums.values()), dtype=torch.float64, device=ranks.device))
    return {key: total / n for key, total in zip(sums, totals.tolist())}
