"""The math and data modules import without the orchestration and tracking tools, and do nothing on import."""

import subprocess
import sys

PURE_MODULES = [
    "components.config",
    "components.data.task",
    "components.data.gold_judge",
    "components.data.demonstrator",
    "components.data.labeler",
    "components.data.synthetic",
    "components.data.dataset",
    "components.data.prepare",
    "components.data.expectations",
    "components.data.files",
]

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"prefect", "mlflow", "great_expectations", "dvc", "dvc_data"}:
            raise ImportError(f"{name} must not be imported here")
sys.meta_path.insert(0, Block())
"""


def test_pure_modules_import_without_prefect_mlflow_gx_or_dvc(tmp_path):
    code = BLOCKER + "".join(f"import {m}\n" for m in PURE_MODULES)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created on import


def test_stay_offline_turns_every_tool_s_telemetry_off(monkeypatch):
    from components.offline import TELEMETRY_OFF, stay_offline

    for key in TELEMETRY_OFF:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # an explicit user choice wins
    stay_offline()
    import os

    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
