"""Starting a training program under `accelerate launch` and watching it: stream every log line to the
caller, enforce a deadline, and turn any rank's death into one clear error (exit code + last lines).

torchrun (what accelerate uses to spawn ranks) stops the surviving ranks when one dies and exits
non-zero; the deadline covers the case where nothing exits (a rank stuck in a collective). Stopping
always takes down the whole process group: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from components.config import Config, ConfigError
from components.training.shards import check_divisible, check_shardable
from flows.execution.ports import free_port

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]  # its parser alone: a second faster than the CLI


class LaunchError(RuntimeError):
    """The launched program failed, timed out or was stopped; the message quotes its last log lines."""


@dataclass
class AccelerateProfile:
    path: Path
    distributed_type: str
    num_processes: int
    num_machines: int
    use_cpu: bool
    main_process_ip: str | None = None  # machine 0's address (multi-machine profiles)
    main_process_port: int | None = None
    deepspeed: dict | None = None  # the profile's deepspeed_config (DEEPSPEED profiles)

    def single_process(self, num_processes: int | None = None) -> bool:
        """One process on one machine, no DeepSpeed: nothing a launcher would set up."""
        processes = num_processes or self.num_processes
        return processes == 1 and self.num_machines == 1 and self.distributed_type in ("NO", "CPU")

    @classmethod
    def read(cls, path: str | Path) -> AccelerateProfile:
        path = Path(path)
        if not path.is_file():
            raise LaunchError(f"accelerate config {path} does not exist (profiles live in infra/accelerate/)")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return cls(
            path,
            str(raw.get("distributed_type", "NO")),
            int(raw.get("num_processes", 1)),
            int(raw.get("num_machines", 1)),
            bool(raw.get("use_cpu", False)),
            raw.get("main_process_ip"),
            int(raw["main_process_port"]) if raw.get("main_process_port") else None,
            raw.get("deepspeed_config") if raw.get("distributed_type") == "DEEPSPEED" else None,
        )


@dataclass(frozen=True)
class ZeroSettings:
    """What a DeepSpeed profile asks of every stage's engines; each setting honoured, or the profile refused."""

    stage: int
    offload_optimizer: bool = False  # AdamW's moments and step on the CPU (ZeRO-Offload)
    offload_parameters: bool = False  # ZeRO-3's parameter shards on the CPU (ZeRO-Infinity's CPU tier)
    save_16bit: bool = False  # zero3_save_16bit_model: ship the 16-bit weights the ranks hold, not the fp32 masters


OFFLOAD_DEVICES = ("none", "cpu")
LAUNCHER_KEYS = ("deepspeed_multinode_launcher", "deepspeed_hostfile", "deepspeed_inclusion_filter")
LAUNCHER_KEYS += ("deepspeed_exclusion_filter",)  # read by `accelerate launch` itself


def zero_settings(profile: AccelerateProfile, max_grad_norms: dict[str, float]) -> ZeroSettings:
    """The profile's ``deepspeed_config``, every key honoured or refused by name (a ConfigError: exit 2).
    ``max_grad_norms``: each stage's clipping (the engines clip to it), by its config key."""
    ds = dict(profile.deepspeed or {})
    where = f"{profile.path}: deepspeed_config"

    def refuse(key: str, why: str) -> None:
        raise ConfigError(f"{where}.{key}: {why}")

    stage = int(ds.pop("zero_stage", 0))
    if stage not in (0, 1, 2, 3):
        refuse("zero_stage", f"{stage} is not a ZeRO stage (0-3)")
    offload = {}
    for key, name in (("offload_optimizer_device", "optimizer"), ("offload_param_device", "param")):
        device = str(ds.pop(key, "none"))
        if device not in OFFLOAD_DEVICES:
            refuse(key, f"{device!r} is not supported (none or cpu; NVMe needs a path this pipeline does not pass)")
        offload[name] = device == "cpu"
    if offload["param"] and stage != 3:
        refuse("offload_param_device", f"cpu offloads ZeRO-3's parameter shards; zero_stage is {stage}")
    if ds.pop("zero3_init_flag", False):
        refuse(
            "zero3_init_flag",
            "true is not supported: every rank loads a stage's models whole, and each engine "
            "shards its own; set it false",
        )
    save_16bit = bool(ds.pop("zero3_save_16bit_model", False))
    if int(ds.pop("gradient_accumulation_steps", 1)) != 1:
        refuse(
            "gradient_accumulation_steps",
            "the stages accumulate micro-batches themselves: set 1 here and "
            "<stage>.gradient_accumulation_steps (sft, reward, baselines.*, ppo) in params.yaml",
        )
    clipping = ds.pop("gradient_clipping", None)
    if clipping is not None:
        differing = {key: norm for key, norm in max_grad_norms.items() if norm != float(clipping)}
        if differing:
            refuse(
                "gradient_clipping",
                f"{clipping} differs from {', '.join(f'{k} {v}' for k, v in differing.items())}"
                ": each engine clips to its stage's max_grad_norm; remove it here or make them equal",
            )
    for key in LAUNCHER_KEYS:
        ds.pop(key, None)
    if ds:
        refuse(
            sorted(ds)[0],
            "not read by this pipeline; remove it (read: zero_stage, offload_optimizer_device, "
            "offload_param_device, zero3_init_flag, zero3_save_16bit_model, gradient_accumulation_steps, "
            "gradient_clipping, and accelerate launch's own deepspeed_* launcher keys)",
        )
    return ZeroSettings(stage, offload["optimizer"], offload["param"], save_16bit)


BASELINES = ("chosen", "top_ranked", "combined", "dpo")


def max_grad_norms(cfg: Config) -> dict[str, float]:
    """Every stage's gradient clipping, by its config key."""
    sections = {"sft": cfg.sft, "reward": cfg.reward, "ppo": cfg.ppo}
    sections |= {f"baselines.{name}": getattr(cfg.baselines, name) for name in BASELINES}
    return {f"{key}.max_grad_norm": section.max_grad_norm for key, section in sections.items()}


def refuse_unhonoured(cfg: Config, code_root: Path) -> None:
    """The run's profile read and checked before any work: a missing file, or a DeepSpeed setting no stage would
    honour, is a ConfigError (exit 2)."""
    path = Path(cfg.distributed.accelerate_config)
    try:
        profile = AccelerateProfile.read(path if path.is_absolute() else code_root / path)
    except LaunchError as error:
        raise ConfigError(f"distributed.accelerate_config: {error}") from None
    if profile.deepspeed is not None:
        zero_settings(profile, max_grad_norms(cfg))
    refuse_unshardable(cfg, cfg.distributed.num_processes or profile.num_processes)


def refuse_unshardable(cfg: Config, processes: int) -> None:
    """The training loops' own rules, on the config: every rank's share of each stage's batch must fill each of its
    micro-batches, and PPO's rollouts and minibatches must split evenly between the ranks."""
    sections = {
        "sft": cfg.sft,
        "reward": cfg.reward,
        **{f"baselines.{n}": getattr(cfg.baselines, n) for n in BASELINES},
    }
    try:
        for key, section in sections.items():
            check_divisible(key, section, processes)
        check_shardable(cfg.ppo, processes, cfg.rl.group_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None


@dataclass
class Machine:
    """Where one machine of a multi-machine profile stands: its rank, and machine 0's rendezvous address."""

    rank: int
    main_ip: str
    main_port: int


def accelerate_command(
    profile: AccelerateProfile,
    module: str,
    args: list[str],
    num_processes: int | None = None,
    port: int | None = None,
    machine: Machine | None = None,
    use_cpu: bool | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and the environment additions for ``profile``: on one machine, a
    rendezvous on 127.0.0.1; on several, this ``machine``'s rank and machine 0's address (every machine runs the same
    command with its own rank). ``num_processes`` counts every machine's processes; ``use_cpu`` overrides the
    profile's (a GPU profile tried on CPU nodes)."""
    command = [*ACCELERATE, "--config_file", str(profile.path)]
    env: dict[str, str] = {}
    processes = num_processes or profile.num_processes
    if num_processes:
        command += ["--num_processes", str(num_processes)]
    on_cpu = profile.use_cpu if use_cpu is None else use_cpu
    if on_cpu:
        env["DS_ACCELERATOR"] = "cpu"  # said, not guessed: DeepSpeed's guess warns on every rank
    if on_cpu and profile.distributed_type != "DEEPSPEED":  # accelerate's CPU switch would drop DeepSpeed
        env["ACCELERATE_USE_CPU"] = "true"
        if processes > 1:
            command += ["--multi_gpu"]  # torchrun spawns the CPU ranks (accelerate's CPU launcher needs MPI for that)
    if profile.num_machines == 1 and processes > 1:
        command += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port or free_port())]
    if profile.num_machines > 1:
        if machine is None:
            raise LaunchError(f"{profile.path.name} spans {profile.num_machines} machines: say which one this is")
        command += ["--num_machines", str(profile.num_machines), "--machine_rank", str(machine.rank)]
        command += ["--main_process_ip", machine.main_ip, "--main_process_port", str(machine.main_port)]
    return [*command, "-m", module, *args], env


def run_logged(
    command: list[str],
    timeout: float,
    on_line: Callable[[str], None] = lambda line: None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    grace: float = 10.0,
    tail_lines: int = 40,
) -> list[str]:
    """Run ``command`` in its own process group, hand each output line to ``on_line`` as it arrives.

    Returns the last ``tail_lines`` lines. Raises LaunchError on a non-zero exit, on the deadline,
    or when ``on_line`` raises (the process group is stopped first in every case); a failure's message quotes the
    ranks' own last lines and torchrun's summary of which rank died how (``failure_report``).
    """
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines + TORCHRUN_REPORT_LINES)

    def pump() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                stop(process, grace)
                raise LaunchError(
                    f"timed out after {timeout:.0f} s; stopped. Last lines:\n" + failure_report(list(tail), tail_lines)
                )
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            tail.append(line)
            on_line(line)
    except BaseException:
        stop(process, grace)
        raise
    code = process.wait()
    _signal_group(process, signal.SIGKILL)  # no rank outlives a finished launch
    if code != 0:
        raise LaunchError(
            f"exit code {code} after {time.monotonic() - started:.1f} s. Last lines:\n"
            + failure_report(list(tail), tail_lines)
        )
    return list(tail)[-tail_lines:]


TORCHRUN_REPORT_LINES = 400  # torchrun's log lines, accelerate's traceback and the failure table, kept besides
TORCHRUN_LOG = "torch/distributed/elastic/"  # torchrun's own log lines name their module
SUMMARY_FIELDS = ("rank", "exitcode", "error_file", "traceback")


def failure_report(lines: list[str], tail_lines: int) -> str:
    """The ranks' own last ``tail_lines`` lines (what a dying rank wrote, say gloo's abort message), then torchrun's
    account of each failed rank (its rank, exit code or signal, traceback), without the ~40 lines of launcher
    traceback that would otherwise push the ranks' lines out of the quote."""
    first = next((i for i, line in enumerate(lines) if TORCHRUN_LOG in line), len(lines))
    own, report = lines[:first][-tail_lines:], lines[first:]
    summary = [line for line in report if TORCHRUN_LOG in line or line.strip().startswith(SUMMARY_FIELDS)]
    if not report:
        return "\n".join(own)
    return "\n".join([*own, "torchrun:", *summary])


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGTERM this process when the one that started it dies (a killed flow takes its launch with it).

    Also runs between fork and exec of a launch, so it only calls into libc (loaded at import)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def leave_rank(code: int) -> NoReturn:
    """End a launched rank once its work is written, without Python's teardown.

    Under load a gloo rank died at exit with SIGABRT ("terminate called without an active exception") after its
    work was done: DDP keeps the process group alive past destroy_process_group, and a C++ thread that needs the GIL
    while the interpreter is being torn down is ended by pthread_exit, whose unwinding through a noexcept frame aborts
    the process (and torchrun then fails the launch). Leaving with os._exit runs no teardown at all."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the whole process group (launcher and every rank); SIGKILL to whatever is left after ``grace``."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    _signal_group(process, signal.SIGKILL)  # ranks can outlive their launcher
    process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def node_main(argv: list[str] | None = None) -> int:
    """One machine of a multi-machine launch (PPO, or another stage's job): the same job directory (on storage every
    machine sees), this machine's rank, machine 0's address. Prints every rank's lines; exits non-zero when any rank
    fails."""
    import argparse

    parser = argparse.ArgumentParser(description=node_main.__doc__)
    parser.add_argument("--job", required=True, help="the job directory the flow wrote (its log names it)")
    parser.add_argument(
        "--worker",
        default="flows.execution.ppo_worker",
        help="the module the job's ranks run (the flow's log names it)",
    )
    parser.add_argument("--config", default="infra/accelerate/multi-node.yaml", help="the accelerate profile")
    parser.add_argument("--machine-rank", type=int, required=True)
    parser.add_argument("--main-ip", help="machine 0's address (default: the profile's main_process_ip)")
    parser.add_argument("--main-port", type=int, help="(default: the profile's main_process_port)")
    parser.add_argument("--num-processes", type=int, help="every machine's processes together (default: profile's)")
    parser.add_argument("--cpu", action="store_true", help="CPU ranks (gloo) whatever the profile says")
    parser.add_argument("--timeout", type=float, default=7200.0)
    args = parser.parse_args(argv)
    profile = AccelerateProfile.read(args.config)
    main_ip, main_port = args.main_ip or profile.main_process_ip, args.main_port or profile.main_process_port
    if not main_ip or not main_port:
        parser.error(f"{profile.path}: give --main-ip and --main-port (the profile has none)")
    command, env = accelerate_command(
        profile,
        args.worker,
        ["--job", args.job],
        args.num_processes,
        machine=Machine(args.machine_rank, main_ip, main_port),
        use_cpu=True if args.cpu else None,
    )
    code_root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), os.environ.get("PYTHONPATH")]))
    try:
        run_logged(command, args.timeout, lambda line: print(line, flush=True), env=env, cwd=code_root)
    except LaunchError as error:
        print(f"machine {args.machine_rank}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(node_main())
