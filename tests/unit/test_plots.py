"""Figures never crash on degenerate results: those must reach the gate and be recorded."""

import math

from components.adapters import plots
from components.evaluation.intervals import win_rate


def test_win_rates_of_zero_and_one_and_nan_are_drawn():
    """A win rate of 0 has a CI lower bound of 3.5e-18 (float rounding in Wilson's formula): value - lower was
    a tiny negative error bar, and matplotlib raised "'yerr' must not contain negative values" inside the
    evaluate task of a kl_coef 0 run, so the flow ended in a traceback instead of a recorded rejection."""
    zero, one = win_rate([0.0] * 100, [1.0] * 100).as_dict(), win_rate([1.0] * 100, [0.0] * 100).as_dict()
    assert zero["ci"][0] > zero["value"]  # the degenerate case is real
    block = {"ppo_win_rate": {"sft": zero, "dpo": one, "empty": win_rate([], []).as_dict()}}
    assert math.isnan(block["ppo_win_rate"]["empty"]["value"])
    figure = plots.win_rates(block, "sample")
    assert [round(bar.get_height(), 3) for bar in figure.axes[0].patches[:2]] == [0.0, 1.0]
    plots.close(figure)
