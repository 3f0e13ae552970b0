"""``recipe.train_all``: the recipe's order and what each stage reads, the one wiring the flow (its Prefect tasks) and
the benchmarks (their timed calls) share. Known answer: InstructGPT's order, every supervised baseline on the very
comparisons the reward model learnt from, RL from SFT against that reward model; a stage handed another stage's output
in its place fails."""

from __future__ import annotations

from components.training import recipe


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
