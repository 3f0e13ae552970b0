"""Deployments of the pipeline: a cron-scheduled run of `rlhf-pipeline` on a process work pool.

    python -m flows.deploy apply [--profile default] [--cron "0 2 * * *"]   # register with the server
    prefect worker start --pool rlhf-process                                 # then a worker runs it
    python -m flows.deploy serve [--profile default]                         # or: schedule + run in one process

Both need a Prefect server (PREFECT_API_URL); `bash infra/start_servers.sh` starts one with an
MLflow server on 127.0.0.1. The schedule, work pool and time zone come from `orchestration:` in
params.yaml. `prefect.yaml` declares the same deployment for `prefect deploy`.
"""

from __future__ import annotations

import argparse
import sys

from components.config import DEFAULT_PARAMS, Config, load_config
from components.offline import stay_offline
from flows.pipeline import REPO_ROOT, rlhf_pipeline

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


def ensure_work_pool(name: str) -> None:
    """Create the process work pool if the server does not have it yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", description="runs the RLHF pipeline as local processes")
            )


def apply(cfg: Config, root: str, overrides: list[str], cron: str | None) -> str:
    """Register the scheduled deployment on the work pool; returns 'flow/deployment'."""
    ensure_work_pool(cfg.orchestration.work_pool)
    flow = rlhf_pipeline.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    flow.deploy(
        name=deployment_name(cfg.profile),
        work_pool_name=cfg.orchestration.work_pool,
        parameters=parameters(cfg.profile, root, overrides),
        description=f"the RLHF pipeline, profile {cfg.profile}, on a schedule",
        tags=["rlhf", cfg.profile],
        print_next_steps=False,
        build=False,
        push=False,
        **schedule_kwargs(cfg, cron),
    )
    return f"{rlhf_pipeline.name}/{deployment_name(cfg.profile)}"


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
    parser.add_argument("--root", default=str(REPO_ROOT))
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    args = parser.parse_args(argv)
    stay_offline()
    cfg = load_config(args.profile, args.overrides, args.params)
    if args.action == "apply":
        print(
            f"deployment: {apply(cfg, args.root, args.overrides, args.cron)} on work pool {cfg.orchestration.work_pool}"
        )
        print(f"run it now : prefect deployment run '{rlhf_pipeline.name}/{deployment_name(cfg.profile)}'")
        print(f"execute    : prefect worker start --pool {cfg.orchestration.work_pool}")
    else:
        serve(cfg, args.root, args.overrides, args.cron)
    return 0


if __name__ == "__main__":
    sys.exit(main())
