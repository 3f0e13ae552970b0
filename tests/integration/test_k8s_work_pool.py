"""The Kubernetes GPU work pool (infra/k8s/gpu-work-pool-job-template.json), checked by the session's Prefect server
itself: the pool is created from the template with `flows.deploy apply`, the deployment's job variables and each flow
run's are validated against its variables schema, and a template the server must refuse is refused."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.deploy import deployment_name, job_variable

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra/k8s/gpu-work-pool-job-template.json"
POOL = "rlhf-k8s-gpu"
IMAGE = "registry.example/rlhf:1"


@pytest.fixture(scope="module")
def k8s_deployment(prefect_server, tmp_path_factory):
    """`flows.deploy apply` onto a new Kubernetes pool made from the template, as the docs say to run it."""
    api, home = prefect_server
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    root = tmp_path_factory.mktemp("k8s-project")
    args = ["apply", "--profile", "smoke", "--root", str(root), "--pool", POOL, "--pool-type", "kubernetes"]
    args += ["--job-template", str(TEMPLATE), "--job-variable", f"image={IMAGE}", "--job-variable", "gpus=2"]
    done = subprocess.run(
        [sys.executable, "-m", "flows.deploy", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"on work pool {POOL}" in done.stdout
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"rlhf-pipeline/{deployment_name('smoke')}")
        yield client, deployment


def test_the_server_holds_the_pool_made_from_the_template_and_the_deployment_on_it(k8s_deployment):
    client, deployment = k8s_deployment
    pool = client.read_work_pool(POOL)
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(TEMPLATE.read_text())
    assert deployment.work_pool_name == POOL
    assert deployment.job_variables == {"image": IMAGE, "gpus": 2}


def test_the_server_validates_each_flow_runs_job_variables_against_the_template(k8s_deployment):
    client, deployment = k8s_deployment
    run = client.create_flow_run_from_deployment(deployment.id, job_variables={"gpus": 4, "memory": "128Gi"})
    try:
        assert run.job_variables == {"gpus": 4, "memory": "128Gi"}
    finally:
        client.delete_flow_run(run.id)
    with pytest.raises(PrefectHTTPStatusError) as refused:  # gpus is an integer in the template
        client.create_flow_run_from_deployment(deployment.id, job_variables={"gpus": "two"})
    assert refused.value.response.status_code == 422 and "gpus" in refused.value.response.text


def test_the_server_refuses_a_deployment_without_the_required_image_when_a_run_is_created(k8s_deployment):
    client, deployment = k8s_deployment
    template = json.loads(TEMPLATE.read_text())
    client.create_work_pool(WorkPoolCreate(name=f"{POOL}-bare", type="kubernetes", base_job_template=template))
    bare = client.create_deployment(
        flow_id=deployment.flow_id, name="no-image", work_pool_name=f"{POOL}-bare", entrypoint=deployment.entrypoint
    )
    with pytest.raises(PrefectHTTPStatusError) as refused:
        client.create_flow_run_from_deployment(bare)
    assert refused.value.response.status_code == 422 and "image" in refused.value.response.text


@pytest.mark.parametrize(
    "defect, named",
    [
        ("a placeholder the variables do not declare", "gpus"),
        ("a default of the wrong type", "finished_job_ttl"),
    ],
)
def test_the_server_refuses_a_broken_template(k8s_deployment, defect, named):
    client, _ = k8s_deployment
    template = copy.deepcopy(json.loads(TEMPLATE.read_text()))
    if defect.startswith("a placeholder"):
        del template["variables"]["properties"]["gpus"]
    else:
        template["variables"]["properties"]["finished_job_ttl"]["default"] = "one day"
    with pytest.raises(PrefectHTTPStatusError) as refused:
        client.create_work_pool(WorkPoolCreate(name=f"{POOL}-broken", type="kubernetes", base_job_template=template))
    assert refused.value.response.status_code == 422 and named in refused.value.response.text


def test_a_job_variable_reads_json_values_and_keeps_the_rest_as_text():
    assert job_variable("gpus=2") == ("gpus", 2)
    assert job_variable("image=registry.example/rlhf:1") == ("image", "registry.example/rlhf:1")
    assert job_variable('env={"A": "1"}') == ("env", {"A": "1"})
