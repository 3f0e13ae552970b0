"""Gao et al.'s RL over-optimisation curve, fitted against points drawn from a known curve."""

import math

import pytest

from components.adapters import plots
from components.evaluation.overoptimisation import fit_rl_curve, overoptimisation_fit, shipped_iteration


def test_the_fit_recovers_a_known_curve_and_its_peak():
    """Points on R(d) = d (2.0 - 0.8 log d): the fit returns alpha 2.0 and beta 0.8 to 1e-9, and the peak
    exp(alpha / beta - 1) = exp(1.5) = 4.48 (KL 20.1) is where a brute-force search over d finds the maximum."""
    alpha, beta = 2.0, 0.8
    d = [0.25 * i for i in range(1, 40)]
    curve = fit_rl_curve([x * x for x in d], [x * (alpha - beta * math.log(x)) for x in d])
    assert curve.alpha == pytest.approx(alpha, abs=1e-9) and curve.beta == pytest.approx(beta, abs=1e-9)
    assert curve.r2 == pytest.approx(1.0)
    brute = max((i / 1000 for i in range(1, 20000)), key=curve)
    assert curve.peak_d == pytest.approx(math.exp(1.5)) and curve.peak_d == pytest.approx(brute, abs=1e-3)
    assert curve.peak_kl == pytest.approx(math.exp(3.0)) and curve.peak_value == pytest.approx(beta * math.exp(1.5))


def test_a_peak_far_beyond_the_data_is_not_reported():
    """beta 0.01: the fitted peak is at sqrt(KL) = exp(99); the points reach 3. Nothing says gold turns down there."""
    d = [0.1 * i for i in range(1, 31)]
    curve = fit_rl_curve([x * x for x in d], [x * (1.0 - 0.01 * math.log(x)) for x in d])
    assert curve.beta == pytest.approx(0.01) and curve.d_max == pytest.approx(3.0)
    assert curve.peak_d is None and curve.peak_kl is None and curve.peak_value is None


def test_a_curve_that_never_turns_down_has_no_peak_and_too_few_points_no_fit():
    rising = fit_rl_curve(
        [1.0, 4.0, 9.0, 16.0], [1.0, 2.0 + 2 * 0.3 * math.log(2), 3 + 3 * 0.3 * math.log(3), 4 + 4 * 0.3 * math.log(4)]
    )
    assert rising.beta == pytest.approx(-0.3) and rising.peak_d is None
    assert fit_rl_curve([0.0, 1.0, 4.0], [0.0, 1.0, 2.0]) is None  # KL 0 carries no information: two points left
    assert fit_rl_curve([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) is None  # one value of d: alpha and beta inseparable


def test_a_run_is_fitted_from_its_history_as_changes_from_the_start_and_drawn(tmp_path):
    history = [
        {
            "iteration": i,
            "kl": 0.5 * i,
            "gold": 2.3 + math.sqrt(0.5 * i) * (1.0 - 0.5 * math.log(math.sqrt(0.5 * i) or 1)),
            "rm_score": 0.1 + math.sqrt(0.5 * i),
        }
        for i in range(30)
    ]
    history[3]["kl"], history[4]["kl"] = history[4]["kl"], history[3]["kl"]  # KL goes up and down in a real run
    fit = overoptimisation_fit(history)
    assert fit["start"] == {"gold": 2.3, "proxy": 0.1}
    assert fit["gold"].beta > 0.3 and fit["proxy"].alpha == pytest.approx(1.0, abs=0.05)
    figure = plots.overoptimisation(history, fit, shipped_iteration=20)
    figure.savefig(tmp_path / "overoptimisation.png")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any(label.startswith("gold peak") for label in labels) and "shipped: iteration 21" in labels
    assert (tmp_path / "overoptimisation.png").stat().st_size > 10_000
    plots.close(figure)
    empty = plots.overoptimisation([], overoptimisation_fit([]))
    plots.close(empty)


def test_the_shipped_snapshot_is_drawn_at_the_iteration_it_sampled():
    history = [{"iteration": i} for i in range(10)]
    assert (
        shipped_iteration(history, 4) == 5
    )  # taken after iteration 4's update: iteration 5's rollouts are its samples
    assert (
        shipped_iteration(history, 9) == 9 and shipped_iteration(history, -1) == 9 and shipped_iteration([], 3) is None
    )
