"""``recipe.train_all``: the recipe's order and what each stage reads, the one wiring the flow (its Prefect tasks) and
the benchmarks (their timed calls) share. Known answer: InstructGPT's order, every supervised baseline on the very
comparisons the reward model learnt from, RL from SFT against that reward model; a stage handed another stage's output
in its place fails. ``recipe_rounds.train_rounds``, the same in labelling rounds: the flow's order of three rounds,
written out by hand."""

from __future__ import annotations

import pytest

from components.config import load_config
from components.models.saving import stage_key
from components.training import recipe, recipe_rounds


class Recorded:
    """Stages that record each call and hand out a labelled result."""

    def __init__(self):
        self.calls: list[tuple] = []

    def made(self, name: str, *inputs: recipe.StageResult) -> recipe.StageResult:
        self.calls.append((name, *(i.model for i in inputs)))
        return recipe.StageResult(name, {})

    def sft(self):
        return self.made("sft")

    def comparisons(self, sft):
        return self.made("comparisons", sft)

    def reward_model(self, sft, comparisons):
        return self.made("reward_model", sft, comparisons)

    def baseline(self, name, sft, comparisons):
        return self.made(name, sft, comparisons)

    def rl(self, sft, reward_model, comparisons):
        return self.made("rl", sft, reward_model, comparisons)


def test_the_recipe_runs_in_instructgpt_s_order_on_one_set_of_labels():
    stages = Recorded()
    made = recipe.train_all(stages)
    assert stages.calls == [
        ("sft",),
        ("comparisons", "sft"),
        ("reward_model", "sft", "comparisons"),
        ("chosen", "sft", "comparisons"),
        ("top_ranked", "sft", "comparisons"),
        ("combined", "sft", "comparisons"),
        ("dpo", "sft", "comparisons"),
        ("rl", "sft", "reward_model", "comparisons"),
    ]
    assert (made.sft.model, made.comparisons.model, made.reward_model.model, made.rl.model) == (
        "sft",
        "comparisons",
        "reward_model",
        "rl",
    )
    assert {name: result.model for name, result in made.baselines.items()} == {
        name: name for name in recipe.SUPERVISED_BASELINES
    }


class RecordedRounds:
    """Round stages that record each call (a comparison result's model: its one row, named) and whether it ran
    inside its round."""

    def __init__(self):
        self.calls: list[tuple] = []

    def made(self, name: str, *inputs, rows: bool = False) -> recipe.StageResult:
        self.calls.append((name, *inputs))
        label = "/".join(str(part) for part in (name, *inputs[:2]))
        return recipe.StageResult([label] if rows else label, {}, key=label)

    def sft(self):
        return self.made("sft")

    def labelling_round(self, round_index, tracks, train):
        policies = recipe_rounds.labelled_policies(tracks, round_index)
        self.calls.append(("round", round_index, {track: p.model for track, p in policies.items()}))
        train()
        self.calls.append(("round done", round_index))

    def comparisons(self, round_index, track, sampler, seen):
        self.calls.append(("comparisons", round_index, track, sampler.model, tuple(seen.model)))
        return recipe.StageResult([f"c{round_index}.{track}"], {}, key=f"c{round_index}.{track}")

    def reward_model(self, round_index, sft, comparisons):
        return self.made(f"rm{round_index}", sft.model, tuple(comparisons.model))

    def rl(self, round_index, sft, reward_model, comparisons, start):
        start = start.model if start is not None else None
        return self.made(f"ppo{round_index}", sft.model, reward_model.model, tuple(comparisons.model), start)

    def iterative_dpo(self, round_index, sft, previous, round_comparisons, seen):
        inputs = (sft.model, previous.model, tuple(round_comparisons.model), tuple(seen.model))
        return self.made(f"dpo{round_index}", *inputs)

    def baseline(self, name, sft, comparisons):
        return self.made(name, sft.model, tuple(comparisons.model))


def expected_rounds(continued: bool) -> list[tuple]:
    """The flow's three labelling rounds, written out: round 1 labels SFT's samples once for both tracks; from round 2
    each track's own policy is labelled after its earlier rounds' rows; the RM learns every PPO-track label so far;
    PPO continues the last round's policy or restarts (start None: from SFT); iterative DPO trains the last DPO policy
    on its round's labels; then the other supervised baselines on every PPO-track label."""
    c1, c2, c3 = ("c1.ppo",), ("c1.ppo", "c2.ppo"), ("c1.ppo", "c2.ppo", "c3.ppo")
    rm1, rm2, rm3 = "rm1/sft/('c1.ppo',)", "rm2/sft/('c1.ppo', 'c2.ppo')", "rm3/sft/('c1.ppo', 'c2.ppo', 'c3.ppo')"
    ppo1, ppo2 = f"ppo1/sft/{rm1}", f"ppo2/sft/{rm2}"
    dpo1 = "dpo1/sft/sft"
    dpo2 = f"dpo2/sft/{dpo1}"
    return [
        ("sft",),
        ("round", 1, {"ppo": "sft"}),
        ("comparisons", 1, "ppo", "sft", ()),
        ("rm1", "sft", c1),
        ("ppo1", "sft", rm1, c1, None),
        ("dpo1", "sft", "sft", ("c1.ppo",), ("c1.ppo",)),
        ("round done", 1),
        ("round", 2, {"ppo": ppo1, "dpo": dpo1}),
        ("comparisons", 2, "ppo", ppo1, c1),
        ("comparisons", 2, "dpo", dpo1, ("c1.ppo",)),
        ("rm2", "sft", c2),
        ("ppo2", "sft", rm2, c2, ppo1 if continued else None),
        ("dpo2", "sft", dpo1, ("c2.dpo",), ("c1.ppo", "c2.dpo")),
        ("round done", 2),
        ("round", 3, {"ppo": ppo2, "dpo": dpo2}),
        ("comparisons", 3, "ppo", ppo2, c2),
        ("comparisons", 3, "dpo", dpo2, ("c1.ppo", "c2.dpo")),
        ("rm3", "sft", c3),
        ("ppo3", "sft", rm3, c3, ppo2 if continued else None),
        ("dpo3", "sft", dpo2, ("c3.dpo",), ("c1.ppo", "c2.dpo", "c3.dpo")),
        ("round done", 3),
        ("chosen", "sft", c3),
        ("top_ranked", "sft", c3),
        ("combined", "sft", c3),
    ]


@pytest.mark.parametrize("between_rounds", ["restart", "continue"])
def test_three_labelling_rounds_run_in_the_flows_order_on_each_rounds_labels(between_rounds):
    stages = RecordedRounds()
    made = recipe_rounds.train_rounds(stages, 3, between_rounds)
    assert stages.calls == expected_rounds(between_rounds == "continue")
    assert made.rl.model == "ppo3/sft/rm3/sft/('c1.ppo', 'c2.ppo', 'c3.ppo')"
    assert made.reward_model.model == "rm3/sft/('c1.ppo', 'c2.ppo', 'c3.ppo')"
    assert made.comparisons.model == ["c1.ppo", "c2.ppo", "c3.ppo"]
    assert made.dpo_comparisons.model == ["c1.ppo", "c2.dpo", "c3.dpo"]
    assert list(made.baselines) == list(recipe.SUPERVISED_BASELINES)
    assert made.baselines["dpo"].model == "dpo3/sft/dpo2/sft/dpo1/sft/sft"
    assert [sorted(r) for r in made.rounds] == [["comparisons", "comparisons_dpo", "dpo", "ppo", "reward_model"]] * 3
    assert made.rounds[0]["comparisons"] is made.rounds[0]["comparisons_dpo"], "round 1 labels SFT once for both"
    assert [r["ppo"].model.split("/")[0] for r in made.rounds] == ["ppo1", "ppo2", "ppo3"]


def test_joined_rounds_are_keyed_by_every_rounds_key():
    first, second = recipe.StageResult(["a"], {}, key="k1"), recipe.StageResult(["b", "c"], {}, key="k2")
    both = recipe_rounds.joined([first, second])
    assert (both.model, both.metrics) == (["a", "b", "c"], {"pairs": 3})
    assert both.key == stage_key(joined=["k1", "k2"]) != recipe_rounds.joined([second, first]).key


@pytest.mark.parametrize(("between_rounds", "iterations"), [("continue", [4, 3, 3]), ("restart", [4, 7, 10])])
def test_each_rounds_rl_gets_its_share_of_the_iterations_its_own_seed_and_before_the_last_one_candidate(
    between_rounds, iterations
):
    cfg = load_config(
        "smoke", ["comparisons.rounds=3", "ppo.iterations=10", f"ppo.between_rounds={between_rounds}", "seed=7"]
    )
    rounds = [recipe_rounds.ppo_round_config(cfg, r) for r in (1, 2, 3)]
    assert [c.ppo.iterations for c in rounds] == iterations
    assert [c.seed for c in rounds] == [7, 8, 9]
    assert [c.selection.candidates for c in rounds] == [1, 1, cfg.selection.candidates]
    assert all(c.reward == cfg.reward and c.comparisons == cfg.comparisons for c in rounds)
