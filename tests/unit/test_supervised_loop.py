"""The supervised loop's gradient accumulation against a gradient worked out by hand.

A token-mean squared error over rows of different lengths: the mean over every token of the batch, not the mean of
each micro-batch's mean (which weighs a short micro-batch's tokens more), nor a sum."""

import torch

from components.models.runtime import SINGLE
from components.training.loop import INPUT_TOKENS, EpochEnds, Means, Objective, accumulate, lr_factor

# (x, y) per token; five rows of 1 to 4 tokens
ROWS = [
    [(1.0, 2.0)],
    [(0.5, -1.0), (2.0, 1.0), (-1.5, 0.0)],
    [(3.0, 3.5), (-2.0, 1.0)],
    [(0.25, 0.5), (1.0, -2.0), (2.5, 2.0), (-0.5, 1.5)],
    [(-3.0, -1.0)],
]
W, B = 0.75, -0.25


def squared_error_objective() -> Objective:
    def encode(rows):
        width = max(len(row) for row in rows)
        x = torch.zeros(len(rows), width, dtype=torch.float64)
        y = torch.zeros_like(x)
        mask = torch.zeros_like(x, dtype=torch.bool)
        for i, row in enumerate(rows):
            for t, (xt, yt) in enumerate(row):
                x[i, t], y[i, t], mask[i, t] = xt, yt, True
        tokens = mask.double().sum()
        return (x, y, mask), {"tokens": tokens, INPUT_TOKENS: tokens}

    def loss(model, inputs, means: Means):
        x, y, mask = inputs
        return means("tokens", (model(x.unsqueeze(-1)).squeeze(-1) - y) ** 2, mask), {}

    return Objective(encode, loss)


def by_hand() -> tuple[float, float, float]:
    """The token mean of (w x + b - y)^2 over the whole batch, and its derivatives in w and b."""
    tokens = [(x, y) for row in ROWS for x, y in row]
    n = len(tokens)
    loss = sum((W * x + B - y) ** 2 for x, y in tokens) / n
    d_w = sum(2 * (W * x + B - y) * x for x, y in tokens) / n
    d_b = sum(2 * (W * x + B - y) for x, y in tokens) / n
    return loss, d_w, d_b


def test_micro_batches_add_up_to_the_token_mean_of_the_whole_batch_and_count_every_token():
    expected_loss, expected_w, expected_b = by_hand()
    for parts in (1, 2, 3, 5):
        model = torch.nn.Linear(1, 1).double()
        with torch.no_grad():
            model.weight.fill_(W)
            model.bias.fill_(B)
        loss, _, tokens = accumulate(model, squared_error_objective(), ROWS, parts, SINGLE)
        # float64 sums of a dozen terms of size ~10: a few ulps; a mean of micro-batch means misses by 0.04 to 0.27
        tolerance = 64 * torch.finfo(torch.float64).eps * 10
        assert abs(loss - expected_loss) < tolerance, parts
        assert abs(model.weight.grad.item() - expected_w) < tolerance, parts
        assert abs(model.bias.grad.item() - expected_b) < tolerance, parts
        assert tokens == 11.0, parts


def test_the_learning_rate_warms_up_then_decays_linearly_or_stays_by_hand():
    """6 steps, 2 of warm-up: 1/2, 2/2, then (6 - step) / (6 - 2) under "linear": never 0 on a step that trains."""
    assert [lr_factor(step, 6, 2, "linear") for step in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(step, 6, 2, "constant") for step in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [lr_factor(step, 4, 0, "linear") for step in range(4)] == [1.0, 0.75, 0.5, 0.25]  # PPO's iterations


def test_epoch_ends_are_the_last_step_of_every_epoch_a_fractional_one_included():
    """1,800 groups at 16 a step: 112.5 steps an epoch; 3 epochs are 338 steps ending at steps 112, 224 and 337."""
    assert EpochEnds(steps_per_epoch=1800 / 16).steps(338) == {112, 224, 337}
    assert EpochEnds(steps_per_epoch=10).steps(15) == {9, 14}  # 1.5 epochs: the half epoch's end is the run's end
    assert EpochEnds(steps_per_epoch=10).steps(10) == {9}
