"""PPO under the DeepSpeed profiles (infra/accelerate/deepspeed-zero2.yaml, deepspeed-zero3.yaml), one ZeRO engine
per trained model (policy, critic), on DeepSpeed's CPU accelerator (gloo), launched as the Prefect task launches it.

Known answers (tolerances stated):
  - ZeRO-2 with one process is the plain optimiser on a flat copy of the parameters: after 4 iterations the weights
    equal the plain one-process PPO's within 1e-6 (measured: equal after one iteration; after 4, histories equal to
    1e-7); stopped after a checkpoint, it resumes to the weights of the run never stopped bit for bit;
  - ZeRO-3 over two processes, on the SAME_BATCH iteration that one process sees whole: both ranks end bit-identical,
    each held half of every model's parameters and optimiser state while training, the gathered weights equal one
    process's within 1e-6 (measured 3.7e-9: only the order of float sums differs), as DDP's do.
"""

from pathlib import Path

import pytest

from components.models.builders import load_causal_lm
from components.training.checkpoints import latest_checkpoint
from flows.launcher import AccelerateProfile, accelerate_command, run_logged
from flows.ppo_worker import POLICY, read_result
from flows.runtimes import weights_digest
from tests.ppo_jobs import SAME_BATCH, job, one_plain_process, ppo_inputs

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


def launch_deepspeed(inputs, job_dir: Path, zero_stage: int, processes: int) -> dict:
    job(inputs, job_dir, SAME_BATCH)
    profile = AccelerateProfile.read(REPO / f"infra/accelerate/deepspeed-zero{zero_stage}.yaml")
    command, env = accelerate_command(profile, "flows.ppo_worker", ["--job", str(job_dir)], processes, use_cpu=True)
    run_logged(command, TIMEOUT, env=env, cwd=REPO, grace=5)
    return read_result(job_dir)


def test_zero3_on_two_processes_shards_every_model_and_matches_one_process(inputs, plain, tmp_path):
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
    difference = max((a - b).abs().max().item() for a, b in zip(launched.parameters(), plain.model.parameters()))
    assert difference < 1e-6
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
        command, env = accelerate_command(profile, "flows.ppo_worker", ["--job", str(job_dir)], 1, use_cpu=True)
        run_logged(command, TIMEOUT, on_line, env=env, cwd=REPO, grace=5)
        return read_result(job_dir)

    never_stopped = launch(tmp_path / "never-stopped", None)
    plain = one_plain_process(inputs, job(inputs, tmp_path / "plain", RESUMABLE))
    launched = load_causal_lm(tmp_path / "never-stopped" / POLICY)
    difference = max((a - b).abs().max().item() for a, b in zip(launched.parameters(), plain.model.parameters()))
    assert difference < 1e-6
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
