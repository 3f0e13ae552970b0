"""What cannot run here (no Docker engine, no cluster) is at least checked: it parses, it is complete,
and it agrees with the config and the code."""

import json
import subprocess
from pathlib import Path

import yaml

from components.config import load_config
from flows.deploy import ENTRYPOINT, deployment_name

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def test_compose_file_has_the_production_shape_and_publishes_on_localhost_only():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prefect-server", "prefect-db", "mlflow-server", "mlflow-db", "artifact-store", "worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "--backend-store-uri postgresql://" in services["mlflow-server"]["command"]
    assert (
        "s3://" in services["mlflow-server"]["command"]
        and services["mlflow-server"]["environment"]["MLFLOW_S3_ENDPOINT_URL"]
    )
    assert services["worker"]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server")
    assert load_config().orchestration.work_pool in services["worker"]["command"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_gpu_job_template_is_a_complete_kubernetes_work_pool_template():
    template = json.loads((INFRA / "k8s" / "gpu-work-pool-job-template.json").read_text())
    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["apiVersion"] == "batch/v1"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    # every placeholder the job uses is declared as a variable
    placeholders = {p.split("}}")[0].strip() for p in json.dumps(template["job_configuration"]).split("{{")[1:]}
    assert placeholders <= set(template["variables"]["properties"])
    assert "image" in template["variables"]["required"]


def test_prefect_yaml_declares_the_deployment_flows_deploy_registers():
    cfg = load_config()
    (deployment,) = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert deployment["entrypoint"] == ENTRYPOINT
    assert (REPO / ENTRYPOINT.split(":")[0]).is_file()
    assert deployment["name"] == deployment_name(cfg.profile)
    assert deployment["work_pool"]["name"] == cfg.orchestration.work_pool
    assert deployment["schedules"][0] == {
        "cron": cfg.orchestration.schedule_cron,
        "timezone": cfg.orchestration.schedule_timezone,
    }


def test_server_scripts_are_valid_bash_and_bind_localhost():
    for script in ("mlflow_server.sh", "start_servers.sh", "setup.sh"):
        assert subprocess.run(["bash", "-n", str(INFRA / script)]).returncode == 0, script
    assert "--host 127.0.0.1" in (INFRA / "mlflow_server.sh").read_text()
    assert "--host 127.0.0.1" in (INFRA / "start_servers.sh").read_text()
