"""Best-of-n's KL from the policy it samples, against brute force: over K equally likely answers with distinct
rewards, best-of-n picks the answer of rank i (1 = worst) with probability (i/K)^n - ((i-1)/K)^n, and its KL is
sum p_i log(p_i K); as K grows that sum tends to log n - (n - 1)/n (margin: 1e-3 at K = 100,000, where the sum's
discretisation error is ~n/K)."""

import math

import numpy as np
import pytest

from components.evaluation.best_of_n import best_of_n_kl, kl_matched_n


def brute_force_kl(n: int, answers: int = 100_000) -> float:
    ranks = np.arange(1, answers + 1, dtype=np.float64) / answers
    p = ranks**n - (ranks - 1 / answers) ** n
    p = p[p > 0]
    return float(np.sum(p * np.log(p * answers)))


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_the_analytic_kl_is_the_limit_of_the_brute_force_sum(n):
    assert best_of_n_kl(n) == pytest.approx(brute_force_kl(n), abs=1e-3)


def test_best_of_8_spends_about_1_2_nats_and_ppos_3_5_nats_need_90_samples():
    assert best_of_n_kl(8) == pytest.approx(math.log(8) - 7 / 8)  # 1.204
    n = kl_matched_n(3.5, 1000)
    assert n == 90 and best_of_n_kl(n) >= 3.5 > best_of_n_kl(n - 1)  # 3.511 and 3.500 (3.49987)
    assert kl_matched_n(0.0, 10) == 1 and kl_matched_n(50.0, 16) == 16  # capped
