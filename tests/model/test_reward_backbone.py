"""``reward.model``: the reward model on a transformer of its own (another size from scratch, or another local model
with the policy's tokenizer), SFT-trained on the demonstrations first, as InstructGPT's reward models start from an SFT
model. Known answers: its parameters are GPT-2's counted by hand from the sizes it was given (an off-by-one size, or
SFT's transformer used after all, fails); its transformer learnt the demonstrations (a margin of 1 nat per token below
its own initialisation); PPO's critic is the reward model's size; a local reward model is the width of its directory;
a reward model whose tokenizer is not the policy's is refused naming both directories."""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import load_config, reward_model_config
from components.data.files import DEMONSTRATIONS, PREFERENCES
from components.models.builders import build_policy
from components.models.runtime import SINGLE
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.training import recipe
from components.training.loop import Means
from components.training.sft import sft_objective
from flows.execution import stage_calls
from tests.foreign_models import save_gpt_neox, save_llama, save_wider

LEARNT = 1.0  # nats per response token the reward model's own SFT must gain over its initialisation


def gpt2_parameters(layers: int, h: int, vocabulary: int, positions: int) -> int:
    block = (2 * h) + (h * 3 * h + 3 * h) + (h * h + h) + (2 * h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    return vocabulary * h + positions * h + layers * block + 2 * h


def response_nll(model, tokenizer, rows, model_cfg) -> float:
    objective = sft_objective(tokenizer, model_cfg, torch.device("cpu"))
    batch, weights = objective.encode(rows)
    with torch.no_grad():
        loss, _ = objective.loss(model.eval(), batch, Means(weights))
    return loss.item()


@pytest.fixture(scope="module")
def setting():
    overrides = ["reward.model={n_layer: 2, n_embd: 48, n_head: 3}", "sft.epochs=6", "sft.lr=3e-3", "ppo.iterations=1"]
    cfg = load_config("smoke", overrides)
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    demonstrations = rows[DEMONSTRATIONS]
    prompts = sorted({r["prompt"] for r in demonstrations})
    sft = recipe.sft_stage(cfg, tokenizer, demonstrations).model
    reward = recipe.reward_stage(cfg, tokenizer, sft, rows[PREFERENCES], prompts, demonstrations)
    return {
        "cfg": cfg,
        "rows": rows,
        "tokenizer": tokenizer,
        "demonstrations": demonstrations,
        "prompts": prompts,
        "sft": sft,
        "reward": reward,
    }


def test_the_reward_model_has_the_size_it_was_given_not_sft_s(setting):
    cfg, tokenizer, reward = setting["cfg"], setting["tokenizer"], setting["reward"]
    positions = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    backbone = gpt2_parameters(2, 48, len(tokenizer), positions)
    assert (cfg.model.n_layer, cfg.model.n_embd) == (1, 32)  # the policy's, for contrast
    assert sum(p.numel() for p in setting["sft"].parameters()) == gpt2_parameters(1, 32, len(tokenizer), positions)
    # the scalar head: one output per hidden unit, no bias
    assert sum(p.numel() for p in reward.model.parameters()) == backbone + 48
    assert reward.metrics["backbone_parameters"] == backbone
    assert (reward.model.config.n_layer, reward.model.config.n_embd, reward.model.config.n_head) == (2, 48, 3)


def test_the_reward_model_s_transformer_learnt_the_demonstrations_first(setting):
    cfg, tokenizer, demonstrations = setting["cfg"], setting["tokenizer"], setting["demonstrations"]
    own = reward_model_config(cfg)
    backbone = recipe.reward_backbone(cfg, tokenizer, setting["sft"], demonstrations)
    start = build_policy(own, tokenizer, cfg.seed)
    rows = demonstrations[:128]
    trained, initial = response_nll(backbone, tokenizer, rows, own), response_nll(start, tokenizer, rows, own)
    assert trained < initial - LEARNT, (trained, initial)
    with pytest.raises(ValueError, match=r"reward\.model"):
        recipe.reward_backbone(cfg, tokenizer, setting["sft"], None)


def test_ppo_s_critic_is_the_reward_model_s_size(setting):
    cfg, reward = setting["cfg"], setting["reward"]
    ppo = recipe.ppo_stage(
        cfg, setting["tokenizer"], setting["sft"], reward.model, setting["prompts"], setting["demonstrations"]
    )
    assert ppo.metrics["critic_trainable_parameters"] == sum(p.numel() for p in reward.model.parameters())
    assert ppo.metrics["parameters"] == sum(p.numel() for p in setting["sft"].parameters())


def test_a_local_reward_model_is_its_directory_s_and_must_read_the_policy_s_tokens(tmp_path):
    rows = generate_synthetic(load_config("smoke")).rows
    demonstrations = rows[DEMONSTRATIONS][:64]
    texts = [text for row in demonstrations for text in (row["prompt"], row["response"])]
    policy_dir = save_llama(tmp_path / "policy", texts)
    wider = save_wider(tmp_path / "reward", policy_dir)
    local = ["model.source=local", f"model.local_dir={policy_dir}", "sft.epochs=0.5"]
    cfg = load_config("smoke", [*local, f"reward.model={{local_dir: {wider}}}"])
    tokenizer = recipe.make_tokenizer(cfg, None)
    sft = recipe.pretrained_policy(cfg, tokenizer)
    backbone = recipe.reward_backbone(cfg, tokenizer, copy.deepcopy(sft), demonstrations)
    assert backbone.config.hidden_size == 2 * sft.config.hidden_size
    other = save_gpt_neox(tmp_path / "other", texts)
    cfg = load_config("smoke", [*local, f"reward.model={{local_dir: {other}}}"])
    with pytest.raises(ValueError, match=f"{other}.*not the policy's.*{policy_dir}"):
        recipe.reward_backbone(cfg, tokenizer, sft, demonstrations)


def test_the_flow_s_stage_call_trains_the_same_reward_model(setting):
    """What the flow's reward stage runs (in its process or launched): the same weights, bit for bit."""
    args = {
        "comparisons": setting["rows"][PREFERENCES],
        "train_prompts": setting["prompts"],
        "demonstrations": setting["demonstrations"],
    }
    call = stage_calls.CALLS["reward_model"]
    result = call(setting["cfg"], setting["tokenizer"], args, {"sft": setting["sft"]}, SINGLE, None, None)
    ours, theirs = result.model.state_dict(), setting["reward"].model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
