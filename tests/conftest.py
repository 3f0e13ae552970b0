import subprocess
from pathlib import Path

import pytest

from components.offline import stay_offline

stay_offline()  # nothing in the test suite may phone home


@pytest.fixture(scope="session", autouse=True)
def _dvc_site_cache(tmp_path_factory):
    """DVC keeps a per-repo cache under /var/tmp/dvc; keep it inside the test's temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))
        yield


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def git_repo(tmp_path) -> Path:
    """An empty git repository with a local identity, for DVC to live in."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    git(root, "config", "user.name", "test")
    git(root, "config", "user.email", "test@example.com")
    return root
