"""Where a stage's models run: the one runtime every stage trains and decodes through.

``Runtime()`` is one CPU process in fp32: every reduction is the identity, so a single-process loop computes exactly
what it computed before there were processes. ``Runtime(accelerator)`` wraps an ``accelerate.Accelerator``: its
device (the GPU where the run has one), its processes (launched by `accelerate launch`; ``sum`` all-reduces over
them, trained models are wrapped in DistributedDataParallel so that backward averages gradients over ranks) and its
mixed precision (each prepared model's forward pass under autocast; ``autocast()`` for the passes through models
that are only read). ``DeepSpeedRuntime`` trains each model as its own DeepSpeed ZeRO engine instead (the
deepspeed-zero2/zero3 profiles). The algorithms never say ``cuda`` or ``cpu``: they ask the runtime to prepare,
backward and step, and to split work between its ranks (``shard``, ``map_chunks``).
"""

from __future__ import annotations

import contextlib
import functools
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from components.models import lora


def math_attention(forward: Callable) -> Callable:
    """``forward`` with its attention in plain matmuls and a softmax (SDPA's math backend), for bf16 autocast on a
    CPU: there the fused flash kernel's bf16 backward runs several times its fp32 one at these head sizes, the math
    path's matmuls run at bf16 speed (docs/recipe.md, "bf16 on a CPU")."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with sdpa_kernel(SDPBackend.MATH):
            return forward(*args, **kwargs)

    return run


class Runtime:
    checkpoints_whole_state = True  # rank 0 can write every trained model's and optimiser's whole state

    def __init__(self, accelerator: Any | None = None, device: torch.device | str | None = None):
        """``device``: one process on that device, without accelerate (a model that is only read, e.g. a judge)."""
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world_size = accelerator.num_processes if accelerator else 1
        self.device = accelerator.device if accelerator else torch.device(device or "cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        """Where this runtime runs, for the record: device, processes, precision, threads."""
        precision = getattr(self.accelerator, "mixed_precision", "no") if self.accelerator is not None else "no"
        return {
            "device": str(self.device),
            "processes": self.world_size,
            "mixed_precision": precision,
            "threads_per_process": torch.get_num_threads(),
        }

    # --- reductions -----------------------------------------------------------------------

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over all ranks (a new tensor; every rank gets the same result)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the entries where ``mask`` is 1, across all ranks' entries."""
        mask = mask.float()
        totals = self.sum(torch.stack([(values * mask).sum(), mask.sum()]))
        return totals[0] / totals[1].clamp(min=1.0)

    def masked_var(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = self.masked_mean(values, mask)
        return self.masked_mean((values - mean) ** 2, mask)

    def mean_of_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (for per-rank means of equally sized shards)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        totals = self.sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device))
        return {k: (totals[i] / self.world_size).item() for i, k in enumerate(keys)}

    def gather_objects(self, value: Any) -> list[Any]:
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    # --- dividing the work ----------------------------------------------------------------

    def shard(self, items: list) -> list:
        """This rank's share of a list every rank holds in the same order."""
        return items[self.rank :: self.world_size]

    def map_chunks(self, items: Sequence, size: int, fn: Callable[[int, Sequence], list]) -> list:
        """``fn(chunk_index, chunk)`` over ``items`` cut into chunks of ``size``, one result per item: chunk i runs on
        rank i mod N, and every rank gets every result, in the items' order. A chunk's result depends on its index
        and its items only (a decoding seeds by the index), so it is the same whatever the number of processes."""
        chunks = [(index, items[start : start + size]) for index, start in enumerate(range(0, len(items), size))]
        mine = {index: list(fn(index, chunk)) for index, chunk in chunks[self.rank :: self.world_size]}
        results: dict[int, list] = {}
        for part in self.gather_objects(mine):
            results.update(part)
        return [result for index in sorted(results) for result in results[index]]

    def local(self) -> Runtime:
        """This rank alone, on its device and at its precision: for a piece of work one rank does whole (one of
        several decodings that ``map_chunks`` hands out), with the result it would have in one process."""
        return LocalRuntime(self)

    def token_share(self, mask: torch.Tensor):
        """A token mean whose per-rank (and per-micro-batch) parts add up to the mean over every rank's ``mask``."""
        count = self.sum(mask.float().sum())

        def share(values: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
            return (values * part_mask.float()).sum() / count.clamp(min=1.0)

        return share

    def sequence_share(self, mask: torch.Tensor):
        """A mean over sequences of each sequence's own token mean (GRPO's loss), split like ``token_share``."""
        count = self.sum(mask.new_tensor(float(mask.shape[0])))

        def share(values: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
            part_mask = part_mask.float()
            per_sequence = (values * part_mask).sum(-1) / part_mask.sum(-1).clamp(min=1.0)
            return per_sequence.sum() / count.clamp(min=1.0)

        return share

    def constant_share(self, mask: torch.Tensor, max_length: int):
        """A token sum over a constant, rows x ``max_length`` (the response length limit), whatever the responses'
        lengths (Dr. GRPO's loss: no response's tokens weigh more for its being short), split like ``token_share``."""
        count = self.sum(mask.new_tensor(float(mask.shape[0] * max_length)))

        def share(values: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
            return (values * part_mask.float()).sum() / count.clamp(min=1.0)

        return share

    # --- models ---------------------------------------------------------------------------

    def prepare(
        self, *pairs: tuple[torch.nn.Module, torch.optim.Optimizer], max_grad_norm: float | None = None
    ) -> list[tuple[Any, Any]]:
        """(model, optimiser) pairs -> the same, ready to train: on the rank's device, DDP across processes, each
        forward pass at the mixed precision; optimisers device-aware. ``max_grad_norm`` is the clipping norm of
        ``step`` (an engine that clips inside its own step needs it now)."""
        if self.accelerator is None:
            return list(pairs)
        prepared = self.accelerator.prepare(*(item for pair in pairs for item in pair))
        if self.cpu_bf16:
            for model in prepared[::2]:  # the module DDP wraps: sampling and scoring call it directly
                inner = self.unwrap(model)
                inner.forward = math_attention(inner.forward)  # full_model drops it with accelerate's autocast
        return list(zip(prepared[::2], prepared[1::2]))

    @property
    def cpu_bf16(self) -> bool:
        """bf16 autocast on a CPU."""
        return self.device.type == "cpu" and getattr(self.accelerator, "mixed_precision", "no") == "bf16"

    def to_device(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model) if self.accelerator else model

    def gathered(self, model: torch.nn.Module):
        """A block in which ``model`` (unwrapped) holds all its parameters: they are never sharded here."""
        return contextlib.nullcontext()

    def full_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The trained model as a plain module with every parameter in place (for saving, digests and the next
        stage): no DDP wrapper, no mixed-precision forward of accelerate's, adapters merged into the weights."""
        if self.accelerator is not None:
            model = self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        return lora.merged(model)

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """Backward of ``loss`` into the gradients of ``model`` (the prepared one it came from)."""
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def autocast(self):
        """The mixed precision the prepared (trained) models run in, for passes through models that were not
        prepared (references, reward models, decoding). Never around a training step: autocast keeps the weights'
        low-precision copies until it exits, which would hide the optimiser's steps."""
        if self.accelerator is None:
            return contextlib.nullcontext()
        if self.cpu_bf16:
            return _both(self.accelerator.autocast(), sdpa_kernel(SDPBackend.MATH))
        return self.accelerator.autocast()

    def backward_share(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """Backward of this rank's share of a global mean: DDP averages gradients over ranks, so scale back up."""
        self.backward(loss * self.world_size, model)

    def accumulating(self, model: torch.nn.Module, synced: bool):
        """The last micro-batch of a step all-reduces the gradients; the ones before accumulate locally."""
        return contextlib.nullcontext() if synced else self.no_sync(model)

    def no_sync(self, model: torch.nn.Module):
        """Accumulate this backward's gradients locally; the next synced backward all-reduces them."""
        if self.accelerator is None or not self.distributed:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
        """Clip the accumulated gradients to ``max_grad_norm``, take the optimiser step, clear the gradients; returns
        the gradient norm before clipping."""
        if self.accelerator is None:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        else:
            norm = self.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)


class LocalRuntime(Runtime):
    def __init__(self, parent: Runtime):
        super().__init__(device=parent.device)
        self.parent = parent

    def autocast(self):
        return self.parent.autocast()


SINGLE = Runtime()  # one CPU process, fp32: the runtime of a stage nobody placed


ENGINE_TAG = "state"  # the one tag each engine's checkpoint directory holds


def deepspeed_checkpoint_globals() -> list:
    """What DeepSpeed's ZeRO-2 and ZeRO-3 optimiser checkpoints hold besides tensors and plain containers: all the
    weights-only unpickler may build from them (plain state objects; nothing that runs code)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str, map_location=None):
    """DeepSpeed's checkpoint engine's ``load``, without arbitrary pickle."""
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path}: refused, it holds more than tensors and DeepSpeed's state classes ({error})"
        ) from None


class DeepSpeedRuntime(Runtime):
    """A runtime whose trained models are DeepSpeed ZeRO engines, one engine per model (PPO trains two:
    accelerate's DeepSpeed integration prepares one). ZeRO-2 shards the optimiser state and the gradients; ZeRO-3 the
    parameters too, so a pass outside the engine's own forward (generation, saving) first gathers them
    (``gathered``).

    The engines accumulate gradients over every backward until ``step`` (DeepSpeed's unmanaged gradient
    accumulation), so the loop's micro-batches and PPO-ptx pass need no counting; gradients are averaged over ranks
    as under DDP, and clipped to the loop's ``max_grad_norm`` inside the step.
    """

    checkpoints_whole_state = False  # the optimiser state (ZeRO-3: the parameters too) lies in every rank's shard:
    # each engine writes its own checkpoint (save_engines), which the PPO checkpoint then holds

    def __init__(
        self,
        accelerator: Any,
        zero_stage: int,
        bf16: bool,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        save_16bit: bool = False,
    ):
        """``offload_optimizer``: AdamW's moments and its step on the host (ZeRO-Offload); ``offload_parameters``:
        ZeRO-3's parameter shards on the host; ``save_16bit``: a trained model is handed on with the 16-bit weights
        the ranks compute with, not the fp32 master weights (the profile's zero3_save_16bit_model)."""
        super().__init__(accelerator)
        self.zero_stage, self.bf16 = zero_stage, bf16
        self.offload_optimizer, self.offload_parameters, self.save_16bit = (
            offload_optimizer,
            offload_parameters,
            save_16bit,
        )
        self.engines: list[Any] = []

    def describe(self) -> dict[str, Any]:
        engine = self.engines[0] if self.engines else None
        return {
            **super().describe(),
            "mixed_precision": "bf16" if self.bf16 else "no",
            "zero_stage": self.zero_stage,
            # what the engines run with, read back from them
            "offload_optimizer": bool(engine.zero_offload_optimizer()) if engine else self.offload_optimizer,
            "offload_parameters": bool(engine.zero_offload_param()) if engine else self.offload_parameters,
        }

    def engine_config(self, max_grad_norm: float) -> dict:
        zero: dict[str, Any] = {"stage": self.zero_stage}
        pinned = self.device.type == "cuda"
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pinned}
        if self.offload_parameters:
            zero["offload_param"] = {"device": "cpu", "pin_memory": pinned}
        return {
            "train_micro_batch_size_per_gpu": 1,  # batches are the loop's own; DeepSpeed only checks the arithmetic
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # backward accumulates, step reduces and updates
            "gradient_clipping": max_grad_norm,
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,  # the stage's own torch AdamW steps the offloaded moments
            "bf16": {"enabled": self.bf16},
            "steps_per_print": 2**31 - 1,  # no progress lines of DeepSpeed's own
        }

    def prepare(self, *pairs, max_grad_norm: float | None = None):
        import deepspeed

        if max_grad_norm is None:
            raise ValueError("a DeepSpeed engine clips inside its own step: prepare it with the stage's max_grad_norm")
        prepared = []
        for model, optimizer in pairs:
            engine, engine_optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=self.engine_config(max_grad_norm)
            )
            prepared.append((engine, engine_optimizer))
        self.engines = [engine for engine, _ in prepared]
        return prepared

    def held(self) -> list[dict[str, int]]:
        """Per engine: its parameter count, and how many parameter and fp32 optimiser elements this rank holds
        (ZeRO-2: every parameter, 1/N of the optimiser state; ZeRO-3: 1/N of both, give or take padding)."""
        held = []
        for engine in self.engines:
            parameters = list(engine.module.parameters())
            if self.zero_stage >= 3:
                total = sum(p.ds_numel for p in parameters)
                parameters_held = sum(p.ds_tensor.numel() for p in parameters)
                optimizer_flat = engine.optimizer.fp32_partitioned_groups_flat
            else:
                total = parameters_held = sum(p.numel() for p in parameters)
                optimizer_flat = engine.optimizer.single_partition_of_fp32_groups
            held.append(
                {
                    "parameters": total,
                    "parameters_held": parameters_held,
                    "optimizer_elements_held": sum(flat.numel() for flat in optimizer_flat),
                }
            )
        return held

    def unwrap(self, model):
        return getattr(model, "module", model)

    def gathered(self, model):
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()))

    def full_model(self, model):
        """The trained model whole, adapters merged (a collective: every rank calls it): ZeRO-3 gathers the shards;
        the weights are the fp32 master copies the optimiser steps, or with ``save_16bit`` the 16-bit ones the ranks
        compute with (fp32 and 16-bit are one and the same without mixed precision)."""
        unwrapped = self.unwrap(model)
        masters = {} if self.save_16bit else self.master_weights(unwrapped)
        if self.zero_stage < 3 and not masters:
            return lora.merged(unwrapped)
        with self.gathered(unwrapped):
            state = lora.merged_state_dict(unwrapped, masters)
        with torch.random.fork_rng(devices=[]):  # a fresh model's initialisation draws nothing from the caller's stream
            rebuilt = rebuilt_like(unwrapped)
        rebuilt.load_state_dict(state)
        return rebuilt

    def master_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The fp32 master copy of every parameter the optimiser steps, whole (a collective under ZeRO-3)."""
        from deepspeed.utils import safe_get_full_fp32_param

        masters = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and (master := safe_get_full_fp32_param(parameter)) is not None:
                masters[name] = master.detach().to(parameter.dtype if not self.bf16 else torch.float32).cpu()
        return masters

    def save_engines(self, engines: dict[str, Any], directory: Path) -> None:
        """Every rank writes its shards of each engine (model, optimiser) under ``directory/<name>``."""
        for name, engine in engines.items():
            engine.save_checkpoint(str(directory / name), tag=ENGINE_TAG)
        self.barrier()  # every shard is on disk before rank 0 moves the directory

    def load_engines(self, engines: dict[str, Any], directory: Path) -> None:
        """Each engine's checkpoint, read by torch's weights-only unpickler (DeepSpeed's own reader would run any
        pickle): a file holding anything but tensors, containers and DeepSpeed's few state classes is refused."""
        for name, engine in engines.items():
            engine.checkpoint_engine.load = load_weights_only
            loaded, _ = engine.load_checkpoint(str(directory / name), tag=ENGINE_TAG)
            if loaded is None:
                raise FileNotFoundError(f"{directory / name}: no DeepSpeed checkpoint of the {name} to resume")

    def backward(self, loss, model):
        model.backward(loss, scale_wrt_gas=False)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def no_sync(self, model):
        return contextlib.nullcontext()  # every backward only accumulates until step

    def step(self, model, optimizer, max_grad_norm):
        model.step()  # reduce (averaged over ranks), clip to the engine's gradient_clipping, update, zero
        norm = model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")


def rebuilt_like(module: torch.nn.Module) -> torch.nn.Module:
    """A fresh module of ``module``'s architecture without adapters: a model from its config, or a wrapper
    (``TokenScores``, ``TokenValues``) around a fresh copy of the one model it wraps."""
    if hasattr(module, "config"):
        return type(module)(module.config)
    ((_, inner),) = module.named_children()
    return type(module)(rebuilt_like(inner))


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield
