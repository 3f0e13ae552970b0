"""The scratch GPT-2's activation: GPT-2's tanh-approximated GELU, whichever of its two kernels the config names,
checked against the formula evaluated by hand in float64."""

import math

import pytest
import torch

from components.config import ModelConfig
from components.models.builders import build_policy, load_causal_lm
from components.models.saving import save_model
from components.models.tokenizer import build_word_tokenizer
from components.task.lexicon import VOCABULARY

TOLERANCE = 1e-6  # float32 rounding of the tanh GELU; the two kernels differ by at most 5e-7 on |x| <= 16


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """Hendrycks & Gimpel's tanh approximation, the one GPT-2 used."""
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(VOCABULARY)


@pytest.mark.parametrize("activation", ["gelu_pytorch_tanh", "gelu_new"])
def test_the_scratch_policy_applies_gpt2s_tanh_gelu(tokenizer, activation):
    policy = build_policy(ModelConfig(n_layer=1, n_embd=16, n_head=2, activation=activation), tokenizer, seed=0)
    x = torch.linspace(-16, 16, 20001)
    assert policy.config.activation_function == activation
    assert (policy.transformer.h[0].mlp.act(x).double() - tanh_gelu(x)).abs().max() < TOLERANCE
    # away from 0 the approximation differs from the exact (erf) GELU: a wrong kernel would fail here
    assert abs(tanh_gelu(torch.tensor(-3.0)) - torch.nn.functional.gelu(torch.tensor(-3.0).double())) > 1e-4


def test_both_kernels_give_the_same_logits_and_the_saved_model_keeps_its_kernel(tokenizer, tmp_path):
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2)
    fused = build_policy(cfg, tokenizer, seed=0).eval()
    unfused = build_policy(cfg.model_copy(update={"activation": "gelu_new"}), tokenizer, seed=0).eval()
    ids = torch.randint(0, len(tokenizer), (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fused(ids).logits, unfused(ids).logits, atol=1e-5)
    save_model(fused, tokenizer, tmp_path / "policy", {"stage": "test"})
    assert load_causal_lm(tmp_path / "policy").config.activation_function == "gelu_pytorch_tanh"
