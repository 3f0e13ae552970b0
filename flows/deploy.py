"""Deployments of the pipeline: a cron-scheduled run of `rlhf-pipeline` on a process work pool.

    python -m flows.deploy apply [--profile default] [--cron "0 2 * * *"]   # register with the server
    prefect worker start --pool rlhf-process                                 # then a worker runs it
    python -m flows.deploy serve [--profile default]                         # or: schedule + run in one process

On a Kubernetes cluster (GPU nodes), the same deployment on a work pool made from a job template:

    python -m flows.deploy apply --pool rlhf-k8s --pool-type kubernetes \
        --job-template infra/k8s/gpu-work-pool-job-template.json --job-variable image=REGISTRY/rlhf:TAG

run from inside that image (``docker run REGISTRY/rlhf:TAG python -m flows.deploy apply ...``), so the deployment's
code directory is the image's (/opt/rlhf-pipeline), where the pods find it.

Both need a Prefect server (PREFECT_API_URL); `bash infra/start_servers.sh` starts one with an
MLflow server on 127.0.0.1. The schedule, work pool and time zone come from `orchestration:` in
params.yaml. `prefect.yaml` declares the same deployment for `prefect deploy`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.config import DEFAULT_PARAMS, Config, load_config
from components.offline import stay_offline
from flows.pipeline import REPO_ROOT, profile_root, rlhf_pipeline

ENTRYPOINT = "flows/pipeline.py:rlhf_pipeline"


def deployment_name(profile: str) -> str:
    return f"nightly-{profile}"


def schedule_kwargs(cfg: Config, cron: str | None) -> dict:
    from prefect.client.schemas.schedules import CronSchedule

    return {
        "schedules": [
            CronSchedule(cron=cron or cfg.orchestration.schedule_cron, timezone=cfg.orchestration.schedule_timezone)
        ]
    }


def parameters(profile: str, root: str, overrides: list[str]) -> dict:
    return {"profile": profile, "root": root, "overrides": overrides}


def ensure_work_pool(name: str, pool_type: str = "process", job_template: dict | None = None) -> None:
    """Create the work pool if the server does not have it yet; the server checks ``job_template`` (every placeholder
    declared, every default of its declared type) and refuses the pool if it fails."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=pool_type,
                    base_job_template=job_template or {},
                    description=f"runs the RLHF pipeline ({pool_type})",
                )
            )


def apply(
    cfg: Config,
    root: str,
    overrides: list[str],
    cron: str | None,
    pool: str | None = None,
    pool_type: str = "process",
    job_template: dict | None = None,
    job_variables: dict | None = None,
) -> str:
    """Register the scheduled deployment on the work pool (``orchestration.work_pool`` unless ``pool``); returns
    'flow/deployment'. The server checks ``job_variables`` against the pool's job template."""
    pool = pool or cfg.orchestration.work_pool
    ensure_work_pool(pool, pool_type, job_template)
    flow = rlhf_pipeline.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    flow.deploy(
        name=deployment_name(cfg.profile),
        work_pool_name=pool,
        parameters=parameters(cfg.profile, root, overrides),
        description=f"the RLHF pipeline, profile {cfg.profile}, on a schedule",
        tags=["rlhf", cfg.profile],
        job_variables=job_variables or {},
        print_next_steps=False,
        build=False,
        push=False,
        **schedule_kwargs(cfg, cron),
    )
    return f"{rlhf_pipeline.name}/{deployment_name(cfg.profile)}"


def job_variable(item: str) -> tuple[str, object]:
    """``KEY=VALUE``; the value read as JSON when it is JSON (``gpus=2``), else as a string (``image=repo/x:1``)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--job-variable wants KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def serve(cfg: Config, root: str, overrides: list[str], cron: str | None) -> None:
    """Schedule and execute in this process (no work pool, no worker)."""
    from prefect import serve as prefect_serve

    prefect_serve(
        rlhf_pipeline.to_deployment(
            name=deployment_name(cfg.profile),
            parameters=parameters(cfg.profile, root, overrides),
            tags=["rlhf", cfg.profile],
            **schedule_kwargs(cfg, cron),
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["apply", "serve"])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cron", help="override orchestration.schedule_cron")
    parser.add_argument("--root", help="the project root (default: as flows.pipeline's)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    parser.add_argument("--pool", help="the work pool (default: orchestration.work_pool)")
    parser.add_argument("--pool-type", default="process", help="a new pool's type: process | kubernetes | ...")
    parser.add_argument("--job-template", type=Path, help="a new pool's base job template (JSON)")
    parser.add_argument("--job-variable", type=job_variable, action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    stay_offline()
    cfg = load_config(args.profile, args.overrides, args.params)
    args.root = args.root or str(profile_root(args.profile))
    if args.action == "apply":
        pool = args.pool or cfg.orchestration.work_pool
        template = json.loads(args.job_template.read_text(encoding="utf-8")) if args.job_template else None
        deployed = apply(
            cfg,
            args.root,
            args.overrides,
            args.cron,
            pool,
            args.pool_type,
            template,
            dict(args.job_variable),
        )
        print(f"deployment: {deployed} on work pool {pool}")
        print(f"run it now : prefect deployment run '{rlhf_pipeline.name}/{deployment_name(cfg.profile)}'")
        print(f"execute    : prefect worker start --pool {pool}")
    else:
        serve(cfg, args.root, args.overrides, args.cron)
    return 0


if __name__ == "__main__":
    sys.exit(main())
