"""The data stages from the command line, as ``dvc.yaml`` runs them:

    python -m flows.data_cli build | rebuild-check | validate | prepare [--profile P] [--set k=v]

``build`` stages, validates and versions the data (what the flow does, without Prefect); run it
on a fresh clone before ``dvc repro``, which needs ``data/`` on disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from components.adapters import data_stages, data_versioning, versioning
from components.adapters.data_versioning import write_rebuild_report
from components.config import ConfigError, load_config
from components.data.dataset import write_candidate
from components.offline import stay_offline
from flows.execution.task_choice import environment_for


def rebuild_check(cfg, root: Path) -> int:
    """Rebuild the data from params in a scratch dir; it must hash to what data.dvc records."""
    recorded = versioning.recorded_version(root, cfg.data.dir)
    with tempfile.TemporaryDirectory() as scratch:
        write_candidate(cfg, Path(scratch) / "data", environment_for(cfg))
        rebuilt = versioning.directory_md5(Path(scratch) / "data")
    match = write_rebuild_report(root, recorded.md5 if recorded else None, rebuilt)
    if not match:
        print(
            f"drift: rebuilt {cfg.data.dir}/ hashes to {rebuilt}, {cfg.data.dir}.dvc records "
            f"{recorded.md5 if recorded else 'nothing'}",
            file=sys.stderr,
        )
        return 1
    print(f"rebuilt {cfg.data.dir}/ hashes to {rebuilt}, as {cfg.data.dir}.dvc records")
    return 0


def build(cfg, root: Path) -> int:
    environment = environment_for(cfg)
    candidate = data_versioning.stage(cfg, root, environment)
    vocabulary = data_stages.checked_vocabulary(cfg, environment)
    try:
        data_stages.validate(cfg, root, vocabulary, candidate.directory, candidate.file_labels())
    except data_stages.DataValidationFailed as failed:
        data_versioning.discard(candidate)
        print(failed, file=sys.stderr)
        return 1
    result = data_versioning.commit(cfg, root, candidate)
    print(f"data {result.action}: md5 {result.version.md5} ({result.version.path}.dvc)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["build", "rebuild-check", "validate", "prepare"])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (dvc runs stages from there)")
    parser.add_argument("--params", type=Path, help="params file (default: ROOT/params.yaml)")
    args = parser.parse_args(argv)
    stay_offline()
    try:
        cfg = load_config(args.profile, args.overrides, args.params or args.root / "params.yaml")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if args.stage == "build":
        return build(cfg, args.root)
    if args.stage == "rebuild-check":
        return rebuild_check(cfg, args.root)
    if args.stage == "validate":
        try:
            vocabulary = data_stages.checked_vocabulary(cfg, environment_for(cfg))
            report = data_stages.validate(cfg, args.root, vocabulary)
        except data_stages.DataValidationFailed as failed:
            print(failed, file=sys.stderr)
            return 1
        print(report.summary())
        return 0
    recorded = versioning.check_drift(args.root, cfg.data.dir)
    counts = data_stages.prepare_training_inputs(cfg, args.root, {"md5": recorded.md5, **recorded.meta})
    print(f"prepared {counts} in {cfg.prepare.dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
