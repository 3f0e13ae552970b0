"""A stage that trains or decodes (flows/execution/stage_calls.py: SFT, comparisons, the reward model, a supervised
baseline,
iterative DPO, the held-out decodings) as its own program, for `accelerate launch` (N processes, N machines, DeepSpeed):

    accelerate launch --config_file infra/accelerate/<profile>.yaml -m flows.execution.stage_worker --job JOB_DIR

``JOB_DIR/job.json`` (written by ``write_stage_job``) names the call, the resolved config, the vocabulary and each
input model's directory and kind; ``JOB_DIR/args.json`` holds the call's plain inputs. Every rank runs the call on
its runtime; rank 0 alone prints progress and writes ``JOB_DIR/output`` (a model in HF layout, atomic, or
``output.json`` for rows and responses) and ``JOB_DIR/result.json`` (metrics, history, seconds, every rank's weight
digest and peak memory, where it ran). The PPO stage has its own worker (flows/execution/ppo_worker.py): checkpoints,
live
MLflow logging and snapshots on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from components.config import Config
from components.io import write_json
from components.training.loop import TOTAL_STEPS, NonFiniteError
from flows.execution import stage_calls
from flows.execution.launcher import die_with_parent, leave_rank
from flows.execution.ppo_worker import NON_FINITE, RESULT, say
from flows.execution.progress import Clock, progress_line
from flows.execution.runtimes import make_runtime, peak_memory_bytes, quiet_libraries, weights_digest

JOB, ARGS, OUTPUT, OUTPUT_ROWS = "job.json", "args.json", "output", "output.json"
LOADERS = ("policy", "reward_model")  # the kinds of input model a job names


def write_stage_job(
    job_dir: str | Path,
    call: str,
    cfg: Config,
    args: dict,
    models: dict[str, tuple[str | Path, str]],
    vocabulary: frozenset[str] | None,
    progress_every: int,
) -> Path:
    """Everything a launched stage reads, in one directory the ranks (on every machine) can see. ``models``: name ->
    (directory, kind), kind "policy" or "reward_model"."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / ARGS, args)
    write_json(
        job_dir / JOB,
        {
            "call": call,
            "config": cfg.model_dump(mode="json"),
            "models": {name: {"dir": str(directory), "kind": kind} for name, (directory, kind) in models.items()},
            "vocabulary": sorted(vocabulary) if vocabulary is not None else None,
            "progress_every": progress_every,
        },
    )
    return job_dir


def read_stage_result(job_dir: str | Path) -> dict:
    path = Path(job_dir) / RESULT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the launched stage exited without writing its result")
    return json.loads(path.read_text(encoding="utf-8"))


def load_input(directory: str, kind: str):
    from components.models.builders import load_causal_lm
    from components.models.ensemble import load_reward_model

    if kind not in LOADERS:
        raise ValueError(f"unknown input model kind {kind!r} (known: {', '.join(LOADERS)})")
    return load_causal_lm(directory) if kind == "policy" else load_reward_model(directory)


def progress(
    call: str, every: int, echo: Callable[[str], None], beat: Callable[[], None] = lambda: None
) -> Callable[[int, dict], None]:
    """A stage's progress lines every ``every`` steps (rank 0's when launched; the flow's log in its own process);
    ``beat`` on every step (the stage's deadline, flows/execution/deadlines.py)."""

    clock = Clock()

    def log(step: int, entry: dict) -> None:
        beat()
        if step % every == 0 or step + 1 == entry[TOTAL_STEPS]:
            shown = ", ".join(
                f"{k} {v:.3f}" for k, v in entry.items() if k in ("loss", "accuracy") and isinstance(v, float)
            )
            echo(progress_line(call, "step", step + 1, entry[TOTAL_STEPS], clock, shown))

    return log


def run_job(job_dir: Path, echo: Callable[[str], None]) -> None:
    """Every rank runs the job's call; rank 0 writes the output and the result beside it."""
    job = json.loads((job_dir / JOB).read_text(encoding="utf-8"))
    cfg = Config.model_validate(job["config"])
    runtime = make_runtime(cfg)
    echo(
        f"rank {runtime.rank}/{runtime.world_size} pid {os.getpid()} device {runtime.device} "
        f"threads {torch.get_num_threads()} stage {job['call']}"
    )
    from components.models.saving import save_model
    from components.training import recipe
    from flows.execution.task_choice import environment_for

    vocabulary = job.get("vocabulary")
    tokenizer = recipe.make_tokenizer(cfg, frozenset(vocabulary) if vocabulary is not None else None)
    models = {name: load_input(spec["dir"], spec["kind"]) for name, spec in job["models"].items()}
    args = json.loads((job_dir / ARGS).read_text(encoding="utf-8"))
    log = progress(args.get("name", job["call"]), job["progress_every"], echo) if runtime.is_main else None
    started = time.perf_counter()
    try:
        result = stage_calls.CALLS[job["call"]](cfg, tokenizer, args, models, runtime, environment_for(cfg), log)
    except NonFiniteError as error:  # the flow re-raises it as itself, not as a dead launch
        write_json(
            job_dir / f"{NON_FINITE}-rank{runtime.rank}.json",
            {"stage": error.stage, "step": error.step, "what": error.what},
        )
        raise
    kind = stage_calls.OUTPUTS[job["call"]]
    digests = runtime.gather_objects(weights_digest(result.model) if kind != "rows" else None)
    peaks = runtime.gather_objects(peak_memory_bytes(runtime.device))
    if runtime.is_main:
        if kind == "rows":
            write_json(job_dir / OUTPUT_ROWS, result.model)
        else:
            save_model(result.model, tokenizer, job_dir / OUTPUT, {"stage": job["call"], "metrics": result.metrics})
        write_json(
            job_dir / RESULT,
            {
                "metrics": result.metrics,
                "history": result.history,
                "seconds": round(time.perf_counter() - started, 2),
                "rank_weight_digests": digests,
                "rank_peak_memory_bytes": peaks,
                **runtime.describe(),
            },
        )
        echo(f"{job['call']} done: {runtime.world_size} process(es), {time.perf_counter() - started:.1f} s")
    runtime.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--job",
        type=Path,
        action="append",
        required=True,
        help="directory holding job.json (repeat: one after another)",
    )
    jobs = parser.parse_args(argv).job
    die_with_parent()  # the ranks end when their launcher does, whoever killed it
    quiet_libraries()
    for job_dir in jobs:
        run_job(job_dir, say)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    leave_rank(main())
