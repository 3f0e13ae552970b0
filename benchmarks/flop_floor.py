"""The FLOP floor of every recipe stage: how far each stage's wall time is from what this CPU's matmuls allow.

    python benchmarks/flop_floor.py [--profile default] [--set key=value ...] [--out PATH]

Runs benchmarks/rlhf_vs_sl.py's stages (its ``train_everything``: sft, comparisons, reward, chosen, top_ranked,
combined, dpo, ppo with its snapshot selection) and its evaluation, and for each:

    FLOPs        counted by ``FlopCounter`` on every model call the stage makes: 2·N per forward-only token and
                 6·N per trained token (forward + backward), plus attention, 4·n_layer·context·d_model per token
                 (QK^T and attention·V; x3 when trained). N = the weights of every Linear and GPT-2 Conv1D, the LM,
                 value and reward heads included, embedding lookups not. Tokens are the real ones (the attention
                 mask's, not padding); with a KV cache each call counts only its new tokens, against the whole
                 context. A call is trained when grad is enabled and the model has a parameter that needs it.
    throughput   torch.matmul of [batch x sequence, d_model] x [d_model, 4·d_model] at the stage's configured
                 batch size: GFLOP/s, the median of 7 timings after warm-up, in fp32 and, where the CPU does bf16
                 natively (/proc/cpuinfo flag avx512_bf16 or amx_bf16), in bf16
    seconds      perf_counter around the stage call (counting hooks included)
    floor        FLOPs / throughput (fp32; bf16 too where native); ratio = seconds / fp32 floor

Writes benchmarks/results/flop_floor.json: cpu, bf16_native, torch_threads, profile, overrides, d_model,
sequence_tokens, throughput (GFLOP/s by dtype and matmul rows), stages[i] (stage, model_calls, trained_tokens,
forward_tokens, gflop, seconds, matmul_rows, gflops_fp32, floor_seconds, ratio, and the bf16 figures) and total.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from transformers import AutoConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from components.config import Config, load_config
from components.io import write_json
from components.models.precision import cpu_description
from components.offline import stay_offline
from components.training import recipe

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "flop_floor.json"

from benchmarks.rlhf_vs_sl import evaluate_trained, train_everything  # noqa: E402
from flows.execution import runtimes  # noqa: E402

MATMUL_MODULES = (torch.nn.Linear, Conv1D)
REPEATS = 7


# --- counting ------------------------------------------------------------------------------


def matmul_parameters(model: torch.nn.Module) -> int:
    """N: the weights every token is multiplied by: each Linear and GPT-2 Conv1D, heads included (a head tied to
    the embedding counts once, as the matmul it is), embedding lookups and biases not."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, MATMUL_MODULES))


@dataclass
class Call:
    """What one model call computes on: ``tokens`` real ones of ``rows`` x ``new`` input positions, each attending
    over ``context`` positions (past + new)."""

    tokens: int
    rows: int
    new: int
    context: int


def call_shape(args: tuple, kwargs: dict) -> Call:
    """Read after the call (in the forward hook). The real tokens are the ones the attention mask marks; with a KV
    cache the mask spans the whole context, so only its last ``new`` columns belong to this call. Generation drops a
    mask of all ones: then every token is real and the context is what the cache, updated by this call, holds."""
    inputs = kwargs.get("input_ids", args[0] if args else None)
    shape = inputs.shape if inputs is not None else kwargs["inputs_embeds"].shape[:-1]
    rows, new = math.prod(shape[:-1]), shape[-1]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return Call(int(mask[:, -new:].sum()), rows, new, mask.shape[-1])
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    context = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
    return Call(rows * new, rows, new, max(context, new))


class FlopCounter:
    """Counts the FLOPs of every model call made while open (``with FlopCounter() as counter: ...``).

    The models are built inside the stages (``build_policy``, ``frozen_copy``, deep copies), so the counter listens
    to every module through torch's global hooks rather than to given instances. A call counts at its outermost
    ``PreTrainedModel`` (GPT2LMHeadModel's own call of its GPT2Model is not counted twice); a Linear or Conv1D
    called outside any model (the scalar head read on ``base_model``'s hidden states, ``token_scores`` and
    ``TokenValues``) adds its own rows' FLOPs and no tokens. Global pre-hooks do not see keyword arguments, so the
    pre-hook only tracks nesting and the count happens in the forward hook, which does."""

    def __init__(self):
        self.model_calls = 0
        self.trained_tokens = 0
        self.forward_tokens = 0
        self.flops = 0
        self._open: list[torch.nn.Module] = []  # the model calls under way, outermost first
        self._handles: list = []
        self._weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __enter__(self) -> FlopCounter:
        self._handles = [
            register_module_forward_pre_hook(self._before),
            register_module_forward_hook(self._after, with_kwargs=True, always_call=True),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._open = [], []

    def n(self, model: torch.nn.Module) -> int:
        if model not in self._weights:
            self._weights[model] = matmul_parameters(model)
        return self._weights[model]

    def _before(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, PreTrainedModel):
            self._open.append(module)

    def _after(self, module: torch.nn.Module, args: tuple, *rest) -> None:
        # rest is (kwargs, output), or (output,) when the forward raised
        if isinstance(module, PreTrainedModel):
            self._open.pop()
            if not self._open and len(rest) == 2:
                self._count_model_call(module, args, rest[0])
        elif isinstance(module, MATMUL_MODULES) and not self._open and len(rest) == 2:
            x = args[0] if args else rest[0]["input"]
            trained = torch.is_grad_enabled() and module.weight.requires_grad
            self.flops += (3 if trained else 1) * 2 * module.weight.numel() * (x.numel() // x.shape[-1])

    def _count_model_call(self, model: PreTrainedModel, args: tuple, kwargs: dict) -> None:
        call = call_shape(args, kwargs)
        config = model.config
        attention = 4 * config.num_hidden_layers * call.context * config.hidden_size  # per token: QK^T, attention·V
        flops = (2 * self.n(model) + attention) * call.tokens
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        keep = kwargs.get("logits_to_keep")
        if isinstance(head, MATMUL_MODULES) and isinstance(keep, int) and keep > 0:
            # generation asks for the last position's logits only: the LM head runs on rows x keep, not every token
            flops += 2 * head.weight.numel() * (call.rows * min(keep, call.new) - call.tokens)
        trained = torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())
        self.model_calls += 1
        if trained:
            self.trained_tokens += call.tokens
            self.flops += 3 * flops
        else:
            self.forward_tokens += call.tokens
            self.flops += flops

    def as_dict(self) -> dict:
        return {
            "model_calls": self.model_calls,
            "trained_tokens": self.trained_tokens,
            "forward_tokens": self.forward_tokens,
            "gflop": self.flops / 1e9,
        }


# --- the machine ----------------------------------------------------------------------------


def matmul_gflops(
    rows: int, width: int, dtype: torch.dtype, repeats: int = REPEATS, min_seconds: float = 0.05
) -> float:
    """GFLOP/s of torch.matmul [rows, width] x [width, 4·width] (an MLP's up-projection) in ``dtype``: the median of
    ``repeats`` timings, each of enough matmuls to last ``min_seconds``, after warm-up."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=generator).to(dtype)
    b = torch.randn(width, 4 * width, generator=generator).to(dtype)
    started = time.perf_counter()
    for _ in range(3):
        torch.matmul(a, b)
    inner = max(1, math.ceil(min_seconds / ((time.perf_counter() - started) / 3)))
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        timings.append((time.perf_counter() - started) / inner)
    return 2 * rows * width * 4 * width / statistics.median(timings) / 1e9


def model_width(cfg: Config) -> int:
    if cfg.model.source == "local":
        return AutoConfig.from_pretrained(cfg.model.local_dir, local_files_only=True).hidden_size
    return cfg.model.n_embd


def stage_batches(cfg: Config) -> dict[str, int]:
    """Each stage's configured batch (examples, or prompts per generation batch; PPO: its update's micro-batch)."""
    return {
        "sft": cfg.sft.batch_size,
        "comparisons": cfg.comparisons.batch_size,
        "reward": cfg.reward.batch_size,
        **{name: getattr(cfg.baselines, name).batch_size for name in recipe.SUPERVISED_BASELINES},
        "ppo": cfg.ppo.minibatch_size // cfg.ppo.gradient_accumulation_steps,
        "evaluation": cfg.evaluation.batch_size,
    }


# --- the stages -----------------------------------------------------------------------------


class CountingStopwatch:
    """benchmarks/rlhf_vs_sl.py's Stopwatch, counting each stage's FLOPs as well."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        with FlopCounter() as counter:
            started = time.perf_counter()
            result = fn(*args, **kwargs)
            seconds = time.perf_counter() - started
        self.stages[stage] = {**counter.as_dict(), "seconds": seconds}
        print(f"[{stage}] {seconds:.1f} s, {counter.flops / 1e9:.2f} GFLOP", flush=True)
        return result


def run_stages(cfg: Config, watch: CountingStopwatch) -> None:
    """benchmarks/rlhf_vs_sl.py's stages (``train_everything``), then its evaluation."""
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        watch("evaluation", evaluate_trained, cfg, train_everything(cfg, watch, runtime))


# --- the floor ------------------------------------------------------------------------------


def floor_rows(stages: dict[str, dict], batches: dict[str, int], sequence: int, throughput: dict) -> list[dict]:
    """Each stage's counts with its matmul rows, throughput, floor and ratio."""
    out = []
    for stage, counted in stages.items():
        rows = batches[stage] * sequence
        row = {"stage": stage, **counted, "matmul_rows": rows}
        for dtype, gflops in throughput.items():
            suffix = "" if dtype == "fp32" else f"_{dtype}"
            row[f"gflops{suffix or '_fp32'}"] = gflops[rows]
            row[f"floor_seconds{suffix}"] = counted["gflop"] / gflops[rows]
            row[f"ratio{suffix}"] = counted["seconds"] / row[f"floor_seconds{suffix}"] if counted["gflop"] else None
        out.append(row)
    return out


def total_row(rows: list[dict], dtypes: list[str]) -> dict:
    total = {"stage": "total"}
    for key in ("model_calls", "trained_tokens", "forward_tokens", "gflop", "seconds"):
        total[key] = sum(row[key] for row in rows)
    for dtype in dtypes:
        suffix = "" if dtype == "fp32" else f"_{dtype}"
        total[f"floor_seconds{suffix}"] = sum(row[f"floor_seconds{suffix}"] for row in rows)
        total[f"ratio{suffix}"] = total["seconds"] / total[f"floor_seconds{suffix}"] if total["gflop"] else None
    return total


def format_table(rows: list[dict], bf16: bool) -> str:
    header = "stage       | trained tok | forward tok |    GFLOP |  seconds |  floor s |    ratio"
    header += " | bf16 floor s" if bf16 else ""
    lines = [header]
    for row in rows:
        ratio = f"{row['ratio']:8.1f}" if row["ratio"] is not None else f"{'-':>8}"
        line = (
            f"{row['stage']:<11} | {row['trained_tokens']:>11} | {row['forward_tokens']:>11} | {row['gflop']:8.2f} | "
            f"{row['seconds']:8.2f} | {row['floor_seconds']:8.3f} | {ratio}"
        )
        lines.append(line + (f" | {row['floor_seconds_bf16']:12.3f}" if bf16 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    cfg = load_config(args.profile, args.overrides)
    cpu = cpu_description()

    watch = CountingStopwatch()
    run_stages(cfg, watch)

    width, sequence = model_width(cfg), cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    batches = stage_batches(cfg)
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if cpu["bf16_native"] else {})}
    shapes = sorted({batch * sequence for batch in batches.values()})
    throughput = {name: {rows: matmul_gflops(rows, width, dtype) for rows in shapes} for name, dtype in dtypes.items()}
    rows = floor_rows(watch.stages, batches, sequence, throughput)
    total = total_row(rows, list(dtypes))

    result = {
        "cpu": cpu["model_name"],
        "bf16_native": cpu["bf16_native"],
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "profile": cfg.profile,
        "overrides": args.overrides,
        "d_model": width,
        "sequence_tokens": sequence,
        "throughput": {
            name: [{"matmul_rows": rows_, "gflops": gflops} for rows_, gflops in by_rows.items()]
            for name, by_rows in throughput.items()
        },
        "stages": rows,
        "total": total,
    }
    print(
        f"\n{cpu['model_name']}, {torch.get_num_threads()} torch thread(s); matmul [rows, {width}] x "
        f"[{width}, {4 * width}] GFLOP/s: "
        + "; ".join(
            f"{name} " + ", ".join(f"{r} rows {g:.1f}" for r, g in by_rows.items())
            for name, by_rows in throughput.items()
        )
    )
    print(format_table([*rows, total], cpu["bf16_native"]))
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
