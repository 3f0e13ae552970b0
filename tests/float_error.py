"""Tolerances from float error, not from one machine's result: a float32 computation of ``operations`` roundings
on numbers up to ``magnitude`` is off by at most about operations x eps x magnitude, whatever the CPU's vector units
(AVX2, AVX-512, AMX) do to the order of the sums."""

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7


def float32_bound(magnitude: float, operations: int) -> float:
    return operations * FLOAT32_EPS * max(abs(magnitude), 1.0)
