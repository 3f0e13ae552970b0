import os
import subprocess
from pathlib import Path

import pytest
import torch

from components.offline import stay_offline
from flows.execution.cores import usable_cores

stay_offline()  # nothing in the test suite may phone home

MAX_WORKERS = 4  # each worker starts its own Prefect and MLflow servers: more would cost more than they save
# The session-wide runs several modules read (made once per worker that needs them): every module that reads one is
# run by the same worker. A module that starts reading one must be listed (collection fails otherwise).
SHARED_RUNS = {
    "pipeline_runs": "tiny-runs",
    "smoke_root": "smoke-root",
    "tiny_sft": "tiny-models",
    "tiny_reward_model": "tiny-models",
}
SHARED_MODULES = {
    "tests/browser/test_ui.py": "tiny-runs",
    "tests/integration/test_mlflow_pipeline.py": "tiny-runs",
    "tests/integration/test_negative_controls.py": "tiny-runs",
    "tests/browser/test_human_round.py": "smoke-root",
    "tests/faults/test_bad_judges.py": "smoke-root",
    "tests/integration/test_human_judge.py": "smoke-root",
    "tests/integration/test_labelling_rounds.py": "smoke-root",
    "tests/model/test_generation.py": "tiny-models",
    "tests/model/test_ppo.py": "tiny-models",
    "tests/model/test_ppo_resume.py": "tiny-models",
    "tests/model/test_rounds.py": "tiny-models",
    "tests/model/test_selection.py": "tiny-models",
    "tests/model/test_sft.py": "tiny-models",
    "tests/model/test_token_sensitivity.py": "tiny-models",
}
# handed out first, longest first (minutes each, measured), so that no worker starts a long one last
LONGEST_FIRST = (
    "tests/data/test_main_job.py",  # ~450 s since it runs the whole flow again on two processes
    "tiny-runs",
    "smoke-root",
    "tests/faults/test_fault_table.py",
    "tests/distributed/test_ppo_launch.py",
    "tests/faults/test_interruptions_and_listening.py",
    "tests/distributed/test_deepspeed.py",
    "tiny-models",
    "tests/integration/test_prefect_deployment.py",
    "tests/faults/test_tracking_outage.py",
    "tests/distributed/test_stage_launch.py",
    "tests/integration/test_foreign_models.py",
)


def worker_group(nodeid: str) -> str:
    """What one xdist worker runs from start to end: a test module (its module fixtures are set up once), or every
    module that reads one of the SHARED_RUNS."""
    module = nodeid.split("::")[0]
    return SHARED_MODULES.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` with worker_group as the scope, the units in collection order (LONGEST_FIRST)."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunsScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    config.option.loadscopereorder = False
    return SharedRunsScheduling(config, log)


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: a worker per core, at most MAX_WORKERS."""
    return max(1, min(usable_cores(), MAX_WORKERS))


# each xdist worker (and every process it starts: flows, ranks, servers) gets its share of the cores, never more:
# two torch processes spinning two threads each on two cores ran 5x slower than one
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // workers))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

pytest_plugins = ["tests.pipeline_runs"]  # the session's shared pipeline runs (integration and browser tests)

# `pytest --quick`: the inner loop, without the groups that start servers, browsers or processes and without `slow`
NOT_QUICK = ("integration", "browser", "distributed", "faults", "slow")


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help=f"the inner loop: deselect {', '.join(NOT_QUICK)}")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick"):
        kept = [item for item in items if not any(item.get_closest_marker(name) for name in NOT_QUICK)]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    for item in items:
        module = item.nodeid.split("::")[0]
        for name in set(item.fixturenames) & set(SHARED_RUNS):
            if SHARED_MODULES.get(module) != SHARED_RUNS[name]:
                raise pytest.UsageError(f"{module} reads {name}: list it in SHARED_MODULES as {SHARED_RUNS[name]!r}")
    order = {group: rank for rank, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(worker_group(item.nodeid), len(order)))  # stable: the rest keep theirs


@pytest.fixture(scope="session", autouse=True)
def _dvc_site_cache(tmp_path_factory):
    """DVC keeps a per-repo cache under /var/tmp/dvc; keep it inside the test's temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))
        yield


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def new_repo(root: Path) -> Path:
    """An empty git repository at ``root`` with a local identity, for DVC to live in."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.name", "test")
    git(root, "config", "user.email", "test@example.com")
    return root


@pytest.fixture
def git_repo(tmp_path) -> Path:
    return new_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory) -> Path:
    """One project root for the smoke-profile runs on the embedded data that only need some trained policy (the
    judges' faults, the human judge's rounds): whichever runs first trains, the others reuse its stages. Tests that
    check what a run trains keep their own root."""
    return new_repo(tmp_path_factory.mktemp("smoke-project") / "project")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The tracking URI of the session's MLflow server (SQLite backend, artefacts in a temp dir).
    Tests that count registry versions or aliases record the state they start from."""
    from infra.servers import mlflow_server as start

    with start(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """(api_url, prefect_home) of the session's Prefect server with its own SQLite database
    (tests/integration/test_prefect_deployment.py starts its own: it restarts it)."""
    from infra.servers import prefect_server as start

    home = tmp_path_factory.mktemp("prefect-home")
    with start(home) as api:
        yield api, home


@pytest.fixture(scope="module")
def in_process_flow(prefect_server, mlflow_server):
    """Run the flow (smoke profile) in this process against the session's servers; MLflow's URI is restored after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import rlhf_pipeline

    api, _ = prefect_server
    with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: api}):
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        yield lambda root, overrides: rlhf_pipeline(
            profile="smoke", overrides=overrides, root=str(root), tracking_uri=mlflow_server
        )
