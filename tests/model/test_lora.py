"""LoRA through PEFT (``model.peft``): known answers, and every stage of the recipe with adapters.

- At initialisation B = 0: the adapted model computes exactly what the base computes (logits, scores: bit for bit).
- The merged model (W + (alpha / r) B A written into the weights) computes what the adapted one computes, to float32
  rounding. The yardstick is float32's own, measured on the machine that runs the test: both are compared with the
  adapted model's logits in float64, and the merged model may be at most 4x as far from them as the adapted float32
  model is, or 16 float32 ulps (2^-23) of the largest logit, whichever is larger.
- PPO's and DPO's reference is the policy with its adapters off: after training it still equals SFT bit for bit.
- Only the adapters (and a reward model's or critic's new head) train: every other weight of the shipped model is
  SFT's, bit for bit, and the trainable count is r (in + out) per adapted layer, counted by hand from GPT-2's shapes.
"""

import copy

import pytest
import torch

from components.config import load_config
from components.data.files import DEMONSTRATIONS
from components.models import lora
from components.models.builders import build_policy, load_causal_lm, load_scalar_model, scalar_model_from
from components.models.saving import save_model
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe

FLOAT32_ULP = 2.0**-23
LORA = ["model.peft={r: 4, alpha: 8, target_modules: [c_attn, c_proj, c_fc]}"]


@pytest.fixture(scope="module")
def setting():
    cfg = load_config("smoke", LORA)
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    ids = tokenizer(["a great phone , i love it ."] * 2, return_tensors="pt")["input_ids"]
    return {"cfg": cfg, "rows": rows, "tokenizer": tokenizer, "ids": ids}


def adapted_policy(setting, seed: int = 0):
    base = build_policy(setting["cfg"].model, setting["tokenizer"], seed).eval()
    return base, lora.adapted(copy.deepcopy(base), setting["cfg"].model.peft).eval()


def test_at_initialisation_the_adapted_model_computes_exactly_what_the_base_does(setting):
    base, adapted = adapted_policy(setting)
    assert lora.has_adapters(adapted) and not lora.has_adapters(base)
    assert torch.equal(adapted(setting["ids"]).logits, base(setting["ids"]).logits)
    scalar = scalar_model_from(base).eval()
    adapted_scalar = lora.adapted(copy.deepcopy(scalar), setting["cfg"].model.peft, heads=lora.SCALAR_HEADS).eval()
    assert torch.equal(adapted_scalar(setting["ids"]).logits, scalar(setting["ids"]).logits)


def test_only_the_adapters_and_a_new_head_are_trainable_r_times_in_plus_out_per_layer(setting):
    cfg = setting["cfg"]
    d, r, layers = cfg.model.n_embd, cfg.model.peft.r, cfg.model.n_layer
    # GPT-2's block: c_attn d -> 3d, attn.c_proj d -> d, c_fc d -> 4d, mlp.c_proj 4d -> d
    by_hand = layers * r * ((d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d))
    _, adapted = adapted_policy(setting)
    assert lora.parameter_counts(adapted)["trainable_parameters"] == by_hand
    scalar = lora.adapted(scalar_model_from(adapted_policy(setting)[0]), cfg.model.peft, heads=lora.SCALAR_HEADS)
    assert lora.parameter_counts(scalar)["trainable_parameters"] == by_hand + d  # the head: d -> 1, no bias


def test_the_merged_model_computes_what_the_adapted_one_does_to_float32_rounding(setting):
    _, adapted = adapted_policy(setting)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking update: B away from 0
        for name, parameter in adapted.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    ids = setting["ids"]
    exact = copy.deepcopy(adapted).double()(ids).logits
    unmerged = adapted(ids).logits
    merged = lora.merged(adapted)
    assert not lora.has_adapters(merged) and type(merged) is type(adapted)
    merged_logits = merged(ids).logits
    float32_error = (unmerged.double() - exact).abs().max().item()
    tolerance = max(4 * float32_error, 16 * FLOAT32_ULP * exact.abs().max().item())
    assert (merged_logits.double() - exact).abs().max().item() <= tolerance
    base = adapted_policy(setting)[0]
    assert (merged_logits - base(ids).logits).abs().max().item() > 100 * tolerance  # the update is in there
    # merged, saved and loaded back by plain transformers: the same model
    assert torch.equal(
        lora.merged_state_dict(adapted)["transformer.h.0.attn.c_attn.weight"],
        merged.state_dict()["transformer.h.0.attn.c_attn.weight"],
    )


@pytest.fixture(scope="module")
def trained(setting):
    """Every stage of the recipe with adapters (smoke), from an SFT trained in full (a model from scratch)."""
    cfg, rows, tokenizer = setting["cfg"], setting["rows"], setting["tokenizer"]
    demonstrations = rows[DEMONSTRATIONS]
    prompts = sorted({r["prompt"] for r in demonstrations})
    sft = recipe.sft_stage(cfg, tokenizer, demonstrations)
    labeller = recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), demonstrations)
    comparisons = recipe.comparisons_stage(cfg, tokenizer, sft.model, prompts, labeller).model
    reward = recipe.reward_stage(cfg, tokenizer, sft.model, comparisons, prompts)
    baselines = {
        name: recipe.baseline_stage(cfg, name, tokenizer, sft.model, comparisons)
        for name in recipe.SUPERVISED_BASELINES
    }
    ppo = recipe.ppo_stage(cfg, tokenizer, sft.model, reward.model, prompts, demonstrations)
    return {"sft": sft, "reward": reward, "baselines": baselines, "ppo": ppo}


def test_every_stage_trains_its_adapters_and_ships_a_plain_model(setting, trained, tmp_path):
    sft = trained["sft"].model
    frozen = lambda name: ".h." not in name or ".ln_" in name or name.endswith(".bias")  # noqa: E731
    assert trained["sft"].metrics["trainable_parameters"] == trained["sft"].metrics["parameters"]  # from scratch
    for name, result in [*trained["baselines"].items(), ("ppo", trained["ppo"])]:
        model = result.model
        assert not lora.has_adapters(model), name
        assert result.metrics["trainable_parameters"] < result.metrics["parameters"] / 2, name
        changed = {n for n, p in model.state_dict().items() if not torch.equal(p, sft.state_dict()[n])}
        assert changed and all(not frozen(n) and n.endswith(".weight") for n in changed), (name, changed)
        save_model(model, setting["tokenizer"], tmp_path / name, {})
        loaded = load_causal_lm(tmp_path / name)
        assert torch.equal(loaded(setting["ids"]).logits, model.eval()(setting["ids"]).logits), name
    reward = trained["reward"].model
    save_model(reward, setting["tokenizer"], tmp_path / "rm", {})
    assert not lora.has_adapters(load_scalar_model(tmp_path / "rm"))
    assert trained["ppo"].metrics["critic_trainable_parameters"] < trained["ppo"].metrics["parameters"] / 2
    # the same trainable parameters on both sides of the comparison
    counts = {n: r.metrics["trainable_parameters"] for n, r in [*trained["baselines"].items(), ("ppo", trained["ppo"])]}
    assert len(set(counts.values())) == 1, counts


def test_ppo_s_reference_is_the_policy_with_its_adapters_off_and_equals_sft_bit_for_bit(setting, trained):
    cfg, sft = setting["cfg"], trained["sft"].model
    policy = lora.adapted(copy.deepcopy(sft), cfg.model.peft).eval()
    reference = lora.reference_for(policy, sft)
    assert isinstance(reference, lora.AdaptersDisabled) and list(reference.parameters()) == []  # no second copy
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if ".lora_B." in name:
                parameter.add_(0.1)  # as after training
    ids = setting["ids"]
    assert torch.equal(reference(ids).logits, sft.eval()(ids).logits)
    assert not torch.equal(policy(ids).logits, sft(ids).logits)  # the adapters are back on after the reference pass
    assert all(p.requires_grad for n, p in policy.named_parameters() if ".lora_" in n)
    # and at PPO's first iteration the policy is its reference: the KL is exactly 0
    assert trained["ppo"].history[0]["kl"] == 0.0
