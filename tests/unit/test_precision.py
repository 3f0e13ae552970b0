"""model.cpu_precision: the CPU's bf16 read from /proc/cpuinfo, the refusal where it is emulated, and bf16 autocast
reaching every forward pass of a stage (the matmuls by hand, a stage's compute in the flow, PPO's accelerate ranks)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from components.config import ConfigError, load_config
from components.models import precision
from flows.ppo_worker import resolve_mixed_precision
from flows.stage_runs import reuse_or_compute

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
    """By hand in float64: inputs and weights rounded to bf16, the exact product, then rounded once to bf16."""
    generator = torch.Generator().manual_seed(0)
    x, layer = torch.randn(8, 64, generator=generator), torch.nn.Linear(64, 16)
    exact32 = x.double() @ layer.weight.double().T + layer.bias.double()
    with precision.cpu_autocast(model_cfg("fp32")):
        assert not torch.is_autocast_enabled("cpu")
        out32 = layer(x)
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), exact32, atol=1e-5)

    bf = lambda t: t.bfloat16().double()  # noqa: E731
    by_hand = (bf(x) @ bf(layer.weight).T + bf(layer.bias)).bfloat16()
    with precision.cpu_autocast(model_cfg("bf16")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        out16 = layer(x)
    assert not torch.is_autocast_enabled("cpu")  # left as found
    assert out16.dtype == torch.bfloat16
    # within one bf16 rounding step (8 bits of mantissa) of the hand result, and visibly not the fp32 product
    assert torch.allclose(out16.double(), by_hand.double(), rtol=2**-7, atol=1e-3)
    assert (out16.double() - exact32).abs().max() > 1e-4


def test_a_stage_computed_by_the_flow_runs_under_the_configured_precision(tmp_path):
    seen = []

    def compute():
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return SimpleNamespace(key="")

    for cpu_precision, key in (("bf16", "k1"), ("fp32", "k2")):
        ctx = SimpleNamespace(root=Path(tmp_path), cfg=load_config("smoke", [f"model.cpu_precision={cpu_precision}"]))
        run = SimpleNamespace(set_tags=lambda tags: None)
        reuse_or_compute(
            ctx, run, "sft", "artifacts/models/sft", key, load=None, compute=compute, save=lambda d, r: None
        )
    assert seen[0] == (True, torch.bfloat16) and seen[1][0] is False


def test_ppo_ranks_on_the_cpu_take_the_runs_cpu_precision():
    assert resolve_mixed_precision("auto", use_cpu=True, cpu_precision="bf16") == "bf16"
    assert resolve_mixed_precision("auto", use_cpu=True, cpu_precision="fp32") == "no"
    assert resolve_mixed_precision("bf16", use_cpu=True, cpu_precision="fp32") == "no"  # the GPU setting stays GPU's


def test_a_whole_stage_under_bf16_learns_as_fp32_does():
    """The autocast spans every optimiser step of the stage. A cache of the weights' bf16 copies (torch's default)
    would keep the first step's weights for the whole stage: the loss would not move (measured: 5.36 -> 5.16 over
    the smoke SFT's 13 logged steps against 2.50 in fp32). Margins: bf16 ends below half its start, within 10% of
    the start from where fp32 ends."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from components.config import OptimConfig
    from components.training.loop import train_supervised

    generator = torch.Generator().manual_seed(0)
    sequences = torch.randint(0, 32, (16, 12), generator=generator)  # 16 sequences to memorise
    cfg = OptimConfig(epochs=30, batch_size=8, lr=1e-2, warmup_steps=0, log_every=1)

    def final_and_first_loss(cpu_precision: str) -> tuple[float, float]:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=12, n_embd=32, n_layer=1, n_head=2))

        def loss_fn(rows):
            batch = torch.stack(rows)
            return model(input_ids=batch, labels=batch).loss.float(), {}

        with precision.cpu_autocast(model_cfg(cpu_precision)):
            history = train_supervised("toy", model, list(sequences), loss_fn, cfg, seed=0)
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
