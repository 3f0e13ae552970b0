"""Where a stage that trains or decodes runs: in the flow's own process on the run's runtime (a profile of one process
on one machine), or under `accelerate launch` (any other profile: several processes, several machines, DeepSpeed),
its ranks' lines streamed into the task's log."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from prefect import get_run_logger

from components.models.saving import save_model
from components.training import recipe
from flows.execution import deadlines, ppo_worker, runtimes, stage_calls, stage_worker
from flows.execution.launcher import AccelerateProfile, LaunchError, Machine, accelerate_command, run_logged
from flows.execution.progress import logged_with_bars
from flows.execution.run_context import RunContext
from flows.execution.runtimes import run_profile

# where a launched stage ran, as its result says (DeepSpeed adds its ZeRO stage and offloads)
PLACEMENT = (
    "device",
    "processes",
    "mixed_precision",
    "threads_per_process",
    "zero_stage",
    "offload_optimizer",
    "offload_parameters",
)


def run_stage(
    ctx: RunContext, call: str, args: dict, inputs: dict[str, recipe.StageResult], progress_every: int = 1
) -> recipe.StageResult:
    """A stage's call (flows/execution/stage_calls.py) where the run's profile puts it: in this process on its runtime
    (one
    process on one machine), else under `accelerate launch`. ``args``: its plain inputs; ``inputs``: the stages whose
    models it reads."""
    cfg = ctx.cfg
    profile = run_profile(cfg)
    if not runtimes.runs_in_process(cfg, profile):
        return launched_stage(ctx, call, args, inputs, progress_every)
    models = {name: result.model for name, result in inputs.items()}
    name = args.get("name", call)
    deadline = deadlines.progress_deadline(name, cfg.timeouts.progress_seconds, cfg.distributed.kill_grace_seconds)
    with runtimes.in_process(cfg, profile.use_cpu) as runtime, deadline as beat:
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(runtime.device)
        log = stage_worker.progress(name, progress_every, logged_with_bars(get_run_logger().info), beat)
        result = stage_calls.CALLS[call](cfg, ctx.tokenizer, args, models, runtime, ctx.environment, log)
        # on a CPU, the flow process's peak so far (the stage's own when launched)
        result.placement = {**runtime.describe(), "peak_memory_bytes": [runtimes.peak_memory_bytes(runtime.device)]}
        return result


def accelerate_launch(
    ctx: RunContext, profile: AccelerateProfile, job_dir: Path, worker: str = ppo_worker.__name__, what: str = "PPO"
) -> None:
    """A job under `accelerate launch` (``worker``: the module every rank runs); each rank's output streams into the
    task's log. A rank's recorded NaN/inf is raised as itself."""
    cfg = ctx.cfg
    logger = get_run_logger()
    machine = None
    if profile.num_machines > 1:  # this is machine 0; every other machine runs the same job with its own rank
        machine = Machine(0, profile.main_process_ip, cfg.distributed.main_process_port or profile.main_process_port)
        logger.info(
            "%s spans %d machines: on machine r = 1..%d run  python -m flows.execution.launcher --job %s --worker %s "
            "--config %s --machine-rank r  (%s must be on storage every machine sees)",
            what,
            profile.num_machines,
            profile.num_machines - 1,
            job_dir,
            worker,
            profile.path,
            job_dir,
        )
    command, env = accelerate_command(
        profile,
        worker,
        ["--job", str(job_dir)],
        cfg.distributed.num_processes,
        cfg.distributed.main_process_port,
        machine,
    )
    logger.info("%s: %s", what, " ".join(command))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(runtimes.CODE_ROOT), os.environ.get("PYTHONPATH")]))
    try:
        run_logged(
            command,
            cfg.timeouts.launch_seconds,
            logged_with_bars(logger.info),
            env=env,
            cwd=runtimes.CODE_ROOT,
            grace=cfg.distributed.kill_grace_seconds,
            tail_lines=cfg.distributed.log_tail_lines,
        )
    except LaunchError as error:
        ppo_worker.raise_recorded_failure(job_dir)
        raise LaunchError(f"the {what} launch ({profile.path.name}) failed: {error}") from None


def launched_stage(
    ctx: RunContext, call: str, args: dict, inputs: dict[str, recipe.StageResult], progress_every: int
) -> recipe.StageResult:
    """The stage's call under `accelerate launch` with the run's profile: its input models written where every rank
    reads them, its output read back (the job directory is removed after)."""
    cfg = ctx.cfg
    ctx.tracking.run_dir.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix=f"{call}-", dir=ctx.tracking.run_dir))
    try:
        models = {}
        for name, result in inputs.items():
            kind = "reward_model" if name == "reward_model" else "policy"
            models[name] = (save_model(result.model, ctx.tokenizer, job_dir / "inputs" / name, {}), kind)
        stage_worker.write_stage_job(job_dir, call, cfg, args, models, ctx.vocabulary, progress_every)
        accelerate_launch(ctx, run_profile(cfg), job_dir, stage_worker.__name__, call)
        outcome = stage_worker.read_stage_result(job_dir)
        kind = stage_calls.OUTPUTS[call]
        if kind == "rows":
            output = json.loads((job_dir / stage_worker.OUTPUT_ROWS).read_text(encoding="utf-8"))
        else:
            output = stage_worker.load_input(str(job_dir / stage_worker.OUTPUT), kind)
        placement = {key: outcome[key] for key in PLACEMENT if key in outcome}
        placement["peak_memory_bytes"] = outcome["rank_peak_memory_bytes"]
        return recipe.StageResult(
            output, outcome["metrics"], outcome["history"], outcome["seconds"], placement=placement
        )
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
