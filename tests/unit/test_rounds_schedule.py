"""The labelling rounds' schedule: the single round's budget shared out, groups kept whole, held-out stays held out."""

import re

import pytest

from components.config import ConfigError, load_config
from components.training import recipe
from components.training.comparisons import draw_prompts
from components.training.reward import split_comparisons
from components.training.rounds import (
    continued_history,
    labeller_stream,
    next_group,
    ppo_iterations,
    round_prompts,
    shares,
    split_by_round,
    tagged,
)


def test_shares_are_whole_differ_by_at_most_one_and_sum_to_the_total():
    assert shares(10, 3) == [4, 3, 3]
    assert shares(80, 2) == [40, 40]
    assert shares(5, 5) == [1, 1, 1, 1, 1]


def test_rounds_label_exactly_the_prompts_one_round_would():
    drawn = draw_prompts([f"p{i}" for i in range(50)], 101, seed=3)
    slices = round_prompts(drawn, 3)
    assert [len(s) for s in slices] == [34, 34, 33]
    assert [p for s in slices for p in s] == drawn  # same prompts, same order: the same total budget
    assert round_prompts(drawn, 1) == [drawn]


def test_ppo_iterations_continue_share_restart_cumulate():
    assert [ppo_iterations(80, 2, r, "continue") for r in (1, 2)] == [40, 40]
    assert [ppo_iterations(80, 2, r, "restart") for r in (1, 2)] == [40, 80]
    assert [ppo_iterations(10, 3, r, "restart") for r in (1, 2, 3)] == [4, 7, 10]
    assert sum(ppo_iterations(10, 3, r, "continue") for r in (1, 2, 3)) == 10


def rows_of(round_index: int, groups: int, offset: int) -> list[dict]:
    rows = [{"prompt": f"p{g}", "chosen": f"a{g}", "rejected": f"b{g}", "group": g} for g in range(groups)]
    return tagged(rows, round_index, offset)


def test_tagged_rows_name_their_round_and_number_groups_after_every_earlier_round():
    first = rows_of(1, 4, 0)
    second = rows_of(2, 3, next_group(first))
    assert [r["group"] for r in first + second] == [0, 1, 2, 3, 4, 5, 6]
    assert {r["round"] for r in second} == {2}
    assert next_group([]) == 0


def split(rows):
    return split_comparisons(rows, 0.25, seed=11)


def test_a_group_held_out_in_its_round_stays_held_out_when_later_rounds_add_rows():
    first = rows_of(1, 20, 0)
    second = rows_of(2, 20, next_group(first))
    _, held_out_first = split_by_round(first, split)
    train_both, held_out_both = split_by_round(first + second, split)
    assert [r for r in held_out_both if r["round"] == 1] == held_out_first
    assert [r for r in held_out_both if r["round"] == 2] == split(second)[1]
    assert len(train_both) + len(held_out_both) == 40 and len(held_out_both) == 10


def test_rows_without_rounds_split_as_before():
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(12)]
    assert split_by_round(rows, split) == split(rows)


def test_continued_history_puts_each_round_after_the_last():
    whole = continued_history([[{"iteration": 0, "kl": 0.0}, {"iteration": 2, "kl": 1.0}], [{"iteration": 0}]], [3, 1])
    assert [(h["iteration"], h["round"]) for h in whole] == [(0, 1), (2, 1), (3, 2)]


def test_round_one_labels_on_the_single_rounds_noise_stream():
    assert labeller_stream("ppo", 1) == labeller_stream("dpo", 1) == "labeler"
    assert len({labeller_stream("ppo", 2), labeller_stream("dpo", 2), labeller_stream("ppo", 3)}) == 3


def test_label_budgets_count_a_policys_own_labels():
    cfg = load_config("smoke")
    shared = rows_of(1, 10, 0)
    own = rows_of(1, 6, 0)
    budgets = recipe.label_budgets(cfg, shared, {}, {"dpo": own})
    assert budgets["dpo"]["train_pairs"] + budgets["dpo"]["held_out_pairs"] == 6
    assert budgets["ppo"]["train_pairs"] + budgets["ppo"]["held_out_pairs"] == 10


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["comparisons.rounds=2", "comparisons.source=static"], "comparisons.rounds (2) needs"),
        (["comparisons.rounds=49"], "must not exceed n_prompts (48)"),
    ],
)
def test_rounds_that_cannot_work_are_refused_when_the_config_loads(overrides, named):
    with pytest.raises(ConfigError, match=re.escape(named)) as raised:
        load_config("smoke", overrides)
    assert len(str(raised.value).splitlines()) == 2, "the rule, not the whole config echoed"
