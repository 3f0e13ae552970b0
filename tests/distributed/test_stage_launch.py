"""Every stage that trains or decodes, launched on 2 CPU processes (gloo) as the flow launches it under a
multi-process profile (flows/execution/stage_worker.py), against the same stage in one process.

Known answers, tolerances stated:
  - the comparisons' samples (decoding split between the ranks, batch i seeded with seed + i) equal one process's
    exactly: the same prompts, the same seeds, the same weights;
  - SFT, the reward model, chosen, top_ranked, combined, DPO and iterative DPO on two processes take the steps one
    process takes on the same global batches: both ranks end bit-identical (DDP), and the weights equal one process's
    up to float32 sums taken in another order (each rank sums its half of the batch, then the all-reduce adds the
    halves). The yardstick for that is float32's own: the same single process with every batch's rows in reverse order
    adds the same terms in another order too. The two-process weights must lie within 4x that reversal's distance of
    the one-process weights, or within 16 float32 ulps (2^-23) of the largest weight, whichever is larger. Every
    model also moved from where it started by over 100x that tolerance, so the check cannot pass on an untrained
    model. Dropout is off (as in every profile): with dropout each rank draws its own masks.
"""

import json
from pathlib import Path

import pytest

from components.config import load_config
from components.models.builders import build_policy, load_causal_lm, scalar_model_from
from components.models.runtime import Runtime
from components.models.saving import save_model
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe
from components.training.rounds import tagged
from flows.execution import stage_calls
from flows.execution.launcher import AccelerateProfile, accelerate_command, run_logged
from flows.execution.runtimes import weights_digest
from flows.execution.stage_worker import OUTPUT, OUTPUT_ROWS, load_input, read_stage_result, write_stage_job
from tests.stage_jobs import FLOAT32_ULP, ReversedRows, float32_yardstick, largest_difference, smoke

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
TWO_PROCESSES = REPO / "infra/accelerate/cpu-2proc.yaml"
TIMEOUT = 600
# no snapshot selection (one candidate): a snapshot chosen by sampled labels could part on a near-tied token. No
# warm-up and a whole epoch, so that every stage moves its weights far beyond the tolerance; chosen accumulates
# its steps in micro-batches.
SETTINGS = [
    "selection.candidates=1",
    *(
        f"{section}.warmup_steps=0"
        for section in ("sft", "reward", *(f"baselines.{n}" for n in recipe.SUPERVISED_BASELINES))
    ),
    *(f"baselines.{name}.epochs=1" for name in recipe.SUPERVISED_BASELINES),
    "baselines.chosen.gradient_accumulation_steps=2",
]
TRAINED = {
    "sft": ({"demonstrations"}, {}),
    "reward_model": ({"comparisons", "train_prompts"}, {"sft"}),
    "chosen": ({"comparisons"}, {"sft"}),
    "top_ranked": ({"comparisons"}, {"sft"}),
    "combined": ({"comparisons"}, {"sft"}),
    "dpo": ({"comparisons"}, {"sft"}),
    "iterative_dpo": ({"round_rows", "seen_rows"}, {"sft", "previous"}),
}


def call_of(stage: str) -> tuple[str, dict]:
    if stage in recipe.SUPERVISED_BASELINES:
        return "baseline", {"name": stage}
    return stage, {}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A smoke SFT policy and its ranked comparisons, saved where launched jobs read them; every job's arguments."""
    where = tmp_path_factory.mktemp("stages")
    made = smoke(load_config("smoke", SETTINGS), where)
    cfg, tokenizer, sft, comparisons = made.cfg, made.tokenizer, made.sft, made.comparisons
    demonstrations, prompts = made.demonstrations, made.prompts
    reward_model = scalar_model_from(sft).eval()  # an untrained head reads as well as a trained one
    save_model(reward_model, tokenizer, where / "reward_model", {})
    round_rows = tagged(comparisons, 1, 0)
    plain = {
        "demonstrations": demonstrations,
        "comparisons": comparisons,
        "train_prompts": prompts,
        "round_rows": round_rows,
        "seen_rows": round_rows,
        "round_index": 1,
        "stream": "labeler",
    }
    return {
        "cfg": cfg,
        "tokenizer": tokenizer,
        "sft": sft,
        "reward_model": reward_model,
        "where": where,
        "plain": plain,
    }


def arguments(setting: dict, stage: str) -> dict:
    _, extra = call_of(stage)
    if stage == "decode":
        return {"eval_prompts": setting["plain"]["train_prompts"][:24], "wanted": DECODED}
    names = TRAINED[stage][0] if stage in TRAINED else {"demonstrations", "train_prompts", "stream"}
    if stage == "iterative_dpo":
        names = {*names, "round_index"}
    return {**{name: setting["plain"][name] for name in names}, **extra}


DECODED = [["sft", "sample"], ["sft", "greedy"], ["best_of_n", "sample"]]  # three decodings: both ranks get some


def model_inputs(stage: str) -> dict[str, tuple[str, str]]:
    """name -> (the setting's model, its kind)."""
    if stage == "comparisons":
        return {"sampler": ("sft", "policy")}
    if stage == "decode":
        return {"sft": ("sft", "policy"), "reward_model": ("reward_model", "reward_model")}
    return {name: ("sft", "policy") for name in TRAINED[stage][1]}


@pytest.fixture(scope="module")
def launched(setting):
    """Every stage in one `accelerate launch` of 2 processes (the worker runs the jobs one after another)."""
    jobs = []
    for stage in [*TRAINED, "comparisons", "decode"]:
        job_dir = setting["where"] / f"job-{stage}"
        models = {name: (setting["where"] / source, kind) for name, (source, kind) in model_inputs(stage).items()}
        call, _ = call_of(stage)
        write_stage_job(job_dir, call, setting["cfg"], arguments(setting, stage), models, VOCABULARY, 1000)
        jobs += ["--job", str(job_dir)]
    command, env = accelerate_command(AccelerateProfile.read(TWO_PROCESSES), "flows.execution.stage_worker", jobs)
    lines: list[str] = []
    run_logged(command, TIMEOUT, lines.append, env=env, cwd=REPO, grace=5)
    return {"lines": lines}


def one_process(setting: dict, stage: str, runtime: Runtime):
    call, _ = call_of(stage)
    models = {name: setting[source] for name, (source, _) in model_inputs(stage).items()}
    environment = ReviewTask(setting["cfg"])
    return stage_calls.CALLS[call](
        setting["cfg"], setting["tokenizer"], arguments(setting, stage), models, runtime, environment, None
    )


def test_every_rank_runs_every_stage_on_the_cpu(setting, launched):
    text = "\n".join(launched["lines"])
    for stage in [*TRAINED, "comparisons", "decode"]:
        result = read_stage_result(setting["where"] / f"job-{stage}")
        assert result["processes"] == 2 and result["device"].startswith("cpu") and result["threads_per_process"] >= 1
        assert len(result["rank_peak_memory_bytes"]) == 2
    assert "rank 0/2" in text and "rank 1/2" in text and "stage iterative_dpo" in text


def test_comparisons_sampled_on_two_processes_are_one_process_s_exactly(setting, launched):
    on_two = load_json(setting["where"] / "job-comparisons" / OUTPUT_ROWS)
    assert on_two == setting["plain"]["comparisons"]
    assert on_two == one_process(setting, "comparisons", Runtime()).model  # and the stage call itself agrees


def test_held_out_decodings_shared_out_between_two_processes_are_one_process_s_exactly(setting, launched):
    """Each decoding whole on one rank (decoding j on rank j mod 2): texts, ends, reward scores and KL as one process
    decodes them."""
    on_two = load_json(setting["where"] / "job-decode" / OUTPUT_ROWS)
    assert sorted(on_two) == sorted(f"{policy}/{mode}" for policy, mode in DECODED)
    assert on_two == one_process(setting, "decode", Runtime()).model


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("stage", list(TRAINED))
def test_a_stage_on_two_processes_takes_one_process_s_steps(setting, launched, stage):
    job_dir = setting["where"] / f"job-{stage}"
    result = read_stage_result(job_dir)
    assert len(set(result["rank_weight_digests"])) == 1  # DDP kept both ranks bit-identical
    kind = "reward_model" if stage == "reward_model" else "policy"
    on_two = load_input(str(job_dir / OUTPUT), kind)
    assert weights_digest(on_two) == result["rank_weight_digests"][0]

    one = one_process(setting, stage, Runtime())
    reversed_rows = one_process(setting, stage, ReversedRows())
    assert [h["step"] for h in result["history"]] == [h["step"] for h in one.history]
    tolerance = float32_yardstick(one.model, reversed_rows.model)
    difference = largest_difference(on_two, one.model)
    assert difference <= tolerance, (stage, difference, tolerance)
    if stage == "sft":  # from its initialisation
        start = build_policy(setting["cfg"].model, setting["tokenizer"], setting["cfg"].seed)
        moved = largest_difference(one.model, start)
    elif stage != "reward_model":  # from SFT
        moved = largest_difference(one.model, setting["sft"])
    else:  # the RM's head is new; its transformer started from SFT's
        start = setting["sft"]
        moved = max(
            (a - b).abs().max().item() for a, b in zip(one.model.base_model.parameters(), start.base_model.parameters())
        )
    assert moved > 100 * tolerance, (stage, moved, tolerance)
    # the logged loss is the global batch's, as one process logs it, to the same float32 yardstick
    for mine, theirs, reordered in zip(result["history"], one.history, reversed_rows.history):
        noise = abs(reordered["loss"] - theirs["loss"])
        assert abs(mine["loss"] - theirs["loss"]) <= max(4 * noise, 16 * FLOAT32_ULP * abs(theirs["loss"]))


def test_the_launched_sft_policy_loads_as_a_plain_causal_lm(setting, launched):
    assert load_causal_lm(setting["where"] / "job-sft" / OUTPUT).config.n_embd == setting["cfg"].model.n_embd
