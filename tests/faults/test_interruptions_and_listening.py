"""Fault table, continued: the whole job killed mid-PPO and re-run; every server the project starts
listens on 127.0.0.1 only. (Planted secrets are checked on the four concurrent runs of
tests/integration/test_mlflow_pipeline.py.)"""
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from components.config import load_config
from components.data.files import DEMONSTRATIONS, read_jsonl, file_name
from components.models.builders import load_causal_lm, load_scalar_model
from components.training import recipe
from tests.faults.test_fault_table import main_command, main_env, new_project, run_main
from tests.layout import stage_dir

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
# long enough to be killed in the middle; a checkpoint every 4 iterations
PPO_LONGER = ["ppo.iterations=40", "ppo.checkpoint_every=4"]


def kill_during_ppo(root: Path, tmp_path: Path, prefect_api: str) -> str:
    """Start the main job and SIGKILL everything it started (flow, launcher, ranks) once PPO is past a checkpoint."""
    flow = subprocess.Popen(main_command(root, PPO_LONGER), cwd=REPO, env=main_env(tmp_path, prefect_api),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(600, lambda: os.killpg(flow.pid, signal.SIGKILL))
    timer.start()
    seen, rank_pid = [], None
    try:
        for line in flow.stdout:
            seen.append(line)
            if "rank 0/1 pid" in line:
                rank_pid = int(line.split("rank 0/1 pid")[1].split()[0])
            if "ppo iteration 13/40" in line:  # iterations 0-11 done: checkpoints after 4, 8 and 12 exist
                os.killpg(os.getpgid(rank_pid), signal.SIGKILL)  # the launched ranks run in their own group
                os.killpg(flow.pid, signal.SIGKILL)
                break
    finally:
        timer.cancel()
        flow.wait()
    return "".join(seen)


def test_a_job_killed_mid_ppo_resumes_from_its_checkpoint_and_ends_as_if_never_stopped(prefect_server, tmp_path):
    root = new_project(tmp_path)
    log = kill_during_ppo(root, tmp_path, prefect_server[0])
    assert "ppo iteration 13/40" in log, log[-3000:]
    checkpoints = list((root / "artifacts/models/.checkpoints").glob("ppo-*/iteration-*"))
    assert checkpoints and not (root / "artifacts/models/ppo").exists()

    again = run_main(root, tmp_path, prefect_server[0], PPO_LONGER)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert "ppo resumes from the checkpoint after iteration 12" in output
    assert "sft: reusing the finished stage" in output  # the task-level reuse: nothing before PPO retrained
    assert not list((root / "artifacts/models/.checkpoints").glob("ppo-*"))  # superseded by the model

    # the uninterrupted run from the same SFT policy and reward model, for comparison
    cfg = load_config("smoke", PPO_LONGER)
    demonstrations = [r.data for r in read_jsonl(root / "data" / file_name(DEMONSTRATIONS), DEMONSTRATIONS)]
    prompts = sorted({r["prompt"] for r in demonstrations})
    never_stopped = recipe.ppo_stage(cfg, recipe.make_tokenizer(cfg), load_causal_lm(stage_dir(root, "sft")), load_scalar_model(stage_dir(root, "reward_model")),
                                     prompts, demonstrations).model
    resumed = load_causal_lm(stage_dir(root, "ppo"))
    for (name, a), b in zip(never_stopped.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name  # single process on CPU: bit-identical


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_servers_the_project_starts_listen_on_localhost_only(mlflow_server, prefect_server):
    for url in (mlflow_server, prefect_server[0]):
        port = int(url.split(":")[2].split("/")[0])
        assert listening_addresses(port) == {"0100007F"}, url  # 127.0.0.1 and nothing else
    for script in ("infra/mlflow_server.sh", "infra/start_servers.sh"):
        text = (REPO / script).read_text()
        assert "--host 127.0.0.1" in text and "0.0.0.0" not in text, script
    for profile in (REPO / "infra/accelerate").glob("*.yaml"):
        if "multi-node" not in profile.name:
            assert "main_process_ip: 127.0.0.1" in profile.read_text() or "num_processes: 1" in profile.read_text(), profile.name
