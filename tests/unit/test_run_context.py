"""The flow's typed hand-offs: what a run context is built from, and what it refuses before any training."""

import pytest

from components.config import ConfigError, load_config
from components.data.dataset import DataSummary
from components.training.recipe import StageResult
from flows.execution.run_context import PreparedData, Trained, ValidationSummary
from flows.tasks.training_tasks import run_context

FILES = {"demonstrations": "d.jsonl", "preferences": "p.jsonl", "eval_prompts": "e.jsonl"}
ROWS = {
    "demonstrations": [{"prompt": "Say hi.", "response": "Hi there, friend!"}],
    "preferences": [{"prompt": "Say hi.", "chosen": "Hello, you.", "rejected": "Go away."}],
    "eval_prompts": [{"prompt": "Say bye."}],
}


JUDGE = {"evaluation": {"judge": {"kind": "python", "entry_point": "tests.judges:words_of_praise"}}}


def data() -> PreparedData:
    return PreparedData(ROWS, {"md5": "0" * 32}, ValidationSummary(True, None, {}, False), {}, DataSummary({}))


def test_comparisons_follow_the_data_where_not_given():
    """The default on the embedded task ranks SFT samples; a user's files labelled by no one bring their preference
    file; labelled by people, their SFT samples. (Before, user files with the defaults failed after the data stages.)"""
    assert load_config("smoke").comparisons.source == "sft_samples"
    files = {"data": {"source": "files", "files": FILES}, **JUDGE}
    assert load_config("smoke", files).comparisons.source == "static"
    assert load_config("smoke", {**files, "comparisons": {"labeler": "human"}}).comparisons.source == "sft_samples"
    assert load_config("smoke", {**files, "comparisons": {"source": "static"}}).comparisons.source == "static"


@pytest.mark.parametrize(
    "overrides, rule",
    [
        (
            {"data": {"source": "files", "files": FILES}, "comparisons": {"source": "sft_samples"}, **JUDGE},
            r"the simulated labeller knows only the embedded task.*comparisons\.source: static",
        ),
        (
            {"data": {"source": "files", "files": FILES}},
            r"gold judge reads only its own prompts.*set evaluation\.judge\.kind to reward_model",
        ),
        (
            {"comparisons": {"rounds": 3}, "ppo": {"iterations": 2}},
            r"comparisons\.rounds \(3\) exceeds ppo\.iterations \(2\)",
        ),
    ],
    ids=["simulated labeller on user files", "gold judge on user files", "more rounds than PPO iterations"],
)
def test_contradictory_configs_are_refused_when_loaded(overrides, rule):
    """Refused by the config itself, so the command exits 2 before any work (tests/faults: no file written)."""
    with pytest.raises(ConfigError, match=rule):
        load_config("smoke", overrides)


def test_user_files_with_samples_labelled_by_people_need_no_environment():
    cfg = load_config(
        "smoke", {"data": {"source": "files", "files": FILES}, "comparisons": {"labeler": "human"}, **JUDGE}
    )
    assert run_context(cfg, "unused", None, data()).environment is None


def test_a_judge_that_cannot_be_imported_is_refused_before_any_training():
    cfg = load_config("smoke", {"evaluation": {"judge": {"kind": "python", "entry_point": "tests.judges:absent"}}})
    with pytest.raises(ValueError, match=r"judge tests\.judges:absent: cannot import it"):
        run_context(cfg, "unused", None, data())


def test_user_files_get_a_word_tokenizer_over_their_own_words_and_no_environment():
    cfg = load_config(
        "smoke", {"data": {"source": "files", "files": FILES}, "comparisons": {"source": "static"}, **JUDGE}
    )
    ctx = run_context(cfg, "unused", None, data())
    assert ctx.environment is None
    assert ctx.vocabulary == {"say", "hi", "bye", "there", "friend", "hello", "you", "go", "away", ".", ",", "!"}
    assert ctx.tokenizer.unk_token_id not in ctx.tokenizer("Hi there, friend!")["input_ids"]
    assert ctx.data.train_prompts == ["Say hi."] and ctx.data.eval_prompts == ["Say bye."]


def test_the_embedded_task_brings_its_own_vocabulary():
    cfg = load_config("smoke")
    ctx = run_context(cfg, "unused", None, data())
    assert ctx.environment is not None and ctx.vocabulary == ctx.environment.vocabulary
    assert len(ctx.tokenizer) == len(ctx.vocabulary) + 3  # pad, eos, unk


def test_trained_names_its_models_by_their_directories():
    sft, rows, rm, ppo, dpo = (StageResult(name, {"m": float(i)}) for i, name in enumerate("abcde"))
    trained = Trained(sft, rows, rm, ppo, {"dpo": dpo})
    assert list(trained.models()) == ["sft", "reward_model", "ppo", "dpo"]  # the comparisons save no model
    assert trained.metrics()["dpo"] == {"m": 4.0}


def test_only_a_judge_that_watches_ppo_is_part_of_ppo_s_key():
    from flows.tasks.training_tasks import monitor_depends_on

    def depends(**judge):
        return monitor_depends_on(load_config("smoke", {"evaluation": {"judge": judge}}))

    assert depends() == [] and depends(kind="human") == depends(kind="human", timeout_seconds=2) == []
    python = {"kind": "python", "entry_point": "tests.judges:words_of_praise"}
    assert depends(**python) == ["judge=python:tests.judges:words_of_praise"]
    assert depends(**python, monitor_ppo=False) == []
    assert depends(**python, poll_seconds=3) == depends(**python)  # settings of people's rounds are not the judge
