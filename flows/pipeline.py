"""The main job: the RLHF pipeline as a Prefect flow (for now: the data stages).

    python -m flows.pipeline [--profile default] [--set key.path=value ...] [--seed N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.config import DEFAULT_PARAMS, ConfigError, load_config
from components.data import stages, versioned
from components.offline import stay_offline
from components.tracking.dvc_store import DataDrift

REPO_ROOT = Path(__file__).resolve().parent.parent
VALIDATION_ARTIFACT = "data-validation"


@task(name="stage data")
def stage_data(cfg, root: str) -> versioned.Candidate:
    candidate = versioned.stage(cfg, root)
    where = "in place" if candidate.in_place else f"staged at {candidate.directory}"
    get_run_logger().info("data %s (recipe %s)", where, candidate.recipe[:12])
    return candidate


@task(name="validate data")
def validate_data(cfg, root: str, candidate: versioned.Candidate) -> dict:
    try:
        report = stages.validate(cfg, root, candidate.directory, candidate.file_labels())
    except stages.DataValidationFailed as failed:
        versioned.discard(candidate)
        create_markdown_artifact(key=VALIDATION_ARTIFACT, markdown=f"# Data validation FAILED\n\n```\n{failed.report.summary()}\n```")
        raise
    create_markdown_artifact(key=VALIDATION_ARTIFACT, markdown=f"# Data validation passed\n\n```\n{report.summary()}\n```")
    return {"success": report.success, "data_docs": report.data_docs_index, "rows": report.rows}


@task(name="version data")
def version_data(cfg, root: str, candidate: versioned.Candidate) -> dict:
    result = versioned.commit(cfg, root, candidate)
    get_run_logger().info("data %s: md5 %s (%s.dvc)", result.action, result.version.md5, result.version.path)
    return result.as_dict()


@task(name="prepare data")
def prepare_data(cfg, root: str, data_version: dict) -> dict:
    return stages.prepare_training_inputs(cfg, root, data_version)


@task(name="describe data")
def describe_data(cfg, root: str) -> dict:
    return stages.data_summary(cfg, root)


@flow(name="rlhf-pipeline", flow_run_name="{profile}")
def rlhf_pipeline(
    profile: str = "default",
    overrides: list[str] | None = None,
    root: str = str(REPO_ROOT),
    params: str = str(DEFAULT_PARAMS),
) -> dict:
    cfg = load_config(profile, overrides, params)
    candidate = stage_data(cfg, root)
    validation = validate_data(cfg, root, candidate)
    data_version = version_data(cfg, root, candidate)
    prepared = prepare_data(cfg, root, data_version)
    summary = describe_data(cfg, root)
    return {"data_version": data_version, "validation": validation, "prepared": prepared, "data": summary}


def _print_summary(result: dict, seconds: float) -> None:
    version, data = result["data_version"], result["data"]
    print("\n== RLHF pipeline: data ==")
    print(f"data version : {version['md5']} ({version['action']}; tracked by {version['path']}.dvc)")
    for name, count in data["rows"].items():
        print(f"rows         : {name:<15} {count}")
    if "label_accuracy_vs_gold" in data:
        print(f"labels       : {data['label_accuracy_vs_gold']:.3f} agree with the gold judge "
              f"(Bradley-Terry predicts {data['label_accuracy_expected']:.3f})")
        print(f"demos gold   : mean {data['demonstrations_gold_mean']:.2f}, sd {data['demonstrations_gold_std']:.2f} (max 4.5)")
    print(f"validation   : passed; Data Docs at {result['validation']['data_docs']}")
    print(f"prepared     : {result['prepared']}")
    print(f"wall time    : {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="profile from params.yaml (default, smoke, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    parser.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    parser.add_argument("--root", default=str(REPO_ROOT), help="repository root that the config's data paths are relative to")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="the params file (default: this repository's params.yaml)")
    args = parser.parse_args(argv)
    stay_offline()
    overrides = args.overrides + ([f"seed={args.seed}"] if args.seed is not None else [])
    try:
        load_config(args.profile, overrides, args.params)  # refuse a bad config before any work starts
        started = time.perf_counter()
        result = rlhf_pipeline(profile=args.profile, overrides=overrides, root=args.root, params=args.params)
    except (ConfigError, DataDrift, stages.DataValidationFailed) as error:
        print(f"\npipeline stopped: {error}", file=sys.stderr)
        return 2
    _print_summary(result, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
