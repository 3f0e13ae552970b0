"""model.cpu_precision: the CPU's bf16 read from /proc/cpuinfo, the refusal where it is emulated, and bf16 autocast
reaching every forward pass of a stage through its runtime (the matmuls by hand, a prepared model, a whole stage)."""

import pytest
import torch

from components.config import ConfigError, load_config
from components.models import precision
from components.training.loop import Harness
from flows.execution.runtimes import in_process, resolve_mixed_precision

NATIVE = (
    "processor\t: 0\nmodel name\t: Some Xeon @ 2GHz\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
    "processor\t: 1\nmodel name\t: Some Xeon @ 2GHz\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16\n"
)
EMULATED = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"


def model_cfg(cpu_precision: str):
    return load_config("smoke", [f"model.cpu_precision={cpu_precision}"]).model


def test_the_cpu_description_reads_the_name_the_flags_and_native_bf16():
    native = precision.cpu_description(NATIVE)
    assert native["model_name"] == "Some Xeon @ 2GHz" and native["bf16_native"] is True
    assert {"avx512_bf16", "amx_bf16"} <= native["flags"]
    assert precision.cpu_description(EMULATED) == {
        "model_name": "AMD EPYC",
        "flags": frozenset({"fpu", "sse2", "avx2", "fma"}),
        "bf16_native": False,
    }
    only_avx512_bf16 = EMULATED.replace("avx2", "avx2 avx512_bf16")
    assert precision.cpu_description(only_avx512_bf16)["bf16_native"] is True
    assert precision.cpu_description("")["model_name"] == "unknown"


def test_bf16_is_refused_where_the_cpu_emulates_it_and_fp32_never(monkeypatch, tmp_path):
    with pytest.raises(ConfigError) as refused:
        precision.refuse_unsupported(model_cfg("bf16"), EMULATED)
    assert "model.cpu_precision: bf16" in str(refused.value) and "AMD EPYC" in str(refused.value)
    assert "set model.cpu_precision: fp32" in str(refused.value)
    precision.refuse_unsupported(model_cfg("bf16"), NATIVE)
    precision.refuse_unsupported(model_cfg("fp32"), EMULATED)
    # with no text given it reads the machine's own /proc/cpuinfo
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EMULATED)
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    with pytest.raises(ConfigError):
        precision.refuse_unsupported(model_cfg("bf16"))
    with pytest.raises(ValueError):
        model_cfg("fp16")


def test_under_bf16_a_linear_layer_is_the_bf16_rounded_product_and_under_fp32_the_fp32_one():
    """By hand in float64: inputs and weights rounded to bf16, the exact product, then rounded once to bf16. The
    runtime's autocast is what a pass through a model that is only read (reference, reward model, decoding) runs in."""
    generator = torch.Generator().manual_seed(0)
    x, layer = torch.randn(8, 64, generator=generator), torch.nn.Linear(64, 16)
    exact32 = x.double() @ layer.weight.double().T + layer.bias.double()
    with in_process(load_config("smoke", ["model.cpu_precision=fp32"]), use_cpu=True) as runtime, runtime.autocast():
        assert not torch.is_autocast_enabled("cpu")
        out32 = layer(x)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), exact32, atol=1e-5)

    bf = lambda t: t.bfloat16().double()  # noqa: E731
    by_hand = (bf(x) @ bf(layer.weight).T + bf(layer.bias)).bfloat16()
    with in_process(load_config("smoke", ["model.cpu_precision=bf16"]), use_cpu=True) as runtime, runtime.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        out16 = layer(x)
    assert not torch.is_autocast_enabled("cpu")  # left as found
    assert out16.dtype == torch.bfloat16
    # within one bf16 rounding step (8 bits of mantissa) of the hand result, and visibly not the fp32 product
    assert torch.allclose(out16.double(), by_hand.double(), rtol=2**-7, atol=1e-3)
    assert (out16.double() - exact32).abs().max() > 1e-4


def test_a_model_the_flows_runtime_prepares_runs_each_forward_pass_at_the_configured_precision():
    """A trained model's forward pass under bf16 is the bf16 product (handed back as fp32); the model handed on after
    training computes in fp32 again."""
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    for cpu_precision in ("bf16", "fp32"):
        layer = torch.nn.Linear(64, 16)
        plain = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            in_bf16 = layer(x).float()
        with in_process(load_config("smoke", [f"model.cpu_precision={cpu_precision}"]), use_cpu=True) as runtime:
            [(prepared, _)] = runtime.prepare((layer, torch.optim.SGD(layer.parameters(), lr=0.1)))
            assert torch.equal(prepared(x), in_bf16 if cpu_precision == "bf16" else plain)
            assert torch.equal(runtime.full_model(prepared)(x), plain)
        assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert not torch.equal(in_bf16, plain)


class Attention(torch.nn.Module):
    """One causal attention head through SDPA, the call a transformers model makes."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_under_bf16_on_a_cpu_attention_runs_as_plain_matmuls_and_under_fp32_as_it_always_did():
    """bf16 on a CPU: SDPA's math backend (the fused kernel's bf16 backward is slow there), in a prepared model's
    forward and in the runtime's autocast, bit for bit what the math backend computes by hand; fp32: untouched, bit for
    bit the default backend's; the model handed on after training carries neither."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.randn(4, 12, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    module = Attention()
    plain = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flash = module(x)
        with sdpa_kernel(SDPBackend.MATH):
            math = module(x)
    assert not torch.equal(math, flash)  # the two backends differ in bf16: the test can tell them apart
    for cpu_precision, expected in (("bf16", math.float()), ("fp32", plain)):
        model = Attention()
        model.load_state_dict(module.state_dict())
        with in_process(load_config("smoke", [f"model.cpu_precision={cpu_precision}"]), use_cpu=True) as runtime:
            [(prepared, _)] = runtime.prepare((model, torch.optim.SGD(model.parameters(), lr=0.1)))
            assert torch.equal(prepared(x).float(), expected), cpu_precision
            with runtime.autocast():
                assert torch.equal(module(x).float(), expected), cpu_precision
            handed_on = runtime.full_model(prepared)
            assert not hasattr(handed_on.forward, "__wrapped__")
            assert torch.equal(handed_on(x), plain)


def test_cpu_ranks_take_the_runs_cpu_precision():
    assert resolve_mixed_precision("auto", use_cpu=True, cpu_precision="bf16") == "bf16"
    assert resolve_mixed_precision("auto", use_cpu=True, cpu_precision="fp32") == "no"
    assert resolve_mixed_precision("bf16", use_cpu=True, cpu_precision="fp32") == "no"  # the GPU setting stays GPU's


def test_a_whole_stage_under_bf16_learns_as_fp32_does():
    """Every optimiser step of the stage under bf16: each prepared forward pass opens and closes its own autocast, so
    no cache of the weights' bf16 copies outlives a step (one autocast around the whole stage with torch's default
    cache kept the first step's weights: the loss did not move, 5.36 -> 5.16 over the smoke SFT's 13 logged steps
    against 2.50 in fp32). Margins: bf16 ends below half its start, within 10% of the start from where fp32 ends."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from components.config import OptimConfig
    from components.training.loop import Objective, train_supervised

    generator = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, 32, (16, 12), generator=generator)  # 16 sequences to memorise
    cfg = OptimConfig(epochs=30, batch_size=8, lr=1e-2, warmup_steps=0, log_every=1)
    objective = Objective(
        encode=lambda rows: (torch.stack(rows), {"rows": torch.tensor(float(len(rows)))}),
        loss=lambda model, batch, mean: (model(input_ids=batch, labels=batch).loss.float(), {}),
    )

    def final_and_first_loss(cpu_precision: str) -> tuple[float, float]:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=12, n_embd=32, n_layer=1, n_head=2))
        with in_process(load_config("smoke", [f"model.cpu_precision={cpu_precision}"]), use_cpu=True) as runtime:
            model, history = train_supervised(
                "toy", model, list(sequences), objective, cfg, 0, harness=Harness(runtime=runtime)
            )
        assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
        return history[-1]["loss"], history[0]["loss"]

    fp32_last, first = final_and_first_loss("fp32")
    bf16_last, bf16_first = final_and_first_loss("bf16")
    assert bf16_first == pytest.approx(first, rel=1e-2)
    assert bf16_last < 0.5 * first, (bf16_last, first)
    assert abs(bf16_last - fp32_last) < 0.1 * first, (bf16_last, fp32_last)


def test_the_main_command_refuses_emulated_bf16_before_any_work(monkeypatch, tmp_path, capsys):
    from flows import pipeline

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EMULATED)
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    with pytest.raises(SystemExit) as stopped:
        pipeline.refuse_a_bad_config(pipeline.parse_args(["--profile", "smoke", "--set", "model.cpu_precision=bf16"]))
    assert stopped.value.code == 2
    assert "model.cpu_precision: bf16 needs a CPU that does bf16 natively" in capsys.readouterr().err
    cpuinfo.write_text(NATIVE)
    pipeline.refuse_a_bad_config(pipeline.parse_args(["--profile", "smoke", "--set", "model.cpu_precision=bf16"]))
