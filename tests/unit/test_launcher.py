"""The launcher: log streaming, exit codes, the deadline and stopping the whole process group;
the accelerate profiles."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from components.config import load_config
from flows.execution.launcher import (
    AccelerateProfile,
    LaunchError,
    Machine,
    accelerate_command,
    failure_report,
    run_logged,
)
from flows.execution.ports import LOWEST_PORT, ephemeral_ports_start
from tests.processes import running

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "infra" / "accelerate"


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_lines_reach_the_caller_in_order_and_the_tail_is_returned():
    seen = []
    tail = run_logged(python("for i in range(50): print(f'line {i}', flush=True)"), 60, seen.append, tail_lines=5)
    assert seen == [f"line {i}" for i in range(50)]
    assert tail == [f"line {i}" for i in range(45, 50)]


def test_a_failure_names_the_exit_code_and_quotes_the_last_lines():
    with pytest.raises(LaunchError, match=r"^exit code 3 .*") as failure:
        run_logged(
            python(
                "import sys; print('loading', flush=True); print('rank 1: out of memory', file=sys.stderr); sys.exit(3)"
            ),
            60,
        )
    assert "rank 1: out of memory" in str(failure.value) and "loading" in str(failure.value)


# torchrun's output when rank 1 of 2 aborts (torch 2.13, accelerate launch --multi_gpu), paths shortened
TORCHRUN_AFTER_AN_ABORT = """W1206 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 27674 SIGTERM
E1206 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -6) local_rank: 1 (pid: 27675) of binary
Traceback (most recent call last):
  File "accelerate/commands/accelerate_cli.py", line 54, in <module>
    main()
  File "torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
worker.py FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-06_10:50:02
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 27674)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 27674
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_10:50:02
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 27675)  (SIGABRT)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 27675
=======================================================""".splitlines()


def test_a_failure_quotes_the_ranks_own_last_lines_before_torchruns_report():
    ranks = [f"rank 0 step {i}" for i in range(10)] + ["terminate called after throwing gloo::EnforceNotMet"]
    report = failure_report(ranks + TORCHRUN_AFTER_AN_ABORT, tail_lines=3).splitlines()
    assert report[:3] == ["rank 0 step 8", "rank 0 step 9", "terminate called after throwing gloo::EnforceNotMet"]
    assert report[3] == "torchrun:" and "failed (exitcode: -6) local_rank: 1" in report[5]
    assert "  exitcode  : -6 (pid: 27675)  (SIGABRT)" in report and "  rank      : 1 (local_rank: 1)" in report
    assert not any("File " in line or "time      :" in line for line in report)  # the launcher's traceback left out
    assert failure_report(ranks, tail_lines=2).splitlines() == ranks[-2:]  # no torchrun report: the plain tail


@pytest.mark.distributed
def test_a_rank_that_aborts_is_quoted_with_its_own_message_and_signal(tmp_path):
    worker = tmp_path / "aborting_worker.py"
    worker.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from accelerate import Accelerator
            accelerator = Accelerator()
            accelerator.wait_for_everyone()  # both ranks past the rendezvous: then rank 0 only sleeps, saying nothing
            if accelerator.process_index == 1:
                sys.stderr.write("rank 1: gloo enforce failed\\n")
                sys.stderr.flush()
                os.abort()
            time.sleep(120)
            """
        )
    )
    command, env = accelerate_command(AccelerateProfile.read(PROFILES / "cpu-2proc.yaml"), "aborting_worker", [])
    assert command[-2:] == ["-m", "aborting_worker"]
    command[-2:] = [str(worker)]
    with pytest.raises(LaunchError) as failure:
        run_logged(command, 120, env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, grace=2, tail_lines=5)
    message = str(failure.value)
    assert message.startswith("exit code ") and "rank 1: gloo enforce failed" in message
    assert "SIGABRT" in message and "ChildFailedError" not in message


def test_the_deadline_stops_the_launcher_and_every_child(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(600)
    """
    started = time.monotonic()
    with pytest.raises(LaunchError, match="timed out after 3 s"):
        run_logged(python(code), 3, grace=2)
    assert time.monotonic() - started < 15
    time.sleep(0.5)
    assert not running(int(pid_file.read_text()))  # the grandchild (a rank) went down with the group


def test_a_caller_that_gives_up_stops_the_launch():
    class Enough(Exception):
        pass

    def on_line(line):
        raise Enough(line)

    started = time.monotonic()
    with pytest.raises(Enough):
        run_logged(python("import time\nprint('go', flush=True)\ntime.sleep(600)"), 600, on_line, grace=2)
    assert time.monotonic() - started < 15


def test_every_profile_parses_and_single_machine_profiles_rendezvous_on_localhost():
    names = {p.stem for p in PROFILES.glob("*.yaml")}
    assert {
        "cpu-1proc",
        "cpu-2proc",
        "single-gpu",
        "multi-gpu",
        "deepspeed-zero2",
        "deepspeed-zero3",
        "multi-node",
    } <= names
    for path in PROFILES.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        assert raw["compute_environment"] == "LOCAL_MACHINE" and raw["num_processes"] >= 1, path.name
        if raw.get("num_machines", 1) == 1:
            assert raw.get("main_process_ip", "127.0.0.1") == "127.0.0.1", path.name
    assert yaml.safe_load((PROFILES / "deepspeed-zero3.yaml").read_text())["deepspeed_config"]["zero_stage"] == 3
    assert yaml.safe_load((PROFILES / "cpu-1proc.yaml").read_text())["mixed_precision"] == "no"
    assert (REPO / load_config().distributed.accelerate_config).is_file()


def test_cpu_ranks_are_spawned_by_torchrun_on_localhost_with_a_fresh_port_below_the_ephemeral_range():
    command, env = accelerate_command(AccelerateProfile.read(PROFILES / "cpu-2proc.yaml"), "pkg.worker", ["--job", "j"])
    assert env == {"ACCELERATE_USE_CPU": "true", "DS_ACCELERATOR": "cpu"}
    assert "--multi_gpu" in command and command[command.index("--main_process_ip") + 1] == "127.0.0.1"
    # a port from the ephemeral range can be a gloo rank's listener by the time accelerate probes it
    assert LOWEST_PORT <= int(command[command.index("--main_process_port") + 1]) < ephemeral_ports_start()
    assert command[-4:] == ["-m", "pkg.worker", "--job", "j"]
    one, _ = accelerate_command(AccelerateProfile.read(PROFILES / "cpu-1proc.yaml"), "pkg.worker", [])
    assert "--multi_gpu" not in one and "--main_process_port" not in one
    override, _ = accelerate_command(
        AccelerateProfile.read(PROFILES / "cpu-1proc.yaml"), "pkg.worker", [], num_processes=2, port=29999
    )
    assert override[override.index("--num_processes") + 1] == "2" and "29999" in override


def test_a_multi_node_launch_names_its_machine_and_machine_0s_address():
    profile = AccelerateProfile.read(PROFILES / "multi-node.yaml")
    assert (profile.main_process_ip, profile.main_process_port) == ("10.0.0.1", 29500)  # the template's own
    with pytest.raises(LaunchError, match="spans 2 machines: say which one"):
        accelerate_command(profile, "pkg.worker", [])
    command, env = accelerate_command(profile, "pkg.worker", [], machine=Machine(1, "10.0.0.1", 29500))
    flags = dict(zip(command[::2], command[1::2])) | dict(zip(command[1::2], command[2::2]))
    assert flags["--num_machines"] == "2" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "10.0.0.1" and flags["--main_process_port"] == "29500" and env == {}
    on_cpu, env = accelerate_command(profile, "pkg.worker", [], 2, machine=Machine(0, "127.0.0.1", 1234), use_cpu=True)
    assert env == {"ACCELERATE_USE_CPU": "true", "DS_ACCELERATOR": "cpu"} and "--multi_gpu" in on_cpu


def test_a_missing_profile_is_named():
    with pytest.raises(LaunchError, match=r"no-such\.yaml does not exist"):
        AccelerateProfile.read(PROFILES / "no-such.yaml")


@pytest.mark.parametrize(
    "name, processes, alone",
    [
        ("cpu-1proc", None, True),
        ("single-gpu", None, True),
        ("cpu-1proc", 2, False),
        ("cpu-2proc", None, False),
        ("cpu-2proc", 1, False),  # MULTI_CPU: the launcher sets up a process group, even of one
        ("deepspeed-zero2", 1, False),
        ("multi-node", 1, False),
    ],
)
def test_only_one_plain_process_on_one_machine_runs_without_a_launcher(name, processes, alone):
    assert AccelerateProfile.read(PROFILES / f"{name}.yaml").single_process(processes) is alone


def test_a_rank_leaves_with_its_exit_code_and_its_output_written_but_without_pythons_teardown():
    # what ends a launched rank (flows/execution/launcher.leave_rank): unflushed output and the exit code survive;
    # nothing of
    # the interpreter's teardown runs (an atexit handler stands for the C++ threads and finalizers it would run)
    program = textwrap.dedent(
        """
        import atexit, sys
        from flows.execution.launcher import leave_rank
        atexit.register(lambda: print("teardown ran"))
        sys.stdout.write("work written, no newline")
        sys.stderr.write("and a last word")
        leave_rank(3)
        """
    )
    ended = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (ended.returncode, ended.stdout, ended.stderr) == (3, "work written, no newline", "and a last word")
