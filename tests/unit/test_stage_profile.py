"""benchmarks/stage_profile.py: the scaled work, and each operator filed under its phase and kind, on a profile of
a step whose operators are known."""

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.stage_profile import GENERATION, breakdown, kind_of, scaled
from components.config import load_config


def test_a_fifth_of_the_work_scales_epochs_iterations_and_prompts_not_shapes():
    cfg = load_config("default", [])
    overrides = dict(item.split("=") for item in scaled(cfg, 0.2))
    assert float(overrides["sft.epochs"]) == round(cfg.sft.epochs * 0.2, 6)
    assert int(overrides["ppo.iterations"]) == round(cfg.ppo.iterations / 5)
    assert int(overrides["comparisons.n_prompts"]) == round(cfg.comparisons.n_prompts / 5)
    assert not any("batch" in key or "tokens" in key for key in overrides)
    load_config("default", scaled(cfg, 0.2))  # a valid config


def test_operators_are_filed_by_kind():
    assert kind_of("aten::addmm") == kind_of("aten::mm") == "matmul"
    assert kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert kind_of("aten::gelu_backward") == "gelu"
    assert kind_of("aten::native_layer_norm") == "layer norm"
    assert kind_of("aten::_log_softmax") == "softmax / cross-entropy"
    assert kind_of("aten::tanh") == "other"


def test_a_step_is_filed_under_forward_backward_optimiser_and_generation():
    layer = torch.nn.Linear(32, 32)
    optimizer = torch.optim.AdamW(layer.parameters())
    x = torch.randn(16, 32)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        loss = torch.nn.functional.gelu(layer(x)).sum()
        loss.backward()
        optimizer.step()
        with record_function(GENERATION), torch.no_grad():
            layer(x)
    found = breakdown(profiler.events(), wall=1.0)
    phases = found["phases"]
    assert phases["forward"]["matmul"] > 0 and phases["forward"]["gelu"] > 0
    assert phases["backward"]["matmul"] > 0 and phases["backward"]["gelu"] > 0
    assert sum(phases["optimiser"].values()) > 0 and "gelu" not in phases["optimiser"]
    assert phases["generation"]["matmul"] > 0 and "gelu" not in phases["generation"]
    filed = sum(sum(kinds.values()) for kinds in phases.values())
    assert 0 < filed < 1.0 and 0 <= found["python"] <= 1.0
