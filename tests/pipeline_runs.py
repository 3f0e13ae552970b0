"""Five runs of the `tiny` pipeline against real MLflow and Prefect servers, made once per test
session and shared by the integration tests (what the runs recorded) and the browser tests (what a
person sees of them). All five at once, on one project root, a core shared between every two or three:
  - promoted: a gate every honest run passes (thresholds at their loosest);
  - rival: the same with RLOO in PPO's place (same data, SFT, comparisons, RM and baselines; its own RL stage, no
    critic) -> both promoted; champion = the one with the higher gate score;
  - control: the reward model learns from shuffled labels, under the loose gate except the
    reward-model accuracy floor -> rejected; never champion;
  - hacked and disagreeing, the negative controls of tests/integration/test_negative_controls.py: every rule but
    the one under test opened wide, PPO without a KL penalty (refused by the KL budget) and a reward ensemble
    whose members disagree (refused by the agreement floor).
Every run has secrets planted in its environment. The MLflow server (and so the registry) is the
runs' own; the Prefect server is the session's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# every rule but the RM accuracy floor opened as wide as the config allows
LOOSE_GATE = [
    "gate.min_win_rate_lower=0.0",
    "gate.max_kl=1000",
    "gate.sft_tolerance=100",
    "gate.overoptimisation.max_gold_drop=100",
    "gate.overoptimisation.max_proxy_gold_gap=1.0",
]
RIVAL_RL = "rl.algorithm=rloo"
WIDE_OPEN = [*LOOSE_GATE, "gate.min_rm_accuracy=0.0"]
# no KL penalty, a learning rate 5x the tiny profile's and 10x its iterations: the policy runs away from SFT to
# whatever the reward model over-rates (issue 35's kl-free run). Measured (2026-12-06): gold peaks at iteration 5
# (+0.86 from -0.2) and ends near -0.3 while the RM climbs from 1.08 to 1.54 and the KL to 33 nats. Selection's
# log-spaced candidates are iterations 6 and 40: the labels pick 6 (0.42 against 0.22), whose KL (about 8) is within
# the budget of 10; the over-optimisation rule, at its default drop, must refuse the run all the same (the run went on
# past gold's fitted peak while the RM rose). The selection settings stay the others', so the supervised baselines
# are theirs, reused
HACKED = [
    "ppo.kl.kl_coef=0.0",
    "ppo.lr=1.0e-3",
    "ppo.iterations=40",
    "gate.max_kl=10",
    "gate.overoptimisation.max_gold_drop=0.05",
]
# three members from independent heads, barely trained: their orderings are close to independent coin flips
DISAGREEING = ["reward.ensemble_size=3", "reward.epochs=0.02", "gate.min_rm_member_agreement=0.7"]
PROMOTED = ("promoted", "rival")  # the runs the gate promotes; the others it must refuse
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret-5f1c9e",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-77ab",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-c0ffee",
}


@dataclass
class PipelineRuns:
    root: Path  # the project root all three share
    mlflow_uri: str
    mlflow_home: Path
    prefect_api: str
    prefect_home: Path
    done: dict[str, subprocess.CompletedProcess]  # promoted, rival, control


def parent_run_id(done: subprocess.CompletedProcess) -> str:
    assert "(run " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.split("(run ")[1].split(")")[0]


def run_pipeline(runs: PipelineRuns, overrides: list[str], threads: int | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": runs.mlflow_uri,
        "PREFECT_API_URL": runs.prefect_api,
        "PREFECT_HOME": str(runs.prefect_home),
        **SECRETS,
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
    }
    args = [sys.executable, "-m", "flows.pipeline", "--profile", "tiny", "--root", str(runs.root)]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def at_once(runs: PipelineRuns, **overrides: list[str]) -> dict[str, subprocess.CompletedProcess]:
    """The runs side by side, sharing the machine's cores (torch threads oversubscribed spin and slow all of them)."""
    threads = max(1, (os.cpu_count() or 1) // len(overrides))
    with ThreadPoolExecutor(len(overrides)) as pool:
        started = {name: pool.submit(run_pipeline, runs, items, threads) for name, items in overrides.items()}
        return {name: future.result() for name, future in started.items()}


@pytest.fixture(scope="session")
def pipeline_runs(prefect_server, tmp_path_factory):
    from infra.servers import mlflow_server
    from tests.conftest import new_repo

    root = new_repo(tmp_path_factory.mktemp("project"))
    home = tmp_path_factory.mktemp("pipeline-mlflow-server")
    with mlflow_server(home) as uri:
        runs = PipelineRuns(root, uri, home, prefect_server[0], prefect_server[1], {})
        runs.done.update(
            at_once(
                runs,
                promoted=LOOSE_GATE,
                rival=[*LOOSE_GATE, RIVAL_RL],
                control=[*LOOSE_GATE, "reward.shuffle_labels=true"],
                hacked=[*WIDE_OPEN, *HACKED],
                disagreeing=[*WIDE_OPEN, *DISAGREEING],
            )
        )
        yield runs
