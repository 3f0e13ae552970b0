"""A method claim with the seed as the unit: the t-interval over seeds by hand, and the seeds a difference needs
against the textbook sample sizes of a one-sample t test (two-sided 5%, power 80%) and scipy's noncentral t."""

import math

import pytest
from scipy.stats import nct, t

from components.evaluation.seeds import across_seeds, seeds_needed


def test_three_seeds_give_their_mean_and_a_t_interval_on_two_degrees_of_freedom():
    # issue 35's three seeds against DPO: 0.616, 0.439, 0.478 (each +-0.035 alone)
    estimate = across_seeds([0.616, 0.439, 0.478])
    mean = (0.616 + 0.439 + 0.478) / 3
    sd = math.sqrt(((0.616 - mean) ** 2 + (0.439 - mean) ** 2 + (0.478 - mean) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 df)
    assert estimate.mean == pytest.approx(mean) and estimate.sd == pytest.approx(sd)
    assert estimate.ci == pytest.approx((mean - half, mean + half), rel=1e-6)
    assert estimate.ci[0] < 0.3 and estimate.ci[1] > 0.7  # three seeds this far apart say little about the method


def test_one_seed_claims_nothing():
    estimate = across_seeds([0.6])
    assert estimate.ci == (-math.inf, math.inf) and math.isnan(estimate.sd)
    assert seeds_needed(estimate.sd, 0.1) is None


@pytest.mark.parametrize("effect, textbook", [(1.0, 10), (0.8, 15), (0.5, 34)])
def test_the_seeds_needed_are_the_textbook_sample_sizes(effect, textbook):
    needed = seeds_needed(sd=1.0, difference=effect)
    assert needed == textbook

    def power(n):  # exact: the noncentral t
        critical = t.ppf(0.975, n - 1)
        shift = effect * math.sqrt(n)
        return 1 - nct.cdf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift)

    assert power(needed) >= 0.78 and power(needed - 1) < 0.8  # the t approximation, within 0.02 of exact


def test_the_seeds_needed_scale_with_the_spread_over_the_difference():
    assert seeds_needed(0.08, 0.04) == seeds_needed(1.0, 0.5)  # only sd / difference matters
    assert seeds_needed(0.0, 0.05) == 2 and seeds_needed(0.1, 0.0) is None
