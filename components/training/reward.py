"""Reward model (InstructGPT step 3): loss = -log sigmoid(r(chosen) - r(rejected)), or (``reward.loss:
plackett_luce``) the listwise likelihood of each group's whole ranking.

The reward model is the SFT transformer with a fresh scalar head; r(x, y) is the head's output at
the last response token (EOS when the response ended). As in InstructGPT, the K*(K-1)/2 pairs of
one ranked group are one batch element: every distinct response of a batch goes through the model
once, chosen and rejected together in one forward pass, and the loss averages over all pairs
(K=4 needs 4 forward passes instead of 12, and no response is seen again within an epoch).
A share of comparisons is held out, whole groups at a time (pairs of a group share responses,
so splitting pairs would leak them).

After training the reward is normalised inside the model to mean 0 and standard deviation 1 on
samples from the SFT policy, so the saved model scores SFT samples at 0 on average with unit spread
(InstructGPT normalises the RM "so that the labeler demonstrations achieve a mean score of 0"; here,
as in Ziegler et al., the reference is the SFT policy's own samples, which is where PPO starts, and
the unit scale keeps PPO's kl_coef, value clip and missing-EOS penalty meaningful across reward models).

This module never calls the gold judge (its agreement with the reward model is the evaluation's business).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, RewardConfig
from components.models import lora
from components.models.batching import Batch, TokenScores, encode_examples, sequence_scores
from components.models.builders import scalar_model_from
from components.models.ensemble import RewardEnsemble
from components.models.runtime import SINGLE, Runtime
from components.models.scoring import score_comparisons, score_samples, score_samples_by_member
from components.training.loop import INPUT_TOKENS, QUIET, EpochEnds, Harness, Means, Objective, train_supervised
from components.training.rounds import split_by_round


def reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    mean: Callable[[torch.Tensor], torch.Tensor] = torch.mean,
) -> torch.Tensor:
    """Mean of -log sigmoid(r(chosen) - r(rejected)) over pairs: (B,), (B,) -> scalar (``mean``: over these pairs,
    or this part's share of the global batch's mean)."""
    return mean(-F.logsigmoid(chosen_rewards - rejected_rewards))


def plackett_luce_terms(ranked_rewards: torch.Tensor) -> torch.Tensor:
    """-log P(ranking) under Plackett-Luce, term by term: (K,) rewards best first -> (K - 1,) terms
    log sum_{s >= t} exp(r_s) - r_t, the surprise of each place's pick among the responses still unplaced. For K = 2
    it is the pairwise loss -log sigmoid(r_chosen - r_rejected)."""
    still_unplaced = torch.logcumsumexp(ranked_rewards.flip(0), dim=0).flip(0)
    return (still_unplaced - ranked_rewards)[:-1]


def group_ranking(rows: Sequence[dict]) -> list[str] | None:
    """A group's responses best first, when its rows are every pair of one strict order (a complete, transitive
    ranking: the k-th best wins exactly K - k of its pairs); None otherwise (pairs left out, a cycle, a tie)."""
    wins = Counter(row["chosen"] for row in rows)
    responses = {row[side] for row in rows for side in ("chosen", "rejected")}
    k = len(responses)
    if len(rows) != k * (k - 1) // 2:
        return None
    ranking = sorted(responses, key=lambda response: -wins[response])
    return ranking if [wins[r] for r in ranking] == list(range(k - 1, -1, -1)) else None


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """Share of pairs where the chosen response gets the higher reward (a tie counts as wrong)."""
    return (chosen_rewards > rejected_rewards).float().mean().item()


def group_comparisons(comparisons: Sequence[dict]) -> list[list[dict]]:
    """The comparisons grouped by ``group`` (the pairs of one ranked K-sample), in order of first row.

    Rows without a ``group`` are their own group (the static file has one pair per prompt draw).
    """
    groups: dict[object, list[dict]] = {}
    for index, row in enumerate(comparisons):
        groups.setdefault(row.get("group", ("row", index)), []).append(row)
    return list(groups.values())


def split_comparisons(comparisons: Sequence[dict], valid_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, valid): about ``valid_fraction`` of the groups held out, seeded; see ``group_comparisons``. Labelling
    rounds are split one by one, so what a round held out stays held out as rounds are added."""
    return split_by_round(comparisons, lambda rows: split_groups(rows, valid_fraction, seed))


def split_groups(comparisons: Sequence[dict], valid_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    groups = group_comparisons(comparisons)
    random.Random(f"{seed}/reward-valid").shuffle(groups)
    n_valid = min(len(groups) - 1, max(1, round(valid_fraction * len(groups))))
    return [row for g in groups[n_valid:] for row in g], [row for g in groups[:n_valid] for row in g]


def encode_distinct(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], model_cfg: ModelConfig
) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Every distinct (prompt, response) of ``rows`` once, in one batch, and where each row's chosen and rejected
    response sit in it: (batch, chosen index (B,), rejected index (B,))."""
    index: dict[tuple[str, str], int] = {}
    for row in rows:
        for side in ("chosen", "rejected"):
            index.setdefault((row["prompt"], row[side]), len(index))
    samples = list(index)
    batch = encode_examples(
        tokenizer,
        [p for p, _ in samples],
        [r for _, r in samples],
        model_cfg.max_prompt_tokens,
        model_cfg.max_response_tokens,
    )
    chosen = torch.tensor([index[(row["prompt"], row["chosen"])] for row in rows])
    rejected = torch.tensor([index[(row["prompt"], row["rejected"])] for row in rows])
    return batch, chosen, rejected


def pair_rewards(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], model_cfg: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """r(chosen) and r(rejected) of every row: (B,), (B,).

    Every distinct (prompt, response) of ``rows`` is scored once, all of them in one forward pass.
    """
    batch, chosen, rejected = encode_distinct(tokenizer, rows, model_cfg)
    rewards = sequence_scores(model, batch)  # (distinct responses,)
    return rewards[chosen], rewards[rejected]


FINAL_NORMS = ("ln_f", "final_layer_norm", "norm")  # GPT-2 / GPT-J, OPT / GPT-NeoX, Llama-style


@torch.no_grad()
def shift_rewards(model: PreTrainedModel, delta: float) -> str:
    """Add ``delta`` to every score the model outputs, in a parameter that ``save_pretrained`` keeps.

    Returns the parameter changed. The head's bias when it has one. GPT-2's head has none and its
    class always rebuilds it without one, so a bias added there would be dropped on reload; the
    shift goes into the final LayerNorm's bias instead, along the head's weight w:
    w . (beta + delta * w / |w|^2) = w . beta + delta, exactly, for every token.
    """
    head = model.score
    if head.bias is not None:
        head.bias += delta
        return "score.bias"
    for name in FINAL_NORMS:
        norm = getattr(model.base_model, name, None)
        if isinstance(norm, torch.nn.LayerNorm) and norm.bias is not None:
            weight = head.weight[0].float()
            norm.bias += (delta * weight / weight.dot(weight)).to(norm.bias.dtype)
            return f"{name}.bias"
    warnings.warn(
        f"{type(model).__name__}: no head bias and no final LayerNorm bias; a biased head is added, "
        "which its class may not load back (the reward offset would be lost on reload)",
        stacklevel=2,
    )
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    biased.weight.copy_(head.weight)
    biased.bias.fill_(delta)
    model.score = biased
    return "score.bias (added)"


@torch.no_grad()
def scale_rewards(model: PreTrainedModel, factor: float) -> None:
    """Multiply every score the model outputs by ``factor`` (the head is linear: scale its weight and bias)."""
    model.score.weight.mul_(factor)
    if model.score.bias is not None:
        model.score.bias.mul_(factor)


def normalise_rewards(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reference_samples: Sequence[tuple[str, str]],
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> tuple[float, float]:
    """Rescale and shift the model's output to mean 0 and standard deviation 1 on ``reference_samples``.

    Returns (offset, scale): the mean and standard deviation removed. The KL coefficient, the value
    clip range and the missing-EOS penalty are then in units of the SFT samples' reward spread,
    whatever the reward model.
    """
    scores = score_samples(model, tokenizer, reference_samples, model_cfg, runtime).double()
    offset = scores.mean().item()
    scale = scores.std().item() if len(scores) > 1 else 1.0
    if not scale > 0:
        scale = 1.0  # a constant reward model (e.g. the shuffled-label control) is only shifted
    scale_rewards(model, 1.0 / scale)
    shift_rewards(model, -offset / scale)
    return offset, scale


def reward_objective(
    tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, device: torch.device, listwise: bool = False
) -> Objective:
    """The mean over every pair of the global batch's ranked groups of -log sigmoid(r(chosen) - r(rejected)); or,
    ``listwise``, the mean over the Plackett-Luce terms of each group's whole ranking (K - 1 terms for K responses),
    a group whose pairs are not one complete ranking (``group_ranking``) contributing its pairs' terms instead. The
    accuracy and margin are the pairs' either way."""

    def encode(groups: list[list[dict]]):
        rows = [row for group in groups for row in group]
        batch, chosen, rejected = encode_distinct(tokenizer, rows, model_cfg)
        rankings, pairwise = [], torch.ones(len(rows), dtype=torch.bool)
        if listwise:
            at = {
                (row["prompt"], row[side]): int(i)
                for row, c, r in zip(rows, chosen, rejected)
                for side, i in (("chosen", c), ("rejected", r))
            }
            start = 0
            for group in groups:
                ranking = group_ranking(group)
                if ranking is not None and len(ranking) > 1:
                    rankings.append(torch.tensor([at[(group[0]["prompt"], r)] for r in ranking], device=device))
                    pairwise[start : start + len(group)] = False
                start += len(group)
        terms = sum(len(r) - 1 for r in rankings) + int(pairwise.sum())
        inputs = (batch.to(device), chosen.to(device), rejected.to(device), rankings, pairwise.to(device))
        counts = {
            "pairs": float(len(rows)),
            "terms": float(terms),
            INPUT_TOKENS: inputs[0].attention_mask.float().sum(),
        }
        return inputs, {name: torch.as_tensor(count, device=device) for name, count in counts.items()}

    def loss(model: torch.nn.Module, inputs, mean: Means):
        batch, chosen, rejected, rankings, pairwise = inputs
        rewards = sequence_scores(model, batch)  # (distinct responses,): ``model`` is the prepared TokenScores
        chosen_rewards, rejected_rewards = rewards[chosen], rewards[rejected]
        pair_mean = partial(mean, "pairs")
        margin = (chosen_rewards - rejected_rewards).detach()
        metrics = {"accuracy": pair_mean((margin > 0).float()), "margin": pair_mean(margin)}
        if not listwise:
            return reward_loss(chosen_rewards, rejected_rewards, pair_mean), metrics
        pair_terms = -F.logsigmoid(chosen_rewards - rejected_rewards)[pairwise]
        terms = torch.cat([pair_terms, *(plackett_luce_terms(rewards[ranking]) for ranking in rankings)])
        return mean("terms", terms), metrics

    return Objective(encode, loss)


def train_reward_model(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    comparisons: list[dict],
    cfg: RewardConfig,
    model_cfg: ModelConfig,
    seed: int,
    member: int = 0,
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel, dict[str, float], list[dict[str, float]]]:
    """Train a reward model from the SFT ``policy`` on ``{prompt, chosen, rejected}`` comparisons.

    A training example is a group of comparisons (``group_comparisons``): ``cfg.batch_size``
    groups per step, ``cfg.epochs`` passes over the groups. ``cfg.valid_fraction`` of the groups
    is held out (``split_comparisons``, same seed) and the pairwise accuracy on them reported.
    ``member`` k of an ensemble draws its head's initialisation and its data order from seed + k;
    the held-out split is the same for every member. Returns (reward_model, metrics, history).
    """
    runtime = harness.runtime
    train, valid = split_comparisons(comparisons, cfg.valid_fraction, seed)
    torch.manual_seed(seed + member)  # the fresh head's initialisation
    model = lora.for_training(scalar_model_from(policy), model_cfg, heads=lora.SCALAR_HEADS)
    counts = lora.parameter_counts(model)
    objective = reward_objective(tokenizer, model_cfg, runtime.device, listwise=cfg.loss == "plackett_luce")
    groups = group_comparisons(train)
    epoch_ends = EpochEnds(steps_per_epoch=len(groups) / cfg.batch_size) if cfg.select_epoch and valid else None
    trained, history = train_supervised(
        "reward",
        TokenScores(model),
        groups,
        objective,
        cfg,
        seed + member,
        harness=replace(harness, snapshots=epoch_ends),
    )

    metrics: dict[str, float] = {
        "train_pairs": len(train),
        "train_groups": len(groups),
        "valid_pairs": len(valid),
        "steps": history[-1]["step"] + 1,
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        **counts,
    }
    if epoch_ends is not None:
        metrics.update(select_epoch(trained, epoch_ends, tokenizer, valid, model_cfg, runtime))
    model = trained.model
    if valid:
        chosen_rewards, rejected_rewards = score_comparisons(model, tokenizer, valid, model_cfg, runtime)
        metrics["valid_loss"] = reward_loss(chosen_rewards, rejected_rewards).item()
        metrics["valid_accuracy"] = pairwise_accuracy(chosen_rewards, rejected_rewards)
        metrics["valid_margin"] = (chosen_rewards - rejected_rewards).mean().item()
    model.eval()
    return model, metrics, history


def normalised_on(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reference_samples: Sequence[tuple[str, str]] | None,
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> dict[str, float]:
    """With ``reference_samples`` ((prompt, response) pairs sampled from the SFT policy), ``model`` rescaled to score
    them with mean 0 and standard deviation 1: the mean and the standard deviation removed (``reward_offset``,
    ``reward_scale``) and the samples' scores after. Without, the model as it is (offset 0, scale 1)."""
    if not reference_samples:
        return {"reward_offset": 0.0, "reward_scale": 1.0}
    offset, scale = normalise_rewards(model, tokenizer, reference_samples, model_cfg, runtime)
    after = score_samples(model, tokenizer, reference_samples, model_cfg, runtime).double()
    return {
        "reward_offset": offset,
        "reward_scale": scale,
        "reference_mean": after.mean().item(),
        "reference_std": after.std().item() if len(after) > 1 else 0.0,
    }


def select_epoch(
    trained: TokenScores,
    epoch_ends: EpochEnds,
    tokenizer: PreTrainedTokenizerBase,
    valid: list[dict],
    model_cfg: ModelConfig,
    runtime: Runtime = SINGLE,
) -> dict[str, float]:
    """Load into ``trained`` the epoch's weights with the lowest loss on the held-out groups; returns each epoch's
    held-out loss and the epoch chosen (1-based). The last epoch is the trained model as it stands (under DeepSpeed,
    its master weights), kept in host memory while the earlier epochs are scored."""

    def held_out_loss() -> float:
        return reward_loss(*score_comparisons(trained.model, tokenizer, valid, model_cfg, runtime)).item()

    states = [state for _, state in epoch_ends.taken[:-1]]
    states.append({name: t.detach().to("cpu", copy=True) for name, t in trained.state_dict().items()})
    epoch_ends.taken.clear()
    losses = [0.0] * len(states)
    losses[-1] = held_out_loss()
    for k, state in enumerate(states[:-1]):
        trained.load_state_dict(state)
        losses[k] = held_out_loss()
    best = min(range(len(losses)), key=losses.__getitem__)
    trained.load_state_dict(states[best])
    return {"selected_epoch": best + 1, **{f"epoch{k + 1}_valid_loss": loss for k, loss in enumerate(losses)}}


def ensemble_agreement(by_member: torch.Tensor) -> float:
    """Share of pairs every member orders the same way; ``by_member`` (pairs, M) is r(chosen) - r(rejected)."""
    signs = by_member > 0
    return (signs.all(dim=-1) | (~signs).all(dim=-1)).float().mean().item()


def train_reward_ensemble(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    comparisons: list[dict],
    cfg: RewardConfig,
    model_cfg: ModelConfig,
    seed: int,
    reference_samples: list[tuple[str, str]] | None = None,
    harness: Harness = QUIET,
) -> tuple[PreTrainedModel | RewardEnsemble, dict[str, float], list[dict[str, float]]]:
    """``cfg.ensemble_size`` reward models (``train_reward_model`` with member = 0, 1, ...), each normalised on
    ``reference_samples`` on its own (``normalised_on``). One member is returned as itself.

    Metrics: member 0's under their usual names, then the ensemble's: ``valid_accuracy`` of the members'
    mean, each ``member<k>_valid_accuracy``, and ``member_agreement``, the share of held-out pairs all
    members order alike. History: member 0's steps, then the next member's, with ``member`` set.
    """
    runtime = harness.runtime
    members, histories, member_metrics = [], [], []
    for k in range(cfg.ensemble_size):
        model, metrics, history = train_reward_model(policy, tokenizer, comparisons, cfg, model_cfg, seed, k, harness)
        metrics |= normalised_on(model, tokenizer, reference_samples, model_cfg, runtime)
        members.append(model)
        member_metrics.append(metrics)
        offset = histories[-1]["step"] + 1 if histories else 0  # one step axis: member k's steps follow member k-1's
        histories += (
            [{**row, "step": row["step"] + offset, "member": k} for row in history]
            if cfg.ensemble_size > 1
            else history
        )
    if len(members) == 1:
        return members[0], {**member_metrics[0], "ensemble_size": 1}, histories
    ensemble = RewardEnsemble(members)
    metrics = {**member_metrics[0]}
    for k, m in enumerate(member_metrics):
        metrics.update(
            {f"member{k}_{name}": m[name] for name in ("valid_accuracy", "reward_offset", "reward_scale") if name in m}
        )
    _, valid = split_comparisons(comparisons, cfg.valid_fraction, seed)
    if valid:
        chosen = score_samples_by_member(
            ensemble, tokenizer, [(r["prompt"], r["chosen"]) for r in valid], model_cfg, runtime
        )
        rejected = score_samples_by_member(
            ensemble, tokenizer, [(r["prompt"], r["rejected"]) for r in valid], model_cfg, runtime
        )
        metrics["valid_accuracy"] = pairwise_accuracy(chosen.mean(-1), rejected.mean(-1))
        metrics["valid_loss"] = reward_loss(chosen.mean(-1), rejected.mean(-1)).item()
        metrics["member_agreement"] = ensemble_agreement(chosen - rejected)
    metrics["ensemble_size"] = len(members)
    return ensemble, metrics, histories
