"""The pipeline's results as a person sees them, in headless Chromium (the Debian package, driven by Playwright).

The session's `tiny` pipeline runs (tests/pipeline_runs.py: two promoted and three rejected negative controls, all
at once) against real Prefect and MLflow servers on 127.0.0.1; then
  - Prefect UI: the promoted run's flow-run page says Completed and its Artifacts tab lists
    `data-validation`, `evaluation` and `gate`;
  - MLflow UI: experiment `rlhf-pipeline` lists the parent runs `pipeline-tiny` and, expanded, their
    stage runs (`sft`, `ppo`, ...); the registered model `rlhf-policy` shows the alias `champion`
    on the version the registry says holds it.
Assertions are on page text; each page is also screenshotted (`RLHF_SCREENSHOTS_DIR=docs/images` refreshes the
README's pictures). The browser may reach 127.0.0.1 only.
"""

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browsers import WAIT, screenshot
from tests.flow_helpers import stage_runs
from tests.pipeline_runs import parent_run_id

pytestmark = pytest.mark.browser


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def pipeline(pipeline_runs):
    """The promoted run: its Prefect flow run (API JSON), its MLflow parent run id; and the champion version."""
    from mlflow import MlflowClient

    done = pipeline_runs.done["promoted"]
    flow_run_id = re.search(r"Prefect UI : \S+/runs/flow-run/([0-9a-f-]+)", done.stdout).group(1)
    champion = MlflowClient(pipeline_runs.mlflow_uri).get_model_version_by_alias("rlhf-policy", "champion")
    return {
        "flow_run": get_json(f"{pipeline_runs.prefect_api}/flow_runs/{flow_run_id}"),
        "mlflow_run_id": parent_run_id(done),
        "version": champion.version,
    }


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # anything not addressed to 127.0.0.1 (CDNs, telemetry) is refused before it leaves the browser
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(WAIT)
    yield page
    context.close()


def test_prefect_ui_shows_the_completed_flow_run_and_its_artifacts(pipeline, pipeline_runs, page, tmp_path):
    api = pipeline_runs.prefect_api
    flow_run = pipeline["flow_run"]
    assert (flow_run["state_type"], flow_run["state_name"]) == ("COMPLETED", "Promoted")
    page.goto(f"{api.removesuffix('/api')}/runs/flow-run/{flow_run['id']}")
    expect(page.get_by_text(flow_run["name"], exact=True).first).to_be_visible(timeout=WAIT)
    expect(page.locator(".state-badge").first).to_have_text("Promoted", timeout=WAIT)  # a rejected run: "Rejected"
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    artifacts = page.get_by_role("tabpanel")  # only the selected tab's panel is in the page
    for key in ("data-validation", "evaluation", "gate"):
        expect(artifacts.get_by_text(key, exact=True)).to_be_visible(timeout=WAIT)
    screenshot(page, tmp_path / "prefect-flow-run.png")


def test_mlflow_ui_shows_the_runs_and_the_champion(pipeline, pipeline_runs, page, tmp_path):
    from mlflow import MlflowClient

    mlflow_server = pipeline_runs.mlflow_uri
    experiment_id = MlflowClient(mlflow_server).get_run(pipeline["mlflow_run_id"]).info.experiment_id
    page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    expect(page.get_by_text("rlhf-pipeline", exact=True).first).to_be_visible(timeout=WAIT)
    parent = page.get_by_role("row").filter(has_text="pipeline-tiny").first
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


def test_mlflow_ui_shows_the_overoptimisation_plot_of_the_ppo_run(pipeline, pipeline_runs, page, tmp_path):
    """Gao et al.'s view of the PPO run: the PNG opens in the MLflow UI's artifact viewer and has pixels."""
    from mlflow import MlflowClient

    client = MlflowClient(pipeline_runs.mlflow_uri)
    parent = client.get_run(pipeline["mlflow_run_id"])
    ppo = stage_runs(client, parent)["ppo"]
    assert {"gao.shipped_iteration", "gao.shipped_kl"} <= set(ppo.data.metrics)
    page.goto(
        f"{pipeline_runs.mlflow_uri}/#/experiments/{parent.info.experiment_id}/runs/{ppo.info.run_id}/artifacts/plots/overoptimisation.png"
    )
    image = page.locator("img[alt='plots/overoptimisation.png']").first  # its src is a blob: URL
    expect(image).to_be_visible(timeout=WAIT)
    page.wait_for_function("img => img.complete && img.naturalWidth > 300", arg=image.element_handle(), timeout=WAIT)
    screenshot(page, tmp_path / "mlflow-overoptimisation.png")
