"""Memory planned before it is spent: each stage's bytes per rank, estimated from the model's shape and the config
before anything trains, against the memory of the device a rank runs on.

Per rank, a stage holds:
- weights: every model it keeps (trained and frozen), 4 bytes a parameter (fp32; mixed precision keeps fp32 weights),
  a trained model's sharded 1/N under ZeRO-3, and none of it on the device when the profile offloads parameters;
- gradients: 4 bytes per trained parameter (1/N under ZeRO-2 and 3; twice that under DDP, whose buckets hold a copy);
- optimiser state: AdamW's two moments, 8 bytes per trained parameter (1/N under any ZeRO stage, none on the device
  when the profile offloads the optimiser);
- activations of one micro-batch: per transformer block, per token, (34 h + 5 a s) values in 16 bits as
  Korthikanti et al. (2022) count them for a training forward pass (h hidden width, a heads, s sequence length;
  twice the bytes in fp32); under gradient checkpointing only each block's input (h values) and one block's again
  while backward recomputes it; 3 h per token outside the blocks (the embeddings' sum, the final norm); plus the
  logits (the vocabulary per token: logits, their log-softmax and its gradient, in fp32).

And what the rank's process holds before any model (``distributed.memory_framework_gib``). An upper bound rather than a
guess: it counts dropout masks a model without dropout does not keep, and every model a stage holds at once (the
inputs it was handed, the copies it makes of them and its selection snapshots). Its
activations are checked against the bytes autograd actually saves (tests/unit/test_memory.py), and the whole plan
against each stage's measured peak (benchmarks/stage_ladder.py, docs/scaling-out.md).
"""

from __future__ import annotations

from dataclasses import dataclass

FP32, HALF = 4, 2
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads of a model: its parameter count, the adapters' (when adapted), and its sizes."""

    parameters: int  # one copy of the model, adapters excluded
    adapter_parameters: int  # what its adapters add (0 without model.peft)
    layers: int
    hidden: int
    heads: int
    vocabulary: int

    def trainable(self, adapted: bool, head: int = 0) -> int:
        """Parameters a stage trains: the adapters and a new head's, or every one."""
        return self.adapter_parameters + head if adapted else self.parameters + head


@dataclass(frozen=True)
class Placement:
    """How a stage's models are spread over ranks, and where the optimiser and parameters live."""

    processes: int = 1
    zero_stage: int = 0  # 0: no ZeRO (every rank holds everything)
    offload_optimizer: bool = False
    offload_parameters: bool = False
    half_activations: bool = False  # bf16/fp16 autocast: activations in 16 bits
    checkpointing: bool = False


@dataclass(frozen=True)
class StageMemory:
    stage: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    framework: int = 0  # what a rank's process holds before any model: torch, transformers, a GPU's context

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.framework

    def describe(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "framework")
        return f"{gib(self.total)} ({', '.join(f'{part} {gib(getattr(self, part))}' for part in parts)})"


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def activation_bytes(shape: ModelShape, rows: int, sequence: int, place: Placement, logits: bool = True) -> int:
    """A training forward pass of ``rows`` sequences of ``sequence`` tokens: what autograd keeps for backward."""
    tokens = rows * sequence
    width = HALF if place.half_activations else FP32
    one_block = tokens * (34 * shape.hidden + 5 * shape.heads * sequence) * width // HALF  # Korthikanti et al.
    outside = 3 * tokens * shape.hidden * width  # the embeddings' sum, the final norm's input and output
    if place.checkpointing:  # each block's input kept, one block's activations recomputed at a time
        blocks = shape.layers * tokens * shape.hidden * width + one_block + outside
    else:
        blocks = shape.layers * one_block + outside
    head = 3 * tokens * shape.vocabulary * FP32 if logits else 0  # logits, log-softmax, their gradient
    return blocks + head


def trained_memory(parameters: int, trainable: int, place: Placement) -> tuple[int, int, int]:
    """(weights, gradients, optimiser state) of one trained model on one rank."""
    n = place.processes
    weights = 0 if place.offload_parameters else parameters * FP32 // (n if place.zero_stage >= 3 else 1)
    gradients = trainable * FP32 // (n if place.zero_stage >= 2 else 1)
    if n > 1 and not place.zero_stage:  # DDP reduces into buckets of its own: a second copy of every gradient
        gradients *= 2
    optimizer = 0 if place.offload_optimizer else trainable * ADAM_MOMENTS * FP32 // (n if place.zero_stage else 1)
    return weights, gradients, optimizer


@dataclass(frozen=True)
class MicroBatch:
    """What a stage's activations hold at once on this rank: ``rows`` sequences of ``sequence`` tokens, with the
    logits over the vocabulary or without (a scalar head's)."""

    rows: int
    sequence: int
    logits: bool = True


NO_ACTIVATIONS = MicroBatch(0, 0)


def stage_memory(
    stage: str, shape: ModelShape, place: Placement, adapted: bool, trained: int, frozen: int, batch: MicroBatch
) -> StageMemory:
    """``trained`` models (each the policy's size; an adapted one also holds its adapters) and ``frozen`` whole
    copies, beside the activations of a micro-batch."""
    weights = gradients = optimizer = 0
    parameters = shape.parameters + (shape.adapter_parameters if adapted else 0)
    for _ in range(trained):
        w, g, o = trained_memory(parameters, shape.trainable(adapted), place)
        weights, gradients, optimizer = weights + w, gradients + g, optimizer + o
    weights += frozen * shape.parameters * FP32
    return StageMemory(
        stage, weights, gradients, optimizer, activation_bytes(shape, batch.rows, batch.sequence, place, batch.logits)
    )


def micro_rows(batch_size: int, processes: int, accumulation: int) -> int:
    """The largest micro-batch a rank computes at once."""
    share = -(-batch_size // processes)
    return -(-share // accumulation)


def shape_of(config, peft) -> ModelShape:
    """The shape of the policy ``config`` (a transformers config) describes, counted on a model built on the meta
    device (no memory), with the adapters ``peft`` (``model.peft``, or None) would add."""
    import torch
    from transformers import AutoModelForCausalLM

    from components.models import lora

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    adapters = 0
    if peft is not None:
        adapters = lora.parameter_counts(lora.adapted(model, peft))["trainable_parameters"]
    return ModelShape(
        parameters,
        adapters,
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.vocab_size,
    )
