"""PPO against a reward model: InstructGPT step 3 (Ouyang et al. 2022), with the details of
Ziegler et al. 2019, Stiennon et al. 2020 and Huang et al. 2024 ("N+ implementation details").

Each iteration: sample responses from the policy (temperature 1) -> score them with the reward
model and the frozen reference -> per-token rewards (KL penalty on every token, RM score on the
last) -> GAE advantages and returns -> several epochs of clipped policy and value updates over
minibatches -> update the KL coefficient.
"""
from __future__ import annotations

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
    token_scores,
)
from components.models.generation import decode_responses, generate
from components.training.checkpoints import PPOState, latest_checkpoint, python_rng_state, restore_python_rng, save_checkpoint
from components.training.loop import Log, check_finite
from components.training.sft import sft_loss

# (prompts, responses, ended) -> metrics: watches rollouts (e.g. the gold judge); never feeds training.
Monitor = Callable[[list[str], list[str], list[bool]], dict[str, float]]


# --- the math -----------------------------------------------------------------------------


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance over the masked entries; keep the mean when ``shift_mean`` is False."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
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
    rewards[torch.arange(len(scores)), last_index(response_mask)] += scores
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
    next_value = bootstrap_values.float() if bootstrap_values is not None else torch.zeros(rewards.shape[0])
    advantages_reversed = []
    last_gae = torch.zeros(rewards.shape[0])
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
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate; a ratio outside 1 +- cliprange on the pessimistic side gets no gradient."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask).item(),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, float]]:
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses, losses_clipped = (values - returns) ** 2, (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(losses, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses).float(), mask).item()
    return loss, {"value_clipfrac": clipfrac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    return (1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)).item()


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


@dataclass
class RolloutBatch:
    batch: Batch
    ended: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor  # (B, R)
    old_values: torch.Tensor  # (B, R)
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)


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
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Optimise ``policy`` in place; ``ref_policy`` and ``reward_model`` stay frozen. Returns (policy, metrics, history).

    With ``checkpoint_dir``, the full state is saved every ``cfg.checkpoint_every`` iterations and
    a run that finds a checkpoint there continues from it: same result as never stopping.
    """
    torch.manual_seed(seed)
    rng = random.Random(f"{seed}/ppo")
    for frozen in (ref_policy, reward_model):
        frozen.eval()
        frozen.requires_grad_(False)
    for trained in (policy, critic):
        trained.eval()  # dropout off: rollouts and updates see the same network
        trained.requires_grad_(True)
    policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, eps=1e-5, weight_decay=0.0)
    kl_ctl = KLController(cfg.kl)
    history: list[dict[str, float]] = []
    order: list[str] = []
    start = 0
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        policy.load_state_dict(resumed.tensors["policy"])
        critic.load_state_dict(resumed.tensors["critic"])
        policy_opt.load_state_dict(resumed.tensors["policy_opt"])
        critic_opt.load_state_dict(resumed.tensors["critic_opt"])
        torch.set_rng_state(resumed.tensors["torch_rng"])
        restore_python_rng(rng, resumed.python_rng)
        kl_ctl.value, order, history, start = resumed.kl_coef, resumed.order, resumed.history, resumed.iteration

    for iteration in range(start, cfg.iterations):
        if len(order) < cfg.rollout_batch_size:
            fresh = list(prompts)
            rng.shuffle(fresh)
            order += fresh
        batch_prompts, order = order[: cfg.rollout_batch_size], order[cfg.rollout_batch_size :]

        # 1. rollout
        started = time.perf_counter()
        prompt_ids, prompt_mask = encode_prompts(tokenizer, batch_prompts, model_cfg.max_prompt_tokens)
        rollout = generate(policy, prompt_ids, prompt_mask, model_cfg.max_response_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.temperature)
        batch, mask = rollout.batch, rollout.batch.response_mask.float()
        generated = time.perf_counter()

        # 2. score: reward model, reference and value estimates of the sampled responses
        with torch.no_grad():
            old_logprobs = response_logprobs(policy, batch)
            ref_logprobs = response_logprobs(ref_policy, batch)
            old_values = token_scores(critic, batch) * mask
            rm_scores = sequence_scores(reward_model, batch)
            scores = rm_scores - cfg.missing_eos_penalty * (~rollout.ended).float()

            # 3. rewards and advantages
            rewards, kl = kl_penalised_rewards(scores, old_logprobs, ref_logprobs, batch.response_mask, kl_ctl.value)
            if cfg.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)
            advantages, returns = compute_gae(rewards, old_values, batch.response_mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask)
        check_finite("ppo", iteration, rm_score=rm_scores.mean().item(), kl=kl.sum(1).mean().item())
        data = RolloutBatch(batch, rollout.ended, old_logprobs, old_values, advantages, returns)
        scored = time.perf_counter()

        # 4. several epochs of minibatch updates over the rollout batch
        update_stats = _update(policy, critic, policy_opt, critic_opt, data, cfg, tokenizer, model_cfg, ptx_examples, rng, iteration)
        updated = time.perf_counter()

        # 5. the KL controller sees the mean KL per response of this batch
        mean_kl = kl.sum(1).mean().item()
        kl_ctl.update(mean_kl, cfg.rollout_batch_size)

        if iteration % cfg.log_every == 0 or iteration == cfg.iterations - 1:
            entry = {
                "iteration": iteration,
                "rm_score": rm_scores.mean().item(),
                "kl": mean_kl,
                "kl_coef": kl_ctl.value,
                "non_score_reward": (-kl_ctl.value * kl).sum(1).mean().item(),
                "response_length": mask.sum(1).mean().item(),
                "ended": rollout.ended.float().mean().item(),
                "explained_variance": explained_variance(old_values, returns, mask),
                "response_tokens": mask.sum().item(),
                "generation_seconds": generated - started,
                "scoring_seconds": scored - generated,
                "update_seconds": updated - scored,
                **update_stats,
            }
            if monitor is not None:
                texts = decode_responses(tokenizer, rollout)
                entry.update(monitor(batch_prompts, texts, rollout.ended.tolist()))
            history.append(entry)
            if log:
                log(iteration, entry)

        if checkpoint_dir and cfg.checkpoint_every and (iteration + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, PPOState(
                iteration + 1, kl_ctl.value, python_rng_state(rng), order, history,
                {"policy": policy.state_dict(), "critic": critic.state_dict(), "policy_opt": policy_opt.state_dict(),
                 "critic_opt": critic_opt.state_dict(), "torch_rng": torch.get_rng_state()},
            ))

    last = history[-1]
    metrics = {"final_rm_score": last["rm_score"], "final_kl": last["kl"], "final_kl_coef": kl_ctl.value, "iterations": cfg.iterations}
    return policy, metrics, history


def _update(policy, critic, policy_opt, critic_opt, data: RolloutBatch, cfg: PPOConfig, tokenizer, model_cfg, ptx_examples, rng, iteration) -> dict[str, float]:
    sums: dict[str, float] = {}
    n = 0
    size = data.batch.input_ids.shape[0]
    for _ in range(cfg.ppo_epochs):
        permutation = torch.randperm(size)
        for start in range(0, size, cfg.minibatch_size):
            index = permutation[start : start + cfg.minibatch_size]
            mb = data.batch.select(index)
            mask = mb.response_mask.float()

            logits = response_logits(policy, mb)
            logprobs = gather_logprobs(logits, mb.response_ids)
            pg_loss, pg_stats = clipped_policy_loss(logprobs, data.old_logprobs[index], data.advantages[index], mask, cfg.cliprange)
            loss = pg_loss
            if cfg.ptx_coef > 0 and ptx_examples:
                # PPO-ptx: keep the likelihood of the demonstrations (InstructGPT's pretraining mix)
                rows = rng.sample(ptx_examples, min(cfg.minibatch_size, len(ptx_examples)))
                ptx = encode_examples(tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows], model_cfg.max_prompt_tokens, model_cfg.max_response_tokens)
                loss = loss + cfg.ptx_coef * sft_loss(policy, ptx)
            check_finite("ppo", iteration, policy_loss=loss.item())
            policy_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            policy_opt.step()

            values = token_scores(critic, mb)
            vf_loss, vf_stats = clipped_value_loss(values, data.old_values[index], data.returns[index], mask, cfg.cliprange_value)
            check_finite("ppo", iteration, value_loss=vf_loss.item())
            critic_opt.zero_grad(set_to_none=True)
            vf_loss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
            critic_opt.step()

            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits), mask).item()
            for key, value in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "entropy": entropy, **pg_stats, **vf_stats}.items():
                sums[key] = sums.get(key, 0.0) + value
            n += 1
    return {key: value / n for key, value in sums.items()}
