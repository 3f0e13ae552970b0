"""The benchmark's per-stage peak memory against allocations of a known size: a stage that holds 200,000,000 bytes
reads 190.7 MiB above its start, and so does the same stage again after the first freed its block (the measure
before this one read ~0 there: the second stage grew into memory the allocator had kept)."""

import torch

from benchmarks.recipe_stages import Stopwatch

BLOCK_MIB = 50_000_000 * 4 / 2**20  # 50 M float32 values: 190.7 MiB, every page written by torch.ones
OVERHEAD_MIB = 32  # the interpreter and torch's own bookkeeping while the block lives (measured: under 5)


def hold_a_block() -> float:
    block = torch.ones(50_000_000)
    return float(block[-1])


def test_a_stage_s_peak_is_the_block_it_held_each_time_and_nothing_for_a_stage_that_holds_nothing():
    watch = Stopwatch()
    watch("first", hold_a_block)
    watch("again", hold_a_block)
    watch("nothing", lambda: None)
    for stage in ("first", "again"):
        assert BLOCK_MIB - 1 <= watch.peak_mb[stage] <= BLOCK_MIB + OVERHEAD_MIB, (stage, watch.peak_mb)
    assert watch.peak_mb["nothing"] < OVERHEAD_MIB
    assert watch.device_peak_mb == {}  # no CUDA stage here
