"""The precision of the models' matmuls on the CPU (``model.cpu_precision``): fp32, or bf16 autocast.

Under bf16 autocast the weights, the optimiser state and the losses stay fp32; matmuls and attention run in bf16.
That pays only where the CPU does bf16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag); elsewhere bf16 is
emulated and slower than fp32, so a run asking for it there is refused before it starts. The stages' runtime applies
it (flows/execution/runtimes.py: accelerate's autocast around each prepared model's forward pass).
"""

from __future__ import annotations

from pathlib import Path

from components.config import ConfigError, ModelConfig

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, its flags, and whether it does bf16 natively; from /proc/cpuinfo's text."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text() if CPUINFO.is_file() else ""
    fields = {}
    for line in cpuinfo.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip() not in fields:  # the first processor's entry speaks for all
            fields[name.strip()] = value.strip()
    flags = frozenset(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name", "unknown"),
        "flags": flags,
        "bf16_native": any(flag in flags for flag in BF16_FLAGS),
    }


def refuse_unsupported(model_cfg: ModelConfig, cpuinfo: str | None = None) -> None:
    """``model.cpu_precision: bf16`` on a CPU without native bf16 is refused, naming the key and the CPU."""
    if model_cfg.cpu_precision != "bf16":
        return
    cpu = cpu_description(cpuinfo)
    if not cpu["bf16_native"]:
        raise ConfigError(
            f"model.cpu_precision: bf16 needs a CPU that does bf16 natively (flag {' or '.join(BF16_FLAGS)}); "
            f"this one ({cpu['model_name']}) has neither, and emulated bf16 is slower than fp32: "
            "set model.cpu_precision: fp32"
        )
