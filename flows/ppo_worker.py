"""The PPO stage as its own program, for `accelerate launch` (one process, N processes, N machines).

    accelerate launch --config_file infra/accelerate/<profile>.yaml -m flows.ppo_worker --job JOB_DIR

A profile of one process on one machine needs no launcher: the flow runs the same job in its own process
(``run_in_process``), unless ``distributed.launch`` is ``accelerate``.

``JOB_DIR/job.json`` (written by ``write_job``) holds the resolved config, the input model
directories, the prompt and demonstration files, the checkpoint directory and, optionally, the
MLflow run to log live to. Every rank trains; rank 0 alone prints progress, logs to MLflow and
writes ``JOB_DIR/policy`` (HF layout, atomic) and ``JOB_DIR/result.json`` (metrics, history,
every rank's weight digest). Checkpoints are written by rank 0 inside ``train_ppo``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from components.config import Config
from components.io import write_json
from components.training.checkpoints import latest_checkpoint
from components.training.loop import NonFiniteError, Snapshots
from components.training.ranks import DeepSpeedRanks, Ranks
from flows.launcher import die_with_parent

JOB, RESULT, POLICY, SNAPSHOTS = "job.json", "result.json", "policy", "snapshots"
NON_FINITE, JUDGE_FAILED = "non-finite", "judge-failed"  # what a rank records before it dies
PROGRESS_KEYS = ("rm_score", "kl", "gold", "policy_loss")


def write_job(
    job_dir: str | Path,
    cfg: Config,
    sft_dir: str | Path,
    reward_model_dir: str | Path,
    prompts: list[str],
    demonstrations: list[dict],
    checkpoint_dir: str | Path | None,
    mlflow: dict | None = None,
    vocabulary: frozenset[str] | None = None,
    start_dir: str | Path | None = None,
) -> Path:
    """Everything a launched PPO run reads, in one directory the ranks (on every machine) can see."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "prompts.json", prompts)
    write_json(job_dir / "demonstrations.json", demonstrations)
    write_json(
        job_dir / JOB,
        {
            "config": cfg.model_dump(mode="json"),
            "sft_dir": str(sft_dir),
            "reward_model_dir": str(reward_model_dir),
            "start_dir": str(start_dir) if start_dir else None,  # a later labelling round's policy to continue
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            # beside the checkpoints, so a resumed run keeps the snapshots taken before it stopped
            "snapshot_dir": str(snapshot_dir(job_dir, checkpoint_dir)),
            "mlflow": mlflow,  # {"uri": ..., "run_id": ...}: rank 0 logs each iteration there while training
            "vocabulary": sorted(vocabulary) if vocabulary is not None else None,  # the word tokenizer's
        },
    )
    return job_dir


def snapshot_dir(job_dir: str | Path, checkpoint_dir: str | Path | None) -> Path:
    return Path(checkpoint_dir if checkpoint_dir else job_dir) / SNAPSHOTS


@dataclass
class SavedSnapshots(Snapshots):
    """The selection candidates written as model directories ``iteration-NNNNNN`` (rank 0 takes them)."""

    directory: Path = Path(SNAPSHOTS)
    tokenizer: object = None

    def take(self, step: int, model) -> None:
        from components.models.saving import save_model

        save_model(model, self.tokenizer, self.directory / f"iteration-{step:06d}", {"stage": "ppo", "iteration": step})


def read_snapshots(directory: str | Path) -> list[tuple[int, dict]]:
    """(iteration, state dict) of every saved snapshot, in order."""
    from components.models.builders import load_causal_lm

    paths = sorted(Path(directory).glob("iteration-*")) if Path(directory).is_dir() else []
    return [(int(path.name.split("-")[1]), load_causal_lm(path).state_dict()) for path in paths]


def raise_recorded_failure(job_dir: str | Path) -> None:
    """Re-raise the NaN/inf or the judge's failure a rank recorded before it died (a launch's failure would
    otherwise hide it)."""
    for path in sorted(Path(job_dir).glob(f"{NON_FINITE}-rank*.json")):
        found = json.loads(path.read_text(encoding="utf-8"))
        raise NonFiniteError(found["stage"], found["step"], found["what"])
    for path in sorted(Path(job_dir).glob(f"{JUDGE_FAILED}-rank*.json")):
        from components.evaluation.judges import JudgeError

        raise JudgeError(json.loads(path.read_text(encoding="utf-8"))["message"])


def read_result(job_dir: str | Path) -> dict:
    path = Path(job_dir) / RESULT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the PPO launch exited without writing its result")
    return json.loads(path.read_text(encoding="utf-8"))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order: equal digests = bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory: the GPU's allocated peak on a GPU, else the resident set's peak."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def resolve_mixed_precision(setting: str, use_cpu: bool, cpu_precision: str = "fp32") -> str:
    if use_cpu:
        # CPU ranks run at the whole run's model.cpu_precision, autocast by accelerate around each forward pass
        return "bf16" if cpu_precision == "bf16" else "no"
    if setting == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return setting


def make_ranks(cfg: Config, use_cpu: bool | None = None) -> Ranks:
    """``use_cpu`` None: as `accelerate launch` said (ACCELERATE_USE_CPU), or the CPU where there is no GPU."""
    from accelerate import Accelerator

    if use_cpu is None:
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    use_cpu = use_cpu or not torch.cuda.is_available()
    mixed_precision = resolve_mixed_precision(cfg.distributed.mixed_precision, use_cpu, cfg.model.cpu_precision)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        return deepspeed_ranks(cfg, mixed_precision)
    return Ranks(Accelerator(cpu=use_cpu, mixed_precision=mixed_precision))


def deepspeed_ranks(cfg: Config, mixed_precision: str) -> DeepSpeedRanks:
    """A DeepSpeed profile's ranks: accelerate sets up the processes and reads the profile's ZeRO stage; the engines
    (one per trained model) are DeepSpeed's own. On a machine without GPUs, DeepSpeed runs on its CPU accelerator
    (``DS_ACCELERATOR=cpu``, gloo), in fp32."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        mixed_precision = "no"
        handlers = [InitProcessGroupKwargs(backend="gloo")]  # accelerate names no CPU backend for DeepSpeed itself
        import deepspeed.ops

        # On CPU ranks DeepSpeed's communication set-up probes a compiler for every op it has (~5 s a rank) and
        # compiles a shared-memory all-reduce (~30 s, once per machine). PPO uses neither (ZeRO's collectives run on
        # gloo, the optimiser is torch's AdamW), so it is told that no op can be built.
        deepspeed.ops.__compatible_ops__ = {}
    accelerator = Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers)
    plugin = accelerator.state.deepspeed_plugin
    # models load whole on every rank (the recipe copies them: policy and reference from SFT, critic from the RM)
    # and each engine shards its own; transformers would otherwise build them already sharded under ZeRO-3
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return DeepSpeedRanks(accelerator, plugin.zero_stage, mixed_precision == "bf16", cfg.ppo.max_grad_norm)


class LiveLog:
    """Rank 0's per-iteration callback: a progress line on stdout (streamed by the launcher), metrics to
    MLflow. The MLflow part is best effort: a tracking server that stays away longer than the client's
    own retries stops it, not the training; the flow logs the iterations it missed when PPO ends."""

    def __init__(self, cfg: Config, mlflow: dict | None, echo: Callable[[str], None]):
        self.run, self.iterations, self.echo = None, cfg.ppo.iterations, echo
        if mlflow:
            from mlflow import MlflowClient

            from components.adapters.tracking import StageRun

            self.run = StageRun(MlflowClient(mlflow["uri"]), mlflow["run_id"])
        self.every = max(1, cfg.ppo.iterations // 10)
        self.first, self.stopped = None, None  # iterations logged to MLflow: [first, stopped)

    def __call__(self, iteration: int, entry: dict) -> None:
        if self.run is not None and self.stopped is None:
            self.first = iteration if self.first is None else self.first
            try:
                self.run.log_metrics({k: v for k, v in entry.items() if k != "iteration"}, step=iteration)
            except Exception as error:
                self.stopped = iteration
                self.echo(
                    f"ppo: live MLflow logging stopped at iteration {iteration + 1} "
                    f"({type(error).__name__}: {str(error)[:200]}); "
                    "training goes on and the missed iterations are logged when PPO ends"
                )
        if iteration % self.every == 0 or iteration == self.iterations - 1:
            shown = ", ".join(f"{k} {entry[k]:.3f}" for k in PROGRESS_KEYS if k in entry)
            self.echo(f"ppo iteration {iteration + 1}/{self.iterations}: {shown}")

    def logged(self) -> list[int]:
        """[first, last + 1) of the iterations this launch logged to MLflow."""
        if self.first is None:
            return [0, 0]
        return [self.first, self.iterations if self.stopped is None else self.stopped]


def quiet_libraries() -> None:
    """Only this program's own lines reach the task log: no progress bars or advice from transformers."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def say(line: str) -> None:
    print(line, flush=True)  # the launcher streams each rank's stdout into the task's log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, required=True, help="directory holding job.json")
    job_dir = parser.parse_args(argv).job
    die_with_parent()  # the ranks end when their launcher does, whoever killed it
    quiet_libraries()
    run_job(job_dir, say)
    return 0


def run_in_process(job_dir: str | Path, echo: Callable[[str], None], use_cpu: bool) -> None:
    """The job in the calling process (one process, one machine: no launcher). The caller's random state is put back
    after, so the stages that follow draw exactly what they would after a launched PPO, and accelerate's is cleared."""
    import numpy as np
    from accelerate.state import AcceleratorState, GradientState

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())), warnings_quieted():
            run_job(Path(job_dir), echo, use_cpu)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        # accelerate's state is process-wide: leave none behind, so a later job may choose its own device and precision
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@contextlib.contextmanager
def warnings_quieted():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_job(job_dir: Path, echo: Callable[[str], None], use_cpu: bool | None = None) -> None:
    """Every rank trains the job in ``job_dir``; rank 0 writes the policy and the result beside it."""
    job = json.loads((job_dir / JOB).read_text(encoding="utf-8"))
    cfg = Config.model_validate(job["config"])
    ranks = make_ranks(cfg, use_cpu)
    echo(
        f"rank {ranks.rank}/{ranks.world_size} pid {os.getpid()} device {ranks.device} "
        f"threads {torch.get_num_threads()}"
    )

    from components.evaluation.judges import JudgeError, ppo_monitor_judge
    from components.evaluation.report import judge_monitor
    from components.models.builders import load_causal_lm
    from components.models.ensemble import load_reward_model
    from components.models.saving import save_model
    from components.training import recipe
    from flows.environment import environment_for

    vocabulary = job.get("vocabulary")
    tokenizer = recipe.make_tokenizer(cfg, frozenset(vocabulary) if vocabulary is not None else None)
    sft, reward_model = load_causal_lm(job["sft_dir"]), load_reward_model(job["reward_model_dir"])
    start = load_causal_lm(job["start_dir"]) if job.get("start_dir") else None
    prompts = json.loads((job_dir / "prompts.json").read_text(encoding="utf-8"))
    demonstrations = json.loads((job_dir / "demonstrations.json").read_text(encoding="utf-8"))
    environment = environment_for(cfg)
    gold = environment.gold if environment is not None else None
    judge = ppo_monitor_judge(cfg.evaluation.judge, cfg.model, gold, [job["reward_model_dir"]])
    monitor = judge_monitor(judge) if judge is not None else None
    resumable = latest_checkpoint(job["checkpoint_dir"]) if ranks.is_main else None
    if resumable is not None:
        echo(f"ppo resumes from the checkpoint after iteration {resumable.iteration} in {job['checkpoint_dir']}")
    started = time.perf_counter()
    live = LiveLog(cfg, job["mlflow"], echo) if ranks.is_main else None
    try:
        result = recipe.ppo_stage(
            cfg,
            tokenizer,
            sft,
            reward_model,
            prompts,
            demonstrations,
            monitor=monitor,
            log=live,
            checkpoint_dir=job["checkpoint_dir"],
            ranks=ranks,
            snapshots=SavedSnapshots(cfg.selection.candidates, directory=Path(job["snapshot_dir"]), tokenizer=tokenizer)
            if cfg.selection.candidates > 1
            else None,
            start=start,
        )
    except NonFiniteError as error:  # the caller re-raises it as itself, not as a dead launch
        write_json(
            job_dir / f"{NON_FINITE}-rank{ranks.rank}.json",
            {"stage": error.stage, "step": error.step, "what": error.what},
        )
        raise
    except JudgeError as error:  # the judge watching PPO raised or returned a non-number: named as such
        write_json(job_dir / f"{JUDGE_FAILED}-rank{ranks.rank}.json", {"message": str(error)})
        raise
    digests = ranks.gather_objects(weights_digest(result.model))
    peaks = ranks.gather_objects(peak_memory_bytes(ranks.device))
    held = ranks.gather_objects(ranks.held()) if isinstance(ranks, DeepSpeedRanks) else None
    if ranks.is_main:
        save_model(result.model, tokenizer, job_dir / POLICY, {"stage": "ppo", "metrics": result.metrics})
        write_json(
            job_dir / RESULT,
            {
                "metrics": result.metrics,
                "history": result.history,
                "seconds": round(time.perf_counter() - started, 2),
                "world_size": ranks.world_size,
                "rank_weight_digests": digests,
                "rank_peak_memory_bytes": peaks,  # in process: the flow's own peak, not PPO's alone
                "threads_per_process": torch.get_num_threads(),
                "device": str(ranks.device),
                "mixed_precision": ranks.accelerator.mixed_precision,
                "live_logged": live.logged(),
                # DeepSpeed: per rank, per engine (policy, critic), the parameter and optimiser elements it held
                "deepspeed": {"zero_stage": ranks.zero_stage, "rank_held": held} if held else None,
            },
        )
        echo(f"ppo done: {ranks.world_size} process(es), {result.seconds:.1f} s")
    ranks.accelerator.wait_for_everyone()
    ranks.accelerator.end_training()


if __name__ == "__main__":
    raise SystemExit(main())
