"""The recipe's stages as the benchmarks run them: in the benchmark's own process, on the runtime the flow gives the
profile, each timed (and its peak memory read) by a stopwatch. ``BenchmarkStages`` is ``recipe.train_all``'s
``Stages``, ``BenchmarkRoundStages`` ``recipe_rounds``' ``RoundStages``; every benchmark that trains the recipe, or
some of its stages, goes through them, so a benchmark measures what ships.
"""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from components.config import Config
from components.data.files import DEMONSTRATIONS, PREFERENCES
from components.evaluation.judges import gold_judge
from components.evaluation.report import judge_monitor, reward_model_gold_accuracy
from components.models.runtime import Runtime
from components.task.gold_judge import gold_score
from components.task.review_task import ReviewTask
from components.training import recipe, recipe_rounds
from components.training.loop import Harness, Snapshots
from components.training.recipe_rounds import Tracks
from components.training.rounds import RoundLabels, labeller_stream, next_group


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or its high-water mark (``VmHWM``), from Linux's /proc; 0
    where there is none."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def release_free_memory() -> None:
    """Hands memory the allocator holds but nothing uses back to the system and restarts the high-water mark, so
    that a stage's peak above its start counts what the stage itself needed: without it a stage reuses what an
    earlier one freed and reads as needing nothing."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class PeakMemory:
    """Peak memory above the block's start: the process's resident memory (host) and, on CUDA, the memory torch
    allocated on the device."""

    def __init__(self, device):
        self.device = device

    def __enter__(self) -> PeakMemory:
        release_free_memory()
        self.start = resident_mb()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.device_start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = max(resident_mb("VmHWM") - self.start, 0.0)
        self.device_peak_mb = (
            (torch.cuda.max_memory_allocated(self.device) - self.device_start) / 2**20
            if self.device.type == "cuda"
            else None
        )


class Stopwatch:
    """Each stage's wall time and peak memory above its start (host; device where it is CUDA)."""

    def __init__(self, device=None):
        self.device = device or torch.device("cpu")
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.device_peak_mb: dict[str, float] = {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        started = time.perf_counter()
        with PeakMemory(self.device) as memory:
            result = fn(*args, **kwargs)
        self.seconds[stage] = round(time.perf_counter() - started, 1)
        self.peak_mb[stage] = round(memory.peak_mb, 1)
        if memory.device_peak_mb is not None:
            self.device_peak_mb[stage] = round(memory.device_peak_mb, 1)
        print(f"[{stage}] {self.seconds[stage]:.1f} s, peak +{self.peak_mb[stage]:.0f} MB", flush=True)
        return result


@dataclass
class BenchmarkStages:
    """``recipe.train_all``'s stages in this process, on the flow's runtime, each timed by ``watch``; the RL stage is
    ``first_rl`` (a name and its config), trained and selected as the flow does."""

    cfg: Config
    rows: dict[str, list[dict]]
    tokenizer: PreTrainedTokenizerBase
    watch: Stopwatch
    runtime: Runtime
    first_rl: tuple[str, Config]

    @property
    def train_prompts(self) -> list[str]:
        return sorted({r["prompt"] for r in self.rows[DEMONSTRATIONS]})

    def sft(self) -> recipe.StageResult:
        return self.watch(
            "sft", recipe.sft_stage, self.cfg, self.tokenizer, self.rows[DEMONSTRATIONS], runtime=self.runtime
        )

    def comparisons(self, sft: recipe.StageResult) -> recipe.StageResult:
        if self.cfg.comparisons.source != "sft_samples":
            return recipe.StageResult(self.rows[PREFERENCES], {})
        return self.collect(sft)

    def collect(
        self,
        sampler: recipe.StageResult,
        stream: str = "labeler",
        round_index: int | None = None,
        group_offset: int = 0,
    ) -> recipe.StageResult:
        """``sampler``'s samples ranked by the task's labeller on its ``stream`` (a labelling round's: its slice of
        the draw, its groups numbered from ``group_offset``)."""
        cfg = self.cfg
        labeller = recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller(stream), self.rows[DEMONSTRATIONS])
        return self.watch(
            "comparisons",
            recipe.comparisons_stage,
            cfg,
            self.tokenizer,
            sampler.model,
            self.train_prompts,
            labeller,
            round_index,
            group_offset,
            runtime=self.runtime,
        )

    def reward_model(self, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
        cfg, rows = self.cfg, comparisons.model
        reward = self.watch(
            "reward",
            recipe.reward_stage,
            cfg,
            self.tokenizer,
            sft.model,
            rows,
            self.train_prompts,
            self.rows[DEMONSTRATIONS],
            runtime=self.runtime,
        )
        _, held_out = recipe.labelled_split(cfg, rows)
        reward.metrics["accuracy_gold"] = reward_model_gold_accuracy(
            reward.model, self.tokenizer, held_out, cfg.model, gold_score, self.runtime
        )
        return reward

    def baseline(self, name: str, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
        cfg = self.cfg
        return self.watch(
            name,
            recipe.baseline_stage,
            cfg,
            name,
            self.tokenizer,
            sft.model,
            comparisons.model,
            make_ranker=self.selection_ranker,
            runtime=self.runtime,
        )

    def rl(
        self, sft: recipe.StageResult, reward_model: recipe.StageResult, comparisons: recipe.StageResult
    ) -> recipe.StageResult:
        name, rl_cfg = self.first_rl
        return self.rl_from(name, rl_cfg, sft.model, reward_model, comparisons)

    def rl_from(
        self, name: str, rl_cfg: Config, sft, reward_model, comparisons, start=None, select: bool = True
    ) -> recipe.StageResult:
        """``name``'s RL with ``rl_cfg`` from the model ``sft`` (also its KL reference), or from ``start``."""
        return self.watch(name, self.train_rl, rl_cfg, sft, reward_model.model, comparisons.model, start, select)

    def train_rl(self, cfg: Config, sft, reward_model, comparisons: list[dict], start=None, select: bool = True):
        """One RL algorithm's stage as the flow runs it: trained from ``start`` (a later labelling round's: the last
        round's policy) or SFT, then its snapshot the labeller prefers shipped; without ``select`` (before the last
        labelling round), its last iteration."""
        snapshots = Snapshots(cfg.selection.candidates, cfg.selection.spacing) if cfg.selection.candidates > 1 else None
        monitor = judge_monitor(gold_judge(gold_score))
        result = recipe.ppo_stage(
            cfg,
            self.tokenizer,
            sft,
            reward_model,
            self.train_prompts,
            self.rows[DEMONSTRATIONS],
            start,
            Harness(self.runtime, snapshots=snapshots, monitor=monitor),
        )
        return recipe.select_candidate(
            cfg,
            result,
            snapshots.taken if snapshots is not None else [],
            self.tokenizer,
            comparisons,
            (lambda: ReviewTask(cfg).labeller("selection")) if select else None,
            unit="iteration",
            runtime=self.runtime,
        )

    def selection_ranker(self):
        return ReviewTask(self.cfg).labeller("selection")


@dataclass
class BenchmarkRoundStages:
    """``recipe_rounds``' stages as ``stages``' (its config the schedule's: ``comparisons.rounds``,
    ``ppo.between_rounds``); ``after_round(round_index, tracks)`` runs once each round has trained (what a benchmark
    measures of it)."""

    stages: BenchmarkStages
    after_round: Callable[[int, Tracks], None] | None = None

    def sft(self) -> recipe.StageResult:
        return self.stages.sft()

    def labelling_round(self, round_index: int, tracks: Tracks, train: Callable[[], None]) -> None:
        train()
        if self.after_round is not None:
            self.after_round(round_index, tracks)

    def comparisons(
        self, round_index: int, track: str, sampler: recipe.StageResult, seen: recipe.StageResult
    ) -> recipe.StageResult:
        return self.stages.collect(sampler, labeller_stream(track, round_index), round_index, next_group(seen.model))

    def reward_model(
        self, round_index: int, sft: recipe.StageResult, comparisons: recipe.StageResult
    ) -> recipe.StageResult:
        return self.stages.reward_model(sft, comparisons)

    def rl(
        self,
        round_index: int,
        sft: recipe.StageResult,
        reward_model: recipe.StageResult,
        comparisons: recipe.StageResult,
        start: recipe.StageResult | None,
    ) -> recipe.StageResult:
        cfg = self.stages.cfg
        return self.stages.rl_from(
            "ppo",
            recipe_rounds.ppo_round_config(cfg, round_index),
            sft.model,
            reward_model,
            comparisons,
            start=start.model if start is not None else None,
            select=round_index == cfg.comparisons.rounds,
        )

    def iterative_dpo(
        self,
        round_index: int,
        sft: recipe.StageResult,
        previous: recipe.StageResult,
        round_comparisons: recipe.StageResult,
        seen: recipe.StageResult,
    ) -> recipe.StageResult:
        s = self.stages
        return s.watch(
            "dpo",
            recipe.iterative_dpo_stage,
            s.cfg,
            s.tokenizer,
            sft.model,
            previous.model,
            RoundLabels(round_index, round_comparisons.model, seen.model),
            s.selection_ranker,
            Harness(s.runtime),
        )

    def baseline(self, name: str, sft: recipe.StageResult, comparisons: recipe.StageResult) -> recipe.StageResult:
        return self.stages.baseline(name, sft, comparisons)
