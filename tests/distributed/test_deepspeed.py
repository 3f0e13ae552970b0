"""Every stage under the DeepSpeed profiles (infra/accelerate/deepspeed-zero2.yaml, deepspeed-zero3.yaml), one ZeRO
engine per trained model (PPO: policy and critic), on DeepSpeed's CPU accelerator (gloo), launched as the Prefect task
launches it.

Known answers (tolerances stated):
  - ZeRO-2 with one process is the plain optimiser on a flat copy of the parameters: after 4 iterations the weights
    equal the plain one-process PPO's to the float32 yardstick of tests/stage_jobs.py (4x what reversing every batch's
    rows moves them on this machine, at least 16 ulps of the largest weight; a fixed 1e-6 failed at 1.06e-6 on an
    AVX-512 CPU); stopped after a checkpoint, it resumes to the weights of the run never stopped bit for bit;
  - ZeRO-3 over two processes, on the SAME_BATCH iteration that one process sees whole: both ranks end bit-identical,
    each held half of every model's parameters and optimiser state while training, the gathered weights equal one
    process's to the same yardstick (only the order of float sums differs), as DDP's do.
"""

from pathlib import Path

import pytest

from components.config import load_config
from components.models.builders import load_causal_lm
from components.models.runtime import Runtime
from components.task.lexicon import VOCABULARY
from components.training import recipe
from components.training.checkpoints import latest_checkpoint
from flows.execution.launcher import AccelerateProfile, accelerate_command, run_logged
from flows.execution.ppo_worker import POLICY, read_result
from flows.execution.runtimes import weights_digest
from flows.execution.stage_worker import OUTPUT, load_input, read_stage_result, write_stage_job
from tests.ppo_jobs import SAME_BATCH, job, one_plain_process, ppo_inputs
from tests.stage_jobs import ReversedRows, float32_yardstick, largest_difference, smoke

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return ppo_inputs(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def plain(inputs):
    """The SAME_BATCH iteration in one process, no DeepSpeed, no launcher."""
    return one_plain_process(inputs, job(inputs, Path(inputs["models"]) / "unused-job", SAME_BATCH))


@pytest.fixture(scope="module")
def yardstick(inputs, plain) -> float:
    """How far float32 rounding alone moves that iteration's weights on this machine (tests/stage_jobs.py)."""
    cfg = job(inputs, Path(inputs["models"]) / "unused-reversed-job", SAME_BATCH)
    return float32_yardstick(plain.model, one_plain_process(inputs, cfg, runtime=ReversedRows()).model)


def launch_deepspeed(inputs, job_dir: Path, zero_stage: int, processes: int) -> dict:
    job(inputs, job_dir, SAME_BATCH)
    profile = AccelerateProfile.read(REPO / f"infra/accelerate/deepspeed-zero{zero_stage}.yaml")
    command, env = accelerate_command(
        profile, "flows.execution.ppo_worker", ["--job", str(job_dir)], processes, use_cpu=True
    )
    run_logged(command, TIMEOUT, env=env, cwd=REPO, grace=5)
    return read_result(job_dir)


def test_zero3_on_two_processes_shards_every_model_and_matches_one_process(inputs, plain, yardstick, tmp_path):
    result = launch_deepspeed(inputs, tmp_path / "job", zero_stage=3, processes=2)
    assert result["deepspeed"]["zero_stage"] == 3 and result["world_size"] == 2
    assert len(set(result["rank_weight_digests"])) == 1  # the gathered weights are the same on both ranks
    for rank_held in result["deepspeed"]["rank_held"]:
        assert len(rank_held) == 2  # one engine each: the policy and the critic
        for engine in rank_held:  # half of each, padded up to an even split
            assert engine["parameters"] // 2 <= engine["parameters_held"] <= engine["parameters"] // 2 + 1
            assert engine["optimizer_elements_held"] == engine["parameters_held"]
    launched = load_causal_lm(tmp_path / "job" / POLICY)
    assert weights_digest(launched) == result["rank_weight_digests"][0]
    assert largest_difference(launched, plain.model) <= yardstick
    for key in ("rm_score", "kl", "response_length", "entropy"):
        assert result["history"][0][key] == pytest.approx(plain.history[0][key], abs=1e-5), key


class Interrupt(Exception):
    pass


RESUMABLE = ["ppo.iterations=4", "ppo.checkpoint_every=2", "ppo.rollout_batch_size=16", "ppo.minibatch_size=8"]


def test_zero2_in_one_process_matches_plain_ppo_and_an_interrupted_run_resumes_bit_for_bit(inputs, tmp_path):
    """ZeRO-2 in one process is the plain optimiser on a flat copy of the parameters (only the order of the gradient
    norm's float sums differs): after 4 iterations its weights equal the plain run's within 1e-6. Stopped after its
    checkpoint at iteration 2, the same job resumes from the engines' own checkpoints (model and optimiser) and ends
    bit-identical to the run never stopped."""
    profile = AccelerateProfile.read(REPO / "infra/accelerate/deepspeed-zero2.yaml")

    def launch(job_dir: Path, checkpoints: Path | None, on_line=lambda line: None):
        job(inputs, job_dir, RESUMABLE, checkpoint_dir=checkpoints)
        command, env = accelerate_command(
            profile, "flows.execution.ppo_worker", ["--job", str(job_dir)], 1, use_cpu=True
        )
        run_logged(command, TIMEOUT, on_line, env=env, cwd=REPO, grace=5)
        return read_result(job_dir)

    never_stopped = launch(tmp_path / "never-stopped", None)
    plain = one_plain_process(inputs, job(inputs, tmp_path / "plain", RESUMABLE))
    reversed_rows = one_plain_process(inputs, job(inputs, tmp_path / "reversed", RESUMABLE), runtime=ReversedRows())
    launched = load_causal_lm(tmp_path / "never-stopped" / POLICY)
    assert largest_difference(launched, plain.model) <= float32_yardstick(plain.model, reversed_rows.model)
    for ours, theirs in zip(never_stopped["history"], plain.history):
        assert ours["rm_score"] == pytest.approx(theirs["rm_score"], abs=1e-5)

    def stop_after_iteration_3(line):
        if line.startswith("ppo iteration 3/4"):
            raise Interrupt(line)  # the launcher stops the rank (SIGTERM, then SIGKILL)

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        launch(tmp_path / "job", checkpoints, stop_after_iteration_3)
    saved = latest_checkpoint(checkpoints)
    assert saved is not None and saved.iteration == 2 and "policy" not in saved.tensors
    assert {path.name for path in saved.engines.iterdir()} == {"policy", "critic"}
    # the engines' shards are no whole state dict: a run without DeepSpeed refuses to resume from them
    with pytest.raises(ValueError, match="written with DeepSpeed"):
        one_plain_process(inputs, job(inputs, tmp_path / "plain-resume", RESUMABLE), checkpoint_dir=str(checkpoints))

    resumed = launch(tmp_path / "job", checkpoints)
    assert [h["iteration"] for h in resumed["history"]] == [0, 1, 2, 3]
    assert resumed["rank_weight_digests"] == never_stopped["rank_weight_digests"]


# --- the supervised stages under DeepSpeed ----------------------------------------------------------------------

SUPERVISED = ["sft.warmup_steps=0", "reward.warmup_steps=0"]
# chosen with adapters: a whole epoch, no warm-up, no snapshot selection (a sampled choice could part on a near tie)
LORA_CHOSEN = [
    "model.peft={r: 4}",
    "baselines.chosen.warmup_steps=0",
    "baselines.chosen.epochs=1",
    "selection.candidates=1",
]


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    """The smoke SFT policy and its comparisons; the SFT, reward-model and adapted chosen jobs over them, and each
    stage in one plain process, with its batches' rows in order and reversed."""
    where = tmp_path_factory.mktemp("supervised")
    made = smoke(load_config("smoke", SUPERVISED), where)
    cfg, tokenizer, sft, comparisons, prompts = made.cfg, made.tokenizer, made.sft, made.comparisons, made.prompts
    from_sft = {"sft": (made.sft_dir, "policy")}
    adapted = load_config("smoke", [*SUPERVISED, *LORA_CHOSEN])
    jobs = {  # stage: (call, config, arguments, input models)
        "sft": ("sft", cfg, {"demonstrations": made.demonstrations}, {}),
        "reward_model": ("reward_model", cfg, {"comparisons": comparisons, "train_prompts": prompts}, from_sft),
        "chosen_lora": ("baseline", adapted, {"name": "chosen", "comparisons": comparisons}, from_sft),
    }
    plain = {}
    for suffix, runtime in (("", Runtime()), ("_reversed", ReversedRows())):
        plain["sft" + suffix] = recipe.sft_stage(cfg, tokenizer, made.demonstrations, runtime=runtime)
        plain["reward_model" + suffix] = recipe.reward_stage(cfg, tokenizer, sft, comparisons, prompts, runtime=runtime)
        plain["chosen_lora" + suffix] = recipe.baseline_stage(
            adapted, "chosen", tokenizer, sft, comparisons, runtime=runtime
        )
    return {"where": where, "jobs": jobs, "plain": plain}


def launch_stages(supervised: dict, name: str, profile_changes: dict, processes: int, stages: list[str]) -> dict:
    import yaml

    where = supervised["where"] / name
    where.mkdir()
    raw = yaml.safe_load((REPO / "infra/accelerate/deepspeed-zero3.yaml").read_text())
    raw["deepspeed_config"] = {**raw["deepspeed_config"], **profile_changes}
    (where / "profile.yaml").write_text(yaml.safe_dump(raw))
    jobs = []
    for stage in stages:
        call, cfg, args, models = supervised["jobs"][stage]
        write_stage_job(where / stage, call, cfg, args, models, VOCABULARY, 1000)
        jobs += ["--job", str(where / stage)]
    profile = AccelerateProfile.read(where / "profile.yaml")
    command, env = accelerate_command(profile, "flows.execution.stage_worker", jobs, processes, use_cpu=True)
    run_logged(command, TIMEOUT, env=env, cwd=REPO, grace=5)
    return {stage: read_stage_result(where / stage) | {"dir": where / stage} for stage in stages}


def test_sft_the_reward_model_and_an_adapted_baseline_under_zero3_on_two_processes_take_one_process_s_steps(
    supervised,
):
    """The gathered weights (the 16-bit ones zero3_save_16bit_model asks for: fp32 on a CPU without mixed precision),
    adapters merged, equal one plain process's to the float32 yardstick of tests/distributed/test_stage_launch.py."""
    results = launch_stages(supervised, "zero3", {}, 2, ["sft", "reward_model", "chosen_lora"])
    for stage, kind in (("sft", "policy"), ("reward_model", "reward_model"), ("chosen_lora", "policy")):
        result = results[stage]
        assert result["processes"] == 2 and result["zero_stage"] == 3 and len(set(result["rank_weight_digests"])) == 1
        launched = load_input(str(result["dir"] / OUTPUT), kind)
        one, reversed_rows = supervised["plain"][stage].model, supervised["plain"][f"{stage}_reversed"].model
        difference = largest_difference(launched, one)
        assert difference <= float32_yardstick(one, reversed_rows), (stage, difference)


def test_an_offloaded_optimiser_is_honoured_and_takes_the_same_steps(supervised):
    """offload_optimizer_device: cpu under ZeRO-2: the engine says it offloads, and the weights equal one plain
    process's to the same yardstick (on a CPU the offload moves nothing: it is the same arithmetic)."""
    [result] = launch_stages(
        supervised,
        "zero2-offload",
        {"zero_stage": 2, "offload_optimizer_device": "cpu", "zero3_save_16bit_model": False},
        2,
        ["sft"],
    ).values()
    assert result["zero_stage"] == 2 and result["offload_optimizer"] is True and result["offload_parameters"] is False
    launched = load_input(str(result["dir"] / OUTPUT), "policy")
    one, reversed_rows = supervised["plain"]["sft"].model, supervised["plain"]["sft_reversed"].model
    assert largest_difference(launched, one) <= float32_yardstick(one, reversed_rows)
