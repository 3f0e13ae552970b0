"""Which held-out decodings a run may take from an earlier one (flows/tasks/decoding_reuse.py): the key changes with
every
thing the responses depend on, and with nothing else (the judge, the gate)."""

import pytest

from components.config import load_config
from components.data.dataset import DataSummary
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES
from components.evaluation.policy_eval import DecodingMode
from components.evaluation.report import BEST_OF_N, decoding_modes
from components.training.recipe import StageResult
from flows.execution.run_context import PreparedData, RunContext, Trained, ValidationSummary
from flows.tasks import decoding_reuse

SAMPLE = DecodingMode("sample", False, 8, 1.0)
PROMPTS = ["review the kettle", "review the lamp"]


def context(overrides=(), prompts=PROMPTS, md5="d1") -> RunContext:
    rows = {DEMONSTRATIONS: [], PREFERENCES: [], EVAL_PROMPTS: [{"prompt": p} for p in prompts]}
    data = PreparedData(rows, {"md5": md5}, ValidationSummary(True, None, {}, False), {}, DataSummary({}))
    return RunContext(load_config("smoke", list(overrides)), "/nowhere", None, data, None)


def trained(**keys) -> Trained:
    keys = {"sft": "s1", "comparisons": "c1", "reward_model": "r1", "ppo": "p1", "dpo": "b1", **keys}
    stage = {name: StageResult(None, {}, key=key) for name, key in keys.items()}
    return Trained(stage["sft"], stage["comparisons"], stage["reward_model"], stage["ppo"], {"dpo": stage["dpo"]})


def key(ctx=None, made=None, policy="dpo", mode=SAMPLE) -> str | None:
    return decoding_reuse.decoding_key(ctx or context(), made or trained(), policy, mode)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(lambda: key(made=trained(dpo="b2")), id="the policy's weights"),
        pytest.param(lambda: key(made=trained(sft="s2")), id="the KL reference"),
        pytest.param(lambda: key(made=trained(reward_model="r2")), id="the reward model"),
        pytest.param(lambda: key(policy="ppo"), id="another policy"),
        pytest.param(lambda: key(mode=DecodingMode("sample", False, 4, 1.0)), id="samples per prompt"),
        pytest.param(lambda: key(mode=DecodingMode("sample", False, 8, 0.7)), id="the temperature"),
        pytest.param(lambda: key(context(["evaluation.batch_size=7"])), id="the decoding batch size"),
        pytest.param(lambda: key(context(["model.max_response_tokens=9"])), id="the model settings"),
        pytest.param(lambda: key(context(["seed=5"])), id="the seed"),
        pytest.param(lambda: key(context(prompts=PROMPTS[:1])), id="the held-out prompts"),
        pytest.param(lambda: key(context(md5="d2")), id="the data version"),
    ],
)
def test_the_key_changes_with_everything_the_responses_depend_on(changed):
    assert key() is not None and changed() != key()


def test_best_of_n_is_keyed_by_its_own_settings_and_samples_the_sft_policy():
    best = key(policy=BEST_OF_N)
    assert key(context(["baselines.best_of_n.n=3"]), policy=BEST_OF_N) != best
    assert key(made=trained(sft="s2"), policy=BEST_OF_N) != best
    assert key(made=trained(ppo="p2"), policy=BEST_OF_N) == best
    assert key(context(["baselines.best_of_n.n=3"])) == key()  # the other policies do not read it


@pytest.mark.parametrize(
    "overrides",
    [["evaluation.judge.kind=python", "evaluation.judge.entry_point=m:f"], ["gate.min_win_rate_lower=0.1"]],
    ids=["the judge", "the gate"],
)
def test_what_reads_the_responses_afterwards_is_not_in_the_key(overrides):
    assert key(context(overrides)) == key()


def test_a_stage_without_a_key_is_decoded_every_time():
    assert key(made=trained(dpo="")) is None and key(made=trained(reward_model="")) is None


def test_the_decodings_in_use_are_one_per_policy_and_mode_and_best_of_n_samples_only():
    ctx = context()
    in_use = decoding_reuse.decodings_in_use(ctx, trained())
    modes = decoding_modes(ctx.cfg.evaluation)
    expected = {(p, m.name) for p in ("sft", "ppo", "dpo") for m in modes} | {
        (BEST_OF_N, m.name) for m in modes if not m.greedy
    }
    assert set(in_use) == {decoding_reuse.decoding_home(ctx, p, DecodingMode(m, False, 1)) for p, m in expected}
    assert len(set(in_use.values())) == len(expected)
