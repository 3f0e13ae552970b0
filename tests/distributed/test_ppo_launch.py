"""PPO under `accelerate launch` with 2 CPU processes (gloo), launched the way the Prefect task launches it.

Tolerances (stated): two ranks end with bit-identical weights (DDP, no tolerance); on the same global
batch the 2-process run's global metrics equal one process's within 1e-5 absolute (relative 1e-4 for the
losses) and the updated weights to float32's yardstick (tests/stage_jobs.py: 4x what reversing every batch's rows
moves one process's weights on this machine, at least 16 ulps of the largest weight; a fixed 1e-6, measured 8e-9
here, failed at 1.06e-6 on an AVX-512 CPU); a
resumed 2-process run equals an uninterrupted one bit for bit (every rank's RNG state is in the checkpoint).
"""

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from components.config import load_config
from components.evaluation.judges import gold_judge
from components.evaluation.report import judge_monitor
from components.models.builders import load_causal_lm, load_scalar_model
from components.task.gold_judge import gold_score
from components.training.checkpoints import latest_checkpoint
from components.training.loop import Harness
from components.training.ppo import RLModels
from flows.execution.launcher import ACCELERATE, AccelerateProfile, LaunchError, accelerate_command, run_logged
from flows.execution.ppo_worker import POLICY, read_result
from flows.execution.runtimes import weights_digest
from tests.ppo_jobs import SAME_BATCH, SFT_LONGER, job, one_plain_process, ppo_inputs
from tests.processes import listening_sockets, running
from tests.stage_jobs import ReversedRows, float32_yardstick, largest_difference

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
TWO_PROCESSES = REPO / "infra/accelerate/cpu-2proc.yaml"
WORKER = "flows.execution.ppo_worker"
TIMEOUT = 300


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return ppo_inputs(tmp_path_factory.mktemp("models"))


def launch(inputs, job_dir, overrides, checkpoint_dir=None, on_line=lambda line: None, timeout=TIMEOUT):
    cfg = job(inputs, job_dir, overrides, checkpoint_dir)
    command, env = accelerate_command(AccelerateProfile.read(TWO_PROCESSES), WORKER, ["--job", str(job_dir)])
    run_logged(command, timeout, on_line, env=env, cwd=REPO, grace=5)
    return cfg, read_result(job_dir)


# SAME_BATCH (tests/ppo_jobs.py): one iteration on which one and two processes see the same global batch
COMPARED = ("rm_score", "kl", "response_length", "ended", "explained_variance", "entropy", "clipfrac", "gold")
# the losses, and approx_kl, whose log-probs are of softmax(logits / 0.001) and carry 1000x the float noise: within
# 4x what reversing the rows of every batch moves them in one process (float32's noise on this machine; approx_kl
# 2.8e-4 off, relative, once failed a fixed 1e-4), never held tighter than relative 1e-4 and absolute 1e-6 (the
# policy loss of whitened advantages at ratio ~1 is itself ~1e-8: measured 1.5e-8 in one process, 4.6e-8 in two,
# pure float noise on terms of size ~1)
LOSSES = ("policy_loss", "value_loss", "approx_kl")


def test_two_ranks_end_bit_identical_and_match_one_process_on_the_same_global_batch(inputs, tmp_path):
    cfg, two = launch(inputs, tmp_path / "job", SAME_BATCH)
    assert two["world_size"] == 2 and two["threads_per_process"] == 1 and two["device"].startswith("cpu")
    assert len(set(two["rank_weight_digests"])) == 1  # DDP kept both ranks' weights bit-identical

    one = one_plain_process(inputs, cfg, monitor=judge_monitor(gold_judge(gold_score)))
    reversed_rows = one_plain_process(inputs, cfg, runtime=ReversedRows())  # float32's own yardstick, this machine
    assert len(two["history"]) == len(one.history) == len(reversed_rows.history) == 1
    for distributed, single, reordered in zip(two["history"], one.history, reversed_rows.history):
        for key in COMPARED:
            assert distributed[key] == pytest.approx(single[key], abs=1e-5), key
        for key in LOSSES:
            # 4x what reordering the rows moves the value on this machine, at least rel 1e-4 (abs 1e-6)
            noise = 4 * abs(reordered[key] - single[key])
            assert abs(distributed[key] - single[key]) <= max(1e-4 * abs(single[key]), 1e-6, noise), (key, noise)
    launched = load_causal_lm(tmp_path / "job" / POLICY)
    assert weights_digest(launched) == two["rank_weight_digests"][0]
    assert largest_difference(launched, one.model) <= float32_yardstick(one.model, reversed_rows.model)
    sft = load_causal_lm(inputs["models"] / "sft")
    assert max((a - b).abs().max().item() for a, b in zip(launched.parameters(), sft.parameters())) > 1e-4, (
        "did not train"
    )  # and it trained


def rank_pids(line: str) -> dict[int, int]:
    """Rank -> pid from the ranks' start-up lines (two ranks writing at once can share one line)."""
    return {int(rank): int(pid) for rank, pid in re.findall(r"rank (\d+)/2 pid (\d+)", line)}


def launchers_and_ranks(
    sockets: list[tuple[str, str, int]],
) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]]]:
    """The listening sockets of the launcher processes (command, address, port) and of every other one (address,
    port): a launcher's command line names the launcher's module."""
    module = ACCELERATE[-1]
    launchers = [(command, address, port) for command, address, port in sockets if module in command]
    return launchers, [(address, port) for command, address, port in sockets if module not in command]


def test_killing_one_rank_fails_the_launch_quickly_with_a_clear_message(inputs, tmp_path):
    pids: dict[int, int] = {}
    killed = []

    def watch(line):
        pids.update(rank_pids(line))
        if "ppo iteration" in line and not killed and 1 in pids:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(time.monotonic())

    started = time.monotonic()
    with pytest.raises(LaunchError) as failure:
        launch(inputs, tmp_path / "job", ["ppo.iterations=100000"], on_line=watch, timeout=240)
    assert killed, "rank 1 was never seen training"
    assert time.monotonic() - killed[0] < 60  # torchrun stops the surviving rank; no hang until the deadline
    message = str(failure.value)
    assert message.startswith("exit code ") and "timed out" not in message
    assert "Last lines:" in message and ("-9" in message or "SIGKILL" in message)  # the dead rank's signal is quoted
    assert not any(running(pid) for pid in pids.values())  # no rank left behind
    assert not (tmp_path / "job" / POLICY).exists()
    assert time.monotonic() - started < 240


@pytest.mark.faults
def test_a_hung_rank_fails_the_launch_at_the_collective_deadline_and_every_rank_listens_on_localhost(inputs, tmp_path):
    """Rank 1 stops (SIGSTOP: alive, never answering) mid-training; rank 0 waits at its next collective for
    timeouts.collective_seconds, then fails, and torchrun stops the launch (before, gloo waited 30 minutes and the
    launch its whole deadline). torchrun then sends the stopped rank SIGTERM, which it cannot act on until it runs:
    the test continues it at that line (else torchrun waits its hard-coded 30 s and SIGKILLs it), and it dies of it.

    Just before, read from /proc/net/tcp and tcp6: every rank listens on 127.0.0.1 only (gloo's pairs); the launcher
    listens only on the rendezvous port, where torch's TCPStore takes every interface (torch gives it no bind address;
    docs/faults.md says so). Nothing else listens."""
    job_dir = tmp_path / "job"
    pids: dict[int, int] = {}
    stopped, seen, terminated = [], [], []

    def watch(line):
        pids.update(rank_pids(line))
        if "ppo iteration" in line and not stopped and 1 in pids:
            seen.append(listening_sockets(str(job_dir)))
            os.kill(pids[1], signal.SIGSTOP)
            stopped.append(pids[1])
        if stopped and f"Sending process {stopped[0]} closing signal SIGTERM" in line:
            terminated.append(line)
            os.kill(stopped[0], signal.SIGCONT)  # the pending SIGTERM is delivered as it runs again

    overrides = ["ppo.iterations=100000", "timeouts.collective_seconds=10"]
    try:
        with pytest.raises(LaunchError) as failure:
            launch(inputs, job_dir, overrides, on_line=watch, timeout=240)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped, "rank 1 was never seen training"
    message = str(failure.value)
    assert message.startswith("exit code "), message[-3000:]  # the collective's deadline, not the launch's
    assert "Timed out waiting 10000ms" in message, message[-3000:]  # gloo's own words, from rank 0
    assert terminated, message[-3000:]  # torchrun stopped the hung rank after rank 0 failed
    assert "exitcode  : -15" in message, message[-3000:]  # and SIGTERM, not torchrun's later SIGKILL, ended it
    assert not any(running(pid) for pid in pids.values())
    assert not (job_dir / POLICY).exists()

    (sockets,) = seen
    launcher, ranks = launchers_and_ranks(sockets)
    assert len(ranks) >= 2 and {address for address, _ in ranks} == {"0100007F"}, sockets  # 127.0.0.1
    ((command, address, port),) = launcher
    assert port == int(command.split("--main_process_port ")[1].split()[0]), sockets  # the rendezvous port only
    assert address in ("0100007F", "00000000", "0" * 32), sockets  # 127.0.0.1, or any (IPv4 or IPv6)


class Interrupt(Exception):
    pass


RESUMABLE = ["ppo.iterations=6", "ppo.checkpoint_every=2", "ppo.rollout_batch_size=16", "ppo.minibatch_size=8"]


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> dict:
    """The result of 2 processes on one machine, 6 iterations, never stopped: what resumed runs and two machines
    must match bit for bit. Its checkpoints (``"checkpoints"``, every 2 iterations) are two processes' own."""
    where = tmp_path_factory.mktemp("uninterrupted")
    result = launch(inputs, where / "job", RESUMABLE, checkpoint_dir=where / "checkpoints")[1]
    return {**result, "checkpoints": where / "checkpoints"}


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(inputs, uninterrupted, tmp_path):
    overrides = RESUMABLE

    def crash_after_iteration_4(line):
        if line.startswith("ppo iteration 4/6"):
            raise Interrupt(line)  # the launcher stops every rank (SIGTERM, then SIGKILL)

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        launch(inputs, tmp_path / "interrupted", overrides, checkpoint_dir=checkpoints, on_line=crash_after_iteration_4)
    saved = latest_checkpoint(checkpoints)
    assert (
        saved is not None and 2 <= saved.iteration < 6 and saved.tensors["torch_rng"].shape[0] == 2
    )  # both ranks' RNG states

    _, resumed = launch(inputs, tmp_path / "interrupted", overrides, checkpoint_dir=checkpoints)
    assert len(set(resumed["rank_weight_digests"])) == 1
    assert resumed["rank_weight_digests"] == uninterrupted["rank_weight_digests"]  # bit-identical, no tolerance
    assert [h["rm_score"] for h in resumed["history"]] == [h["rm_score"] for h in uninterrupted["history"]]
    assert [h["iteration"] for h in resumed["history"]] == list(range(6))


def test_resuming_with_a_different_process_count_is_refused(inputs, uninterrupted):
    from components.training.ppo import train_ppo

    checkpoints = uninterrupted["checkpoints"]
    assert latest_checkpoint(checkpoints).tensors["torch_rng"].shape[0] == 2  # written by both ranks
    cfg = load_config("smoke", [*SFT_LONGER, *RESUMABLE, "ppo.iterations=8"])
    models = inputs["models"]
    policy = load_causal_lm(models / "sft")
    with pytest.raises(ValueError, match="written by 2 process"):
        train_ppo(
            RLModels(
                policy,
                load_causal_lm(models / "sft"),
                load_scalar_model(models / "reward_model"),
                load_scalar_model(models / "reward_model"),
                inputs["tokenizer"],
            ),
            inputs["prompts"],
            cfg.ppo,
            cfg.model,
            cfg.seed,
            harness=Harness(checkpoint_dir=str(checkpoints)),
        )


def test_the_throughput_benchmark_measures_one_and_two_processes(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ppo_throughput.json"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/ppo_throughput.py",
            "--profile",
            "smoke",
            "--iterations",
            "3",
            "--processes",
            "1",
            "2",
            "--runs",
            str(tmp_path / "none"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [run["processes"] for run in result["runs"]] == [1, 2] and result["models"] == "trained"
    for run in result["runs"]:
        phases = run["generation_seconds"] + run["scoring_seconds"] + run["update_seconds"]
        assert run["seconds_per_iteration"] == pytest.approx(phases) and run["iterations_measured"] == 2
        assert run["rollout_tokens_per_second"] > 0 and run["update_tokens_per_second"] > 0
        assert run["launch_seconds"] > run["seconds_per_iteration"]
    assert "processes | torch threads" in done.stdout


def test_killing_the_process_that_launched_ppo_takes_every_rank_down(inputs, tmp_path):
    """The flow process dies (OOM killer, a node drain): its launch and both ranks must not live on."""
    import subprocess
    import sys

    driver = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from tests.distributed.test_ppo_launch import launch
import pickle
inputs = pickle.loads(Path({str(tmp_path / "inputs.pkl")!r}).read_bytes())
launch(inputs, Path({str(tmp_path / "job")!r}), ["ppo.iterations=100000"], on_line=lambda line: print(line, flush=True))
"""
    import pickle

    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps({k: v for k, v in inputs.items()}))
    flow = subprocess.Popen(
        [sys.executable, "-c", driver], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pids = {}
    for line in flow.stdout:
        pids.update(rank_pids(line))
        if "ppo iteration" in line and len(pids) == 2:
            break
    assert len(pids) == 2, "the ranks never started"
    flow.kill()  # SIGKILL: no chance to clean up
    flow.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(running(pid) for pid in pids.values()):
        time.sleep(0.5)
    assert not any(running(pid) for pid in pids.values())


def test_one_process_in_the_callers_process_equals_one_launched_process(inputs, tmp_path):
    """`distributed.launch: auto` runs a one-process profile in the flow's own process: the same job, the same
    weights bit for bit as under `accelerate launch`, and the caller's random state untouched."""
    import random

    from flows.execution.ppo_worker import run_in_process

    one = AccelerateProfile.read(REPO / "infra/accelerate/cpu-1proc.yaml")
    jobs = {}
    for how in ("launched", "in_process"):
        jobs[how] = node_job(inputs, tmp_path / how)
    command, env = accelerate_command(one, WORKER, ["--job", str(jobs["launched"])])
    run_logged(command, TIMEOUT, env={**env, "OMP_NUM_THREADS": str(torch.get_num_threads())}, cwd=REPO, grace=5)
    random.seed(0), torch.manual_seed(0)
    expected = (random.random(), torch.rand(1).item())
    random.seed(0), torch.manual_seed(0)
    lines = []
    run_in_process(jobs["in_process"], lines.append, use_cpu=True)
    assert (random.random(), torch.rand(1).item()) == expected  # what follows PPO draws what it would have
    from accelerate.state import AcceleratorState

    assert AcceleratorState._shared_state == {}  # and may start accelerate afresh (another precision, another device)
    launched, in_process = read_result(jobs["launched"]), read_result(jobs["in_process"])
    assert launched["world_size"] == in_process["world_size"] == 1
    assert in_process["rank_weight_digests"] == launched["rank_weight_digests"]
    assert [h["rm_score"] for h in in_process["history"]] == [h["rm_score"] for h in launched["history"]]
    assert any(line.startswith("ppo iteration 6/6") for line in lines)  # progress went to the caller's log


# --- two machines: the multi-node profile's own settings, two "machines" on 127.0.0.1, one CPU process each ---

MULTI_NODE = REPO / "infra/accelerate/multi-node.yaml"


class Nodes:
    """Both machines' launches (`python -m flows.execution.launcher`, as each host runs it), each in its own process
    group,
    every line kept and handed to ``on_line(machine, line)``."""

    def __init__(self, job_dir: Path, on_line=lambda machine, line: None):
        import subprocess
        import sys
        import threading

        from flows.execution.ports import free_port

        port, self.lines, self.processes = free_port(), {0: [], 1: []}, {}
        self.port = port  # machine 0's rendezvous
        for rank in (0, 1):
            command = [
                sys.executable,
                "-m",
                "flows.execution.launcher",
                "--job",
                str(job_dir),
                "--config",
                str(MULTI_NODE),
            ]
            command += ["--machine-rank", str(rank), "--main-ip", "127.0.0.1", "--main-port", str(port)]
            command += ["--num-processes", "2", "--cpu", "--timeout", str(TIMEOUT)]
            self.processes[rank] = subprocess.Popen(
                command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        self.readers = [
            threading.Thread(target=self._read, args=(rank, on_line), daemon=True) for rank in self.processes
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, rank, on_line):
        for line in self.processes[rank].stdout:
            self.lines[rank].append(line)
            on_line(rank, line)

    def kill(self, rank: int) -> None:
        """SIGKILL to a machine's launcher and its rank (a host that lost power)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[rank].pid, signal.SIGKILL)

    def wait(self) -> dict[int, int]:
        """Each machine's exit code. Each launcher enforces its own deadline (TIMEOUT) and quotes its ranks' last
        lines; the margin lets its message arrive before this gives up on it."""
        import subprocess

        try:
            codes = {rank: process.wait(timeout=TIMEOUT + 60) for rank, process in self.processes.items()}
        except subprocess.TimeoutExpired:
            for rank in self.processes:
                self.kill(rank)
            pytest.fail(f"a machine's launcher outlived its own deadline; its lines: {self.lines}")
        for reader in self.readers:
            reader.join(timeout=10)
        return codes


def node_job(inputs, job_dir: Path, checkpoint_dir: Path | None = None) -> Path:
    job(inputs, job_dir, RESUMABLE, checkpoint_dir)
    return job_dir


def test_two_machines_end_bit_identical_to_two_processes_on_one(inputs, uninterrupted, tmp_path):
    """Also read, while both machines train, from /proc/net/tcp and tcp6: every rank of either machine listens on the
    machines' address only (127.0.0.1 here: gloo's pairs), and besides them only machine 0's launcher listens, on the
    rendezvous port (torch's TCPStore, every interface: docs/faults.md)."""
    seen = []

    def listening_once_training(machine, line):
        if machine == 0 and "ppo iteration" in line and not seen:
            seen.append(listening_sockets(str(tmp_path / "job")))

    nodes = Nodes(node_job(inputs, tmp_path / "job"), listening_once_training)
    assert nodes.wait() == {0: 0, 1: 0}, nodes.lines
    (sockets,) = seen
    launchers, ranks = launchers_and_ranks(sockets)
    assert len(ranks) >= 2 and {address for address, _ in ranks} == {"0100007F"}, sockets  # 127.0.0.1
    ((command, address, port),) = launchers  # machine 1's launcher is the store's client: it listens on nothing
    assert port == nodes.port and "--machine_rank 0" in command, sockets
    assert address in ("0100007F", "00000000", "0" * 32), sockets
    assert any("rank 0/2 pid" in line for line in nodes.lines[0]), "machine 0 runs rank 0"
    assert any("rank 1/2 pid" in line for line in nodes.lines[1]), "machine 1 runs rank 1"
    result = read_result(tmp_path / "job")  # written by machine 0 (rank 0) alone
    assert result["world_size"] == 2 and len(set(result["rank_weight_digests"])) == 1  # both machines' weights
    # the same two ranks, the same gloo reductions: the same weights as two processes on one machine, bit for bit
    assert result["rank_weight_digests"] == uninterrupted["rank_weight_digests"]
    assert [h["rm_score"] for h in result["history"]] == [h["rm_score"] for h in uninterrupted["history"]]


def test_killing_one_machine_fails_the_other_within_seconds(inputs, tmp_path):
    killed = []

    def kill_machine_1_once_training(machine, line):
        if machine == 0 and "ppo iteration" in line and not killed:
            nodes.kill(1)
            killed.append(time.monotonic())

    job_dir = tmp_path / "job"
    job(inputs, job_dir, [*RESUMABLE, "ppo.iterations=100000"])  # still training when machine 1 dies
    nodes = Nodes(job_dir, kill_machine_1_once_training)
    codes = nodes.wait()
    assert killed, "machine 0 never started training"
    assert codes[0] != 0 and time.monotonic() - killed[0] < 60  # margin: 60 s; gloo sees the peer go at once
    assert "machine 0: exit code" in "".join(nodes.lines[0])  # the launcher's error, quoting the rank's last lines
    pids = [int(pid) for line in nodes.lines[0] + nodes.lines[1] for pid in re.findall(r"rank \d+/2 pid (\d+)", line)]
    assert len(pids) == 2 and not any(running(pid) for pid in pids)  # no rank left behind on either machine
    assert not (job_dir / POLICY).exists()


def test_an_interrupted_two_machine_run_resumes_to_the_same_weights(inputs, uninterrupted, tmp_path):
    checkpoints = tmp_path / "checkpoints"  # written by machine 0 (rank 0), on storage both machines see

    def stop_both_after_iteration_4(machine, line):
        if machine == 0 and line.startswith("ppo iteration 4/6"):
            nodes.kill(0)
            nodes.kill(1)

    nodes = Nodes(node_job(inputs, tmp_path / "job", checkpoints), stop_both_after_iteration_4)
    assert all(code != 0 for code in nodes.wait().values())
    saved = latest_checkpoint(checkpoints)
    assert saved is not None and 2 <= saved.iteration < 6 and saved.tensors["torch_rng"].shape[0] == 2

    nodes = Nodes(node_job(inputs, tmp_path / "job", checkpoints))
    assert nodes.wait() == {0: 0, 1: 0}, nodes.lines
    assert any(f"resumes from the checkpoint after iteration {saved.iteration}" in line for line in nodes.lines[0])
    resumed = read_result(tmp_path / "job")
    assert resumed["rank_weight_digests"] == uninterrupted["rank_weight_digests"]  # bit-identical, no tolerance
    assert [h["iteration"] for h in resumed["history"]] == list(range(6))
