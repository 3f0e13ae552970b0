"""The PPO stage as its own program, for `accelerate launch` (one process, N processes, N machines).

    accelerate launch --config_file infra/accelerate/<profile>.yaml -m flows.execution.ppo_worker --job JOB_DIR

A profile of one process on one machine needs no launcher: the flow runs the same job in its own process
(``run_in_process``), unless ``distributed.launch`` is ``accelerate``.

``JOB_DIR/job.json`` (written by ``PPOJob.write``) holds the resolved config, the input model
directories, the prompt and demonstration files, the checkpoint directory and, optionally, the
MLflow run to log live to. Every rank trains; rank 0 alone prints progress, logs to MLflow and
writes ``JOB_DIR/policy`` (HF layout, atomic) and ``JOB_DIR/result.json`` (metrics, history,
every rank's weight digest). Checkpoints are written by rank 0 inside ``train_ppo``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from components.config import Config
from components.io import write_json
from components.models.runtime import DeepSpeedRuntime
from components.training.checkpoints import latest_checkpoint
from components.training.loop import Harness, NonFiniteError, Snapshots
from flows.execution.launcher import die_with_parent, leave_rank
from flows.execution.progress import Clock, progress_line
from flows.execution.runtimes import (
    forget_accelerate_state,
    make_runtime,
    peak_memory_bytes,
    quiet_libraries,
    warnings_quieted,
    weights_digest,
)

JOB, RESULT, POLICY, SNAPSHOTS = "job.json", "result.json", "policy", "snapshots"
NON_FINITE, JUDGE_FAILED = "non-finite", "judge-failed"  # what a rank records before it dies
PROGRESS_KEYS = ("rm_score", "kl", "gold", "policy_loss")


@dataclass(frozen=True)
class PPOJob:
    """Everything a launched PPO run reads, written into one directory the ranks (on every machine) can see."""

    cfg: Config
    sft_dir: str | Path
    reward_model_dir: str | Path
    prompts: list[str]
    demonstrations: list[dict]
    checkpoint_dir: str | Path | None = None
    mlflow: dict | None = None  # {"uri": ..., "run_id": ...}: rank 0 logs each iteration there while training
    vocabulary: frozenset[str] | None = None  # the word tokenizer's
    start_dir: str | Path | None = None  # a later labelling round's policy to continue
    snapshot_dir: str | Path | None = None  # set when written: beside the checkpoints, so a resumed run keeps them

    def write(self, job_dir: str | Path) -> Path:
        job_dir = Path(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        write_json(job_dir / "prompts.json", self.prompts)
        write_json(job_dir / "demonstrations.json", self.demonstrations)
        write_json(
            job_dir / JOB,
            {
                "config": self.cfg.model_dump(mode="json"),
                "sft_dir": str(self.sft_dir),
                "reward_model_dir": str(self.reward_model_dir),
                "start_dir": str(self.start_dir) if self.start_dir else None,
                "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
                "snapshot_dir": str(snapshot_dir(job_dir, self.checkpoint_dir)),
                "mlflow": self.mlflow,
                "vocabulary": sorted(self.vocabulary) if self.vocabulary is not None else None,
            },
        )
        return job_dir

    @classmethod
    def read(cls, job_dir: str | Path) -> PPOJob:
        job_dir = Path(job_dir)
        job = json.loads((job_dir / JOB).read_text(encoding="utf-8"))
        vocabulary = job.get("vocabulary")
        return cls(
            cfg=Config.model_validate(job["config"]),
            sft_dir=job["sft_dir"],
            reward_model_dir=job["reward_model_dir"],
            prompts=json.loads((job_dir / "prompts.json").read_text(encoding="utf-8")),
            demonstrations=json.loads((job_dir / "demonstrations.json").read_text(encoding="utf-8")),
            checkpoint_dir=job["checkpoint_dir"],
            mlflow=job["mlflow"],
            vocabulary=frozenset(vocabulary) if vocabulary is not None else None,
            start_dir=job.get("start_dir"),
            snapshot_dir=job["snapshot_dir"],
        )


def snapshot_dir(job_dir: str | Path, checkpoint_dir: str | Path | None) -> Path:
    return Path(checkpoint_dir if checkpoint_dir else job_dir) / SNAPSHOTS


@dataclass
class SavedSnapshots(Snapshots):
    """The selection candidates written as model directories ``iteration-NNNNNN`` (rank 0 takes them)."""

    directory: Path = Path(SNAPSHOTS)
    tokenizer: object = None

    def take(self, step: int, model) -> None:
        from components.models import lora
        from components.models.saving import save_model

        card = {"stage": "ppo", "iteration": step}
        save_model(lora.merged(model), self.tokenizer, self.directory / f"iteration-{step:06d}", card)


def saved_snapshots(cfg: Config, job: PPOJob, tokenizer) -> SavedSnapshots | None:
    """Where the job's selection candidates go: none to take when selection keeps the last iteration."""
    if cfg.selection.candidates <= 1:
        return None
    return SavedSnapshots(
        cfg.selection.candidates, cfg.selection.spacing, directory=Path(job.snapshot_dir), tokenizer=tokenizer
    )


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


class LiveLog:
    """Rank 0's per-iteration callback: a progress line on stdout (streamed by the launcher), metrics to
    MLflow. The MLflow part is best effort: a tracking server that stays away longer than the client's
    own retries stops it, not the training; the flow logs the iterations it missed when PPO ends."""

    def __init__(
        self, cfg: Config, mlflow: dict | None, echo: Callable[[str], None], beat: Callable[[], None] = lambda: None
    ):
        self.run, self.iterations, self.echo, self.beat = None, cfg.ppo.iterations, echo, beat
        if mlflow:
            from components.adapters.tracking import StageRun

            self.run = StageRun.at(mlflow["uri"], mlflow["run_id"])
        self.every = max(1, cfg.ppo.iterations // 10)
        self.first, self.stopped = None, None  # iterations logged to MLflow: [first, stopped)
        self.clock = Clock()

    def __call__(self, iteration: int, entry: dict) -> None:
        self.beat()  # the in-process deadline (flows/execution/deadlines.py)
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
            self.echo(progress_line("ppo", "iteration", iteration + 1, self.iterations, self.clock, shown))

    def logged(self) -> list[int]:
        """[first, last + 1) of the iterations this launch logged to MLflow."""
        if self.first is None:
            return [0, 0]
        return [self.first, self.iterations if self.stopped is None else self.stopped]


def say(line: str) -> None:
    # One write per line: the ranks share one pipe, and print's separate newline (unbuffered output) can land after
    # another rank's line.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=Path, required=True, help="directory holding job.json")
    job_dir = parser.parse_args(argv).job
    die_with_parent()  # the ranks end when their launcher does, whoever killed it
    quiet_libraries()
    run_job(job_dir, say)
    return 0


def run_in_process(
    job_dir: str | Path, echo: Callable[[str], None], use_cpu: bool, beat: Callable[[], None] = lambda: None
) -> None:
    """The job in the calling process (one process, one machine: no launcher). The caller's random state is put back
    after, so the stages that follow draw exactly what they would after a launched PPO, and accelerate's is cleared."""
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())), warnings_quieted():
            run_job(Path(job_dir), echo, use_cpu, beat)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        forget_accelerate_state()


def run_job(
    job_dir: Path, echo: Callable[[str], None], use_cpu: bool | None = None, beat: Callable[[], None] = lambda: None
) -> None:
    """Every rank trains the job in ``job_dir``; rank 0 writes the policy and the result beside it."""
    job = PPOJob.read(job_dir)
    cfg = job.cfg
    runtime = make_runtime(cfg, use_cpu)
    echo(
        f"rank {runtime.rank}/{runtime.world_size} pid {os.getpid()} device {runtime.device} "
        f"threads {torch.get_num_threads()}"
    )

    from components.evaluation.judges import JudgeError, ppo_monitor_judge
    from components.evaluation.report import judge_monitor
    from components.models.builders import load_causal_lm
    from components.models.ensemble import load_reward_model
    from components.models.saving import save_model
    from components.training import recipe
    from flows.execution.task_choice import environment_for

    tokenizer = recipe.make_tokenizer(cfg, job.vocabulary)
    sft, reward_model = load_causal_lm(job.sft_dir), load_reward_model(job.reward_model_dir)
    start = load_causal_lm(job.start_dir) if job.start_dir else None
    environment = environment_for(cfg)
    gold = environment.gold if environment is not None else None
    judge = ppo_monitor_judge(
        cfg.evaluation.judge,
        cfg.model,
        gold,
        [str(job.reward_model_dir)],
        str(runtime.device),
        cfg.timeouts.judge_call_seconds,
    )
    monitor = judge_monitor(judge) if judge is not None else None
    resumable = latest_checkpoint(job.checkpoint_dir) if runtime.is_main else None
    if resumable is not None:
        for reason in resumable.passed_over:
            echo(f"ppo passes over a damaged checkpoint, {reason}")
        echo(f"ppo resumes from the checkpoint after iteration {resumable.iteration} in {job.checkpoint_dir}")
    started = time.perf_counter()
    live = LiveLog(cfg, job.mlflow, echo, beat) if runtime.is_main else None
    try:
        result = recipe.ppo_stage(
            cfg,
            tokenizer,
            sft,
            reward_model,
            job.prompts,
            job.demonstrations,
            start,
            Harness(runtime, live, saved_snapshots(cfg, job, tokenizer), job.checkpoint_dir, monitor),
        )
    except NonFiniteError as error:  # the caller re-raises it as itself, not as a dead launch
        write_json(
            job_dir / f"{NON_FINITE}-rank{runtime.rank}.json",
            {"stage": error.stage, "step": error.step, "what": error.what},
        )
        raise
    except JudgeError as error:  # the judge watching PPO raised or returned a non-number: named as such
        write_json(job_dir / f"{JUDGE_FAILED}-rank{runtime.rank}.json", {"message": str(error)})
        raise
    digests = runtime.gather_objects(weights_digest(result.model))
    peaks = runtime.gather_objects(peak_memory_bytes(runtime.device))
    held = runtime.gather_objects(runtime.held()) if isinstance(runtime, DeepSpeedRuntime) else None
    if runtime.is_main:
        save_model(result.model, tokenizer, job_dir / POLICY, {"stage": "ppo", "metrics": result.metrics})
        write_json(
            job_dir / RESULT,
            {
                "metrics": result.metrics,
                "history": result.history,
                "seconds": round(time.perf_counter() - started, 2),
                "world_size": runtime.world_size,
                "rank_weight_digests": digests,
                "rank_peak_memory_bytes": peaks,  # in process: the flow's own peak, not PPO's alone
                "threads_per_process": torch.get_num_threads(),
                "device": str(runtime.device),
                "mixed_precision": runtime.accelerator.mixed_precision,
                "live_logged": live.logged(),
                # DeepSpeed: per rank, per engine (policy, critic), the parameter and optimiser elements it held
                "deepspeed": {"zero_stage": runtime.zero_stage, "rank_held": held} if held else None,
            },
        )
        echo(f"ppo done: {runtime.world_size} process(es), {result.seconds:.1f} s")
    runtime.accelerator.wait_for_everyone()
    runtime.accelerator.end_training()


if __name__ == "__main__":
    leave_rank(main())
