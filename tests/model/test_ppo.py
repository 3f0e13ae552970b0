"""PPO's behaviour on a tiny seeded setup, and the guards around it."""
import copy

import pytest
import torch

from components.config import KLControlConfig, PPOConfig
from components.data import gold_judge
from components.data.files import DEMONSTRATIONS
from components.training.ppo import train_ppo
from tests.model.conftest import SEED, TINY

PPO = PPOConfig(iterations=12, rollout_batch_size=64, minibatch_size=32, ppo_epochs=2, lr=3e-4, critic_lr=1e-3, kl=KLControlConfig(kl_coef=0.02))


def _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg=PPO, monitor=None):
    sft, rm = tiny_sft[0], tiny_reward_model[0]
    policy, ref, critic = copy.deepcopy(sft), copy.deepcopy(sft), copy.deepcopy(rm)
    prompts = sorted({d["prompt"] for d in smoke_rows[DEMONSTRATIONS]})
    policy, metrics, history = train_ppo(policy, ref, critic, copy.deepcopy(rm), tokenizer, prompts, cfg, TINY, SEED, monitor=monitor)
    return policy, ref, history


@pytest.fixture(scope="module")
def ppo_run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows):
    return _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows)


def test_ppo_raises_the_reward_model_score(ppo_run):
    _, _, history = ppo_run
    first = sum(h["rm_score"] for h in history[:3]) / 3
    last = sum(h["rm_score"] for h in history[-3:]) / 3
    assert last > first + 0.2, (first, last)  # margin: +0.2 RM units in 12 iterations
    assert all(h["kl"] < 30 for h in history)  # and the policy stays within reach of the reference


def test_ppo_history_has_the_diagnostics(ppo_run):
    keys = {"rm_score", "kl", "kl_coef", "entropy", "clipfrac", "approx_kl", "value_loss", "explained_variance", "response_length", "ended"}
    assert keys <= set(ppo_run[2][-1])


def test_reference_model_is_never_updated(ppo_run, tiny_sft):
    _, ref, _ = ppo_run
    for (name, a), b in zip(ref.named_parameters(), tiny_sft[0].parameters()):
        assert torch.equal(a, b), name
        assert not a.requires_grad


def test_huge_kl_coefficient_keeps_the_policy_at_the_reference(ppo_run, tiny_sft, tiny_reward_model, tokenizer, smoke_rows):
    cfg = PPO.model_copy(update={"iterations": 4, "kl": KLControlConfig(kl_coef=10.0)})
    _, _, held = _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg)
    free_kl = max(h["kl"] for h in ppo_run[2][:4])  # the same 4 iterations with kl_coef 0.02
    # margin: under 1 nat per response, and at most a third of the weakly penalised run's KL
    assert max(h["kl"] for h in held) < min(1.0, free_kl / 3), (held, free_kl)


def test_gold_monitor_watches_but_never_steers(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, monkeypatch):
    """The gold judge is only called by the monitor: with it the weights are identical to without it."""
    cfg = PPO.model_copy(update={"iterations": 2})
    calls = []

    def monitor(prompts, texts, ended):
        calls.append(len(texts))
        return {"gold": sum(gold_judge.gold_score(p, t, e) for p, t, e in zip(prompts, texts, ended)) / len(texts)}

    watched, _, history = _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg, monitor)

    def forbidden(*args, **kwargs):
        raise AssertionError("the gold judge was called during training")

    monkeypatch.setattr(gold_judge, "judge", forbidden)
    monkeypatch.setattr(gold_judge, "gold_score", forbidden)
    unwatched, _, _ = _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg)
    assert calls and "gold" in history[-1]
    for a, b in zip(watched.parameters(), unwatched.parameters()):
        assert torch.equal(a, b)


def test_gradient_accumulation_takes_the_same_steps(tiny_sft, tiny_reward_model, tokenizer, smoke_rows):
    """4 micro-batches per minibatch give the minibatch's gradient: same weights within float noise (1e-6)."""
    cfg = PPO.model_copy(update={"iterations": 2})
    whole, _, whole_history = _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg)
    micro, _, micro_history = _run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, cfg.model_copy(update={"gradient_accumulation_steps": 4}))
    assert max((a - b).abs().max().item() for a, b in zip(whole.parameters(), micro.parameters())) < 1e-6
    assert micro_history[-1]["policy_loss"] == pytest.approx(whole_history[-1]["policy_loss"], rel=1e-4, abs=1e-7)
    assert max((a - b).abs().max().item() for a, b in zip(whole.parameters(), tiny_sft[0].parameters())) > 1e-4  # it did train


def test_batches_that_do_not_shard_evenly_are_refused():
    from components.training.ppo import check_shardable

    check_shardable(PPO, 2)
    with pytest.raises(ValueError, match="multiples of the number of processes \\(3\\)"):
        check_shardable(PPO, 3)
    with pytest.raises(ValueError, match="gradient_accumulation_steps \\(32\\)"):
        check_shardable(PPO.model_copy(update={"gradient_accumulation_steps": 32}), 2)
