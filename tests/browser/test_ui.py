"""The pipeline's results as a person sees them, in headless Chromium (the Debian package, driven by Playwright).

One smoke run of the pipeline (gate opened wide, so it promotes) against fresh Prefect and MLflow
servers on 127.0.0.1; then
  - Prefect UI: the flow run's page says Completed and its Artifacts tab lists `data-validation`,
    `evaluation` and `gate`;
  - MLflow UI: experiment `rlhf-pipeline` lists the parent run `pipeline-smoke` and, expanded, its
    stage runs (`sft`, `ppo`, ...); the registered model `rlhf-policy` shows the alias `champion`.
Assertions are on page text; each page is also screenshotted. The browser may reach 127.0.0.1 only.
"""
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
WAIT = 60_000  # ms: the UIs are JS apps that load their data after the page
OPEN_GATE = [
    "gate.min_win_rate_lower=0.0", "gate.min_rm_accuracy=0.0", "gate.max_kl=1000", "gate.sft_tolerance=100",
    "gate.overoptimisation.max_gold_drop=100", "gate.overoptimisation.max_proxy_gold_gap=1.0",
]


def post_json(url: str, body: dict):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def pipeline(prefect_server, mlflow_server, tmp_path_factory):
    """Runs the smoke pipeline once: the Prefect flow run (API JSON), the MLflow parent run id, the promoted version."""
    api, home = prefect_server
    repo = tmp_path_factory.mktemp("repo")
    for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@example.com"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    command = [sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--root", str(repo)]
    for item in OPEN_GATE:
        command += ["--set", item]
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_server}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "decision: promote" in done.stdout
    run_id = re.search(r"^mlflow\s+: \S+ \(run (\w+)\)", done.stdout, re.M).group(1)
    version = re.search(r"^registry\s+: rlhf-policy version (\d+) \(promote\); champion = \1,", done.stdout, re.M).group(1)
    flow_runs = post_json(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["rlhf-pipeline"]}}})
    assert len(flow_runs) == 1, flow_runs
    return {"flow_run": flow_runs[0], "mlflow_run_id": run_id, "version": version}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # anything not addressed to 127.0.0.1 (CDNs, telemetry) is refused before it leaves the browser
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(WAIT)
    yield page
    context.close()


def screenshot(page, path: Path) -> None:
    page.screenshot(path=path, full_page=True)
    assert path.is_file() and path.stat().st_size > 0


def test_prefect_ui_shows_the_completed_flow_run_and_its_artifacts(pipeline, prefect_server, page, tmp_path):
    api, _ = prefect_server
    flow_run = pipeline["flow_run"]
    assert flow_run["state_type"] == "COMPLETED"
    page.goto(f"{api.removesuffix('/api')}/runs/flow-run/{flow_run['id']}")
    expect(page.get_by_text(flow_run["name"], exact=True).first).to_be_visible(timeout=WAIT)
    expect(page.locator(".state-badge").first).to_have_text("Completed", timeout=WAIT)
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    artifacts = page.get_by_role("tabpanel")  # only the selected tab's panel is in the page
    for key in ("data-validation", "evaluation", "gate"):
        expect(artifacts.get_by_text(key, exact=True)).to_be_visible(timeout=WAIT)
    screenshot(page, tmp_path / "prefect-flow-run.png")


def test_mlflow_ui_shows_the_runs_and_the_champion(pipeline, mlflow_server, page, tmp_path):
    from mlflow import MlflowClient

    experiment_id = MlflowClient(mlflow_server).get_run(pipeline["mlflow_run_id"]).info.experiment_id
    page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    expect(page.get_by_text("rlhf-pipeline", exact=True).first).to_be_visible(timeout=WAIT)
    parent = page.get_by_role("row").filter(has_text="pipeline-smoke")
    expect(parent).to_be_visible(timeout=WAIT)
    parent.get_by_role("button").first.click()  # the expander: stage runs are nested under the parent
    for name in ("sft", "reward_model", "ppo", "gate"):
        expect(page.get_by_role("row").filter(has=page.get_by_text(name, exact=True))).to_be_visible(timeout=WAIT)
    screenshot(page, tmp_path / "mlflow-experiment.png")

    page.goto(f"{mlflow_server}/#/models/rlhf-policy")
    expect(page.get_by_text("rlhf-policy", exact=True).first).to_be_visible(timeout=WAIT)
    # the alias tag in the version's row (the model's description mentions `champion` too)
    version = page.get_by_role("row").filter(has=page.get_by_text(f"Version {pipeline['version']}", exact=True))
    expect(version).to_contain_text(re.compile(r"@\s*champion"), timeout=WAIT)
    screenshot(page, tmp_path / "mlflow-model.png")
