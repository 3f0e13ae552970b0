"""Where each training stage's time goes: torch's profiler around every stage of the recipe the benchmarks train.

    python benchmarks/stage_profile.py [--profile default] [--scale 0.2] [--set key=value ...] [--out PATH]

Each training stage (sft, comparisons, reward, chosen, top_ranked, combined, dpo, ppo with its selection; the
stages benchmarks/recipe_stages.py trains, as the flow does) runs under ``torch.profiler`` (CPU activities, no
shapes, no stacks), at ``--scale`` of its work: its epochs, PPO's iterations, the comparison prompts and the
selection slice scaled, the shapes and batches unchanged (the profiler keeps every operator call: the whole default
recipe's would not fit in 24 GB). Every operator's self time is filed under

    phase   optimiser (inside ``Optimizer.step``/``zero_grad``), backward (inside the autograd engine), generation
            (inside ``components.models.generation.generate``: the sampling loop), else forward
    kind    matmul, attention, gelu, layer norm, softmax / cross-entropy, embedding, copies and casts, other

and ``python`` is the stage's wall time less every top-level operator's time: the interpreter, the loops and
the data handling between operators (the profiler's own cost included: its wall time runs above the unprofiled
one, and the work is scaled: a share, not a second, is what carries over to the unscaled run).

Writes benchmarks/results/stage_profile.json (cpu, torch threads, profile, overrides, stages[name] = {seconds,
phases: {phase: {kind: seconds}}, python}) and prints the table docs/recipe.md records.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from components.config import load_config
from components.io import write_json
from components.models import generation
from components.models.precision import cpu_description
from components.offline import stay_offline

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "stage_profile.json"
GENERATION = "generation"
BASELINES = ("chosen", "top_ranked", "combined", "dpo")

from benchmarks.rlhf_vs_sl import train_everything  # noqa: E402
from flows.execution import runtimes  # noqa: E402

KINDS = (  # the first whose words an operator's name holds
    ("attention", ("scaled_dot_product", "flash_attention", "baddbmm", "bmm")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear")),
    ("gelu", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("embedding", ("embedding",)),
    ("copies and casts", ("copy_", "_to_copy", "aten::to", "clone", "contiguous", "aten::cat", "index", "gather")),
)


def kind_of(name: str) -> str:
    return next((kind for kind, words in KINDS if any(word in name for word in words)), "other")


def phase_of(event) -> str:
    """The phase an operator ran in: the nearest enclosing annotation that names one."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimiser"
        if parent.name == GENERATION:
            return "generation"
        if parent.name.startswith("autograd::engine"):
            return "backward"
        parent = parent.cpu_parent
    return "forward"


def is_annotation(event) -> bool:
    return event.name.startswith(("Optimizer.", "autograd::engine")) or event.name == GENERATION


def is_top_level(event) -> bool:
    """An operator no other operator called (annotations aside)."""
    parent = event.cpu_parent
    while parent is not None:
        if not is_annotation(parent):
            return False
        parent = parent.cpu_parent
    return True


def breakdown(events, wall: float) -> dict:
    """Self seconds by phase and kind, and the wall time no top-level operator accounts for."""
    phases: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    top_level = 0.0
    for event in events:
        if is_annotation(event):
            continue  # their operators are counted themselves
        phases[phase_of(event)][kind_of(event.name)] += event.self_cpu_time_total / 1e6
        if is_top_level(event):
            top_level += event.cpu_time_total / 1e6
    return {
        "seconds": wall,
        "phases": {phase: dict(kinds) for phase, kinds in phases.items()},
        "python": max(0.0, wall - top_level),
    }


class ProfilingStopwatch:
    """benchmarks/rlhf_vs_sl.py's Stopwatch, each stage under torch's profiler."""

    def __init__(self):
        self.stages: dict[str, dict] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            started = time.perf_counter()
            result = fn(*args, **kwargs)
            wall = time.perf_counter() - started
        self.stages[stage] = breakdown(profiler.events(), wall)
        print(f"[{stage}] {wall:.1f} s profiled", flush=True)
        return result


def annotated_generation():
    """``generate`` inside a profiler annotation, wherever the stages call it from."""
    plain = generation.generate

    def generate(*args, **kwargs):
        with record_function(GENERATION):
            return plain(*args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "generate", None) is plain:
            module.generate = generate


def scaled(cfg, scale: float) -> list[str]:
    """Overrides that do ``scale`` of each training stage's work at the same shapes."""
    epochs = {
        "sft.epochs": cfg.sft.epochs,
        "reward.epochs": cfg.reward.epochs,
        **{f"baselines.{name}.epochs": getattr(cfg.baselines, name).epochs for name in BASELINES},
    }
    counts = {
        "ppo.iterations": cfg.ppo.iterations,
        "comparisons.n_prompts": cfg.comparisons.n_prompts,
        "selection.prompts": cfg.selection.prompts,
    }
    return [f"{key}={round(value * scale, 6)}" for key, value in epochs.items()] + [
        f"{key}={max(1, round(value * scale))}" for key, value in counts.items()
    ]


def percent(wall: float, seconds: float) -> str:
    return f"{100 * seconds / wall:.0f}%"


def table(stages: dict[str, dict]) -> str:
    kinds = [kind for kind, _ in KINDS] + ["other"]
    head = ["stage", "s profiled", "optimiser", "generation", "python", *kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, stage in stages.items():
        wall, phases = stage["seconds"], stage["phases"]
        training = {k: sum(p.get(k, 0.0) for n, p in phases.items() if n in ("forward", "backward")) for k in kinds}
        share = partial(percent, wall)
        row = [
            name,
            f"{wall:.1f}",
            share(sum(phases.get("optimiser", {}).values())),
            share(sum(phases.get("generation", {}).values())),
            share(stage["python"]),
            *(share(training[k]) for k in kinds),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--scale", type=float, default=0.2, help="the share of each stage's work profiled")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    overrides = [*scaled(load_config(args.profile, args.overrides), args.scale), *args.overrides]
    cfg = load_config(args.profile, overrides)
    cpu = cpu_description()
    annotated_generation()
    watch = ProfilingStopwatch()
    with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
        train_everything(cfg, watch, runtime)
    write_json(
        args.out,
        {
            "cpu": cpu["model_name"],
            "bf16_native": cpu["bf16_native"],
            "torch_threads": torch.get_num_threads(),
            "profile": args.profile,
            "scale": args.scale,
            "overrides": overrides,
            "stages": watch.stages,
        },
    )
    print(table(watch.stages))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
