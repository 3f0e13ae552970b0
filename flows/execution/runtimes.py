"""Where a stage runs, decided once from the config: the accelerate profile (``distributed.accelerate_config``), the
process count, the device and the precision, for every stage alike.

A profile of one process on one machine runs each stage in the flow's own process, on a runtime made here
(``in_process``): the GPU where there is one, else the CPU. Any other profile (several processes, several machines,
DeepSpeed) launches each stage under `accelerate launch` (flows/execution/stage_worker.py,
flows/execution/ppo_worker.py), whose ranks
make their runtime with ``make_runtime``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch

from components.config import Config, ConfigError, reward_model_config
from components.models.memory import Placement, StageMemory, gib, shape_of
from components.models.runtime import DeepSpeedRuntime, Runtime
from flows.execution.launcher import AccelerateProfile, ZeroSettings, max_grad_norms, zero_settings

CODE_ROOT = Path(__file__).resolve().parents[2]


def code_path(path: str) -> Path:
    """Infra files (accelerate profiles) are read from the code checkout, wherever the data root is."""
    return Path(path) if Path(path).is_absolute() else CODE_ROOT / path


def run_profile(cfg: Config) -> AccelerateProfile:
    return AccelerateProfile.read(code_path(cfg.distributed.accelerate_config))


def processes(cfg: Config, profile: AccelerateProfile) -> int:
    return cfg.distributed.num_processes or profile.num_processes


def runs_in_process(cfg: Config, profile: AccelerateProfile) -> bool:
    """A profile of one process on one machine needs nothing a launcher sets up (unless told to launch anyway)."""
    return cfg.distributed.launch == "auto" and profile.single_process(cfg.distributed.num_processes)


def flow_device(cfg: Config) -> str:
    """Where the flow's own process puts a model it only reads (a judge model): the GPU unless the profile is a CPU
    one or there is none."""
    return "cpu" if run_profile(cfg).use_cpu or not torch.cuda.is_available() else "cuda"


def resolve_mixed_precision(setting: str, use_cpu: bool, cpu_precision: str = "fp32") -> str:
    if use_cpu:
        # CPU ranks run at the whole run's model.cpu_precision, autocast by accelerate around each forward pass
        return "bf16" if cpu_precision == "bf16" else "no"
    if setting == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return setting


def make_runtime(cfg: Config, use_cpu: bool | None = None) -> Runtime:
    """``use_cpu`` None: as `accelerate launch` said (ACCELERATE_USE_CPU), or the CPU where there is no GPU."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    if use_cpu is None:
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    use_cpu = use_cpu or not torch.cuda.is_available()
    mixed_precision = resolve_mixed_precision(cfg.distributed.mixed_precision, use_cpu, cfg.model.cpu_precision)
    # a collective waits this long for a hung or dead rank, then every rank fails (not forever)
    collective = timedelta(seconds=cfg.timeouts.collective_seconds)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return deepspeed_runtime(mixed_precision, collective)
    handlers = [InitProcessGroupKwargs(timeout=collective)]
    return Runtime(Accelerator(cpu=use_cpu, mixed_precision=mixed_precision, kwargs_handlers=handlers))


def deepspeed_runtime(mixed_precision: str, collective: timedelta) -> DeepSpeedRuntime:
    """A DeepSpeed profile's runtime: accelerate sets up the processes and reads the launched profile's ZeRO settings
    (the flow refused any it would not honour before launching: ``launcher.zero_settings``); the engines (one per
    trained model) are DeepSpeed's own. On a machine without GPUs, DeepSpeed runs on its CPU accelerator
    (``DS_ACCELERATOR=cpu``, gloo), in fp32."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=collective)]
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        mixed_precision = "no"
        # accelerate names no CPU backend for DeepSpeed itself
        handlers = [InitProcessGroupKwargs(backend="gloo", timeout=collective)]
        import deepspeed.ops

        # On CPU ranks DeepSpeed's communication set-up probes a compiler for every op it has (~5 s a rank) and
        # compiles a shared-memory all-reduce (~30 s, once per machine). The stages use neither (ZeRO's collectives
        # run on gloo, the optimiser is torch's AdamW), so it is told that no op can be built.
        deepspeed.ops.__compatible_ops__ = {}
    accelerator = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers)
    plugin = accelerator.state.deepspeed_plugin
    zero = ZeroSettings(
        plugin.zero_stage,
        plugin.offload_optimizer_device == "cpu",
        plugin.offload_param_device == "cpu",
        bool(plugin.zero3_save_16bit_model),
    )
    # models load whole on every rank (the recipe copies them: policy and reference from SFT, critic from the RM)
    # and each engine shards its own; transformers would otherwise build them already sharded under ZeRO-3
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return DeepSpeedRuntime(
        accelerator,
        zero.stage,
        mixed_precision == "bf16",
        zero.offload_optimizer,
        zero.offload_parameters,
        zero.save_16bit,
    )


class MemoryPlanError(ConfigError):
    """A stage planned to need more memory than a rank's device has: refused before any training (exit 2)."""


def placement(cfg: Config, profile: AccelerateProfile) -> Placement:
    """How the run's profile spreads a stage over ranks, for the memory plan."""
    zero = zero_settings(profile, max_grad_norms(cfg)) if profile.deepspeed is not None else None
    on_cpu = profile.use_cpu or not torch.cuda.is_available()
    half = (
        cfg.model.cpu_precision == "bf16"
        if on_cpu
        else resolve_mixed_precision(cfg.distributed.mixed_precision, False) != "no"
    )
    return Placement(
        processes(cfg, profile),
        zero.stage if zero else 0,
        bool(zero and zero.offload_optimizer),
        bool(zero and zero.offload_parameters),
        half,
        cfg.model.gradient_checkpointing,
    )


def rank_memory(cfg: Config, profile: AccelerateProfile) -> tuple[str, int]:
    """(where, bytes) a rank may use: its GPU's memory, or the host's available memory shared by the machine's
    ranks."""
    if profile.use_cpu or not torch.cuda.is_available():
        available = host_available_bytes()
        per_machine = max(1, processes(cfg, profile) // max(1, profile.num_machines))
        return f"the host's available memory / {per_machine} process(es)", available // per_machine
    properties = torch.cuda.get_device_properties(0)
    return f"{properties.name}", properties.total_memory


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{meminfo}: no MemAvailable line")


def plan_memory(cfg: Config, tokenizer) -> list[StageMemory]:
    """Every stage's memory per rank, planned from the model's shape and the config; a stage that cannot fit stops the
    run here, before any training, naming the stage and the numbers."""
    from components.models.builders import policy_config
    from components.training.memory_plan import recipe_memory

    profile = run_profile(cfg)
    shape = shape_of(policy_config(cfg.model, tokenizer), cfg.model.peft)
    reward = reward_model_config(cfg)
    reward_shape = None if cfg.reward.model is None else shape_of(policy_config(reward, tokenizer), reward.peft)
    plan = recipe_memory(cfg, shape, placement(cfg, profile), reward_shape)
    where, capacity = rank_memory(cfg, profile)
    budget = int(capacity * cfg.distributed.memory_fraction)
    too_big = [stage for stage in plan if stage.total > budget]
    if too_big:
        needs = "; ".join(f"{stage.stage} needs {stage.describe()}" for stage in too_big)
        raise MemoryPlanError(
            f"memory plan, per rank: {needs}; a rank may use {gib(budget)} "
            f"({cfg.distributed.memory_fraction:.0%} of {where}, {gib(capacity)}). Set model.gradient_checkpointing: "
            "true, model.peft (adapters), a smaller batch or more gradient_accumulation_steps for the stage, or a "
            "profile with more processes and a DeepSpeed ZeRO stage that shards or offloads"
        )
    return plan


def forget_accelerate_state() -> None:
    """accelerate's state is process-wide: leave none behind, so a later stage may choose its own device and
    precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@contextlib.contextmanager
def in_process(cfg: Config, use_cpu: bool) -> Iterator[Runtime]:
    """The runtime of a stage run in the flow's own process (one process on one machine)."""
    try:
        yield make_runtime(cfg, use_cpu)
    finally:
        forget_accelerate_state()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests = bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory: the GPU's allocated peak on a GPU, else the resident set's peak."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def quiet_transformers() -> None:
    """No progress bars ("Writing model shards") or advice (the attention-mask warning) from transformers in the
    flow's log: its errors only."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def name_deepspeed_device() -> None:
    """Where there is no GPU, tell DeepSpeed its accelerator is the CPU (its own guess, made when transformers or
    accelerate import it, warns on stdout). A process that has a GPU is left to DeepSpeed's detection."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def quiet_libraries() -> None:
    """A rank's process: only this program's own lines reach the task log."""
    quiet_transformers()
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def warnings_quieted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
