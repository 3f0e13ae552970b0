"""The main job: the RLHF pipeline as a Prefect flow.

    python -m flows.pipeline [--profile default] [--set key.path=value ...] [--seed N]

versioned data -> Great Expectations -> SFT -> comparisons (validated) -> reward model ->
supervised baselines -> PPO -> held-out evaluation -> gate -> MLflow registry. Every stage is a
Prefect task and a nested MLflow run under one parent run; the registry alias `champion` moves
only when the gate says RLHF beat every supervised baseline.

Exit codes: 0 done (promoted or not), 2 refused (bad config, data drift, failed validation),
3 a NaN/inf in training (nothing registered), 4 the tracking server is unreachable (nothing run),
5 the judge could not judge: unsafe or unimportable, raised, returned a non-number, or people's labels did not
come (timeout) or were refused (nothing registered).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

from components.config import DEFAULT_PARAMS, ConfigError, load_config  # yaml and pydantic only
from components.models import precision  # reads /proc/cpuinfo; torch only when autocast is entered
from flows.execution import launcher  # yaml and the config only
from flows.execution.temporary_server import start_early

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_ROOTS = REPO_ROOT / "runs"


def profile_root(profile: str) -> Path:
    """A run's project root (its data/, data.dvc, mlruns/, artifacts/) where none is given: this repository for the
    default profile, whose data.dvc is committed; ``runs/<profile>/`` for any other, so that trying a profile never
    rewrites the committed data version."""
    return REPO_ROOT if profile == "default" else PROFILE_ROOTS / profile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default", help="profile from params.yaml (default, smoke, ...)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one config key"
    )
    parser.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    parser.add_argument(
        "--root",
        help="the project root: data/, data.dvc, mlruns/, artifacts/ (default: this repository for the default "
        "profile, runs/PROFILE/ for another)",
    )
    parser.add_argument(
        "--params", default=str(DEFAULT_PARAMS), help="the params file (default: this repository's params.yaml)"
    )
    args = parser.parse_args(argv)
    args.overrides += [f"seed={args.seed}"] if args.seed is not None else []
    return args


def refuse_a_bad_config(args: argparse.Namespace) -> None:
    """A config that cannot be used ends the command (exit 2) before any server starts or heavy module loads: a bad
    key, bf16 the CPU emulates, a profile setting the stages would not honour."""
    try:
        cfg = load_config(args.profile, args.overrides, args.params)
        precision.refuse_unsupported(cfg.model)
        launcher.refuse_unhonoured(cfg, REPO_ROOT)
    except ConfigError as error:
        print(f"\npipeline stopped: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from components.offline import stay_offline  # stdlib only: before the early server, which reads it at its start

    stay_offline()
    refuse_a_bad_config(parse_args())
# `python -m flows.pipeline` with no Prefect API configured: the temporary server starts up on another core while the
# imports below run (flows/execution/temporary_server.py)
EARLY_SERVER = start_early() if __name__ == "__main__" else None

from prefect import flow, get_run_logger
from prefect.exceptions import Pause
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from components.adapters import data_stages, run_records, versioning
from components.adapters.tracking import TrackingUnavailable
from components.adapters.versioning import DataDrift
from components.evaluation.evaluation_report import EvaluationReport
from components.evaluation.five_reasons import format_records
from components.evaluation.gate import Decision
from components.evaluation.judges import JudgeError, judge_facts
from components.evaluation.report import ComparisonTerms, format_budgets, format_table
from components.models.stage_store import StageStore
from components.training.loop import NonFiniteError
from flows.execution import cores, runtimes
from flows.execution.credentials import export_credentials
from flows.execution.deployment_safety import refuse_unsafe_parameters
from flows.execution.run_context import PreparedData, RegistryEntry, Trained
from flows.execution.run_tracking import close_abandoned_runs, close_tracking, open_tracking, suspend_tracking
from flows.execution.stage_runs import stage_home
from flows.labelling import human_judging, human_labelling
from flows.tasks import data_tasks, decision_tasks, labelling_rounds, training_tasks


def flow_overrides(
    overrides: list[str] | None, seed: int | None, tracking_uri: str | None, registered_model: str | None
) -> list[str]:
    extra = {"seed": seed, "tracking.uri": tracking_uri, "tracking.registered_model": registered_model}
    return [*(overrides or []), *(f"{key}={value}" for key, value in extra.items() if value is not None)]


def name_flow_run(name: str) -> None:
    """Rename the running flow run (its name then says profile and data hash)."""
    from prefect.client.orchestration import get_client

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)


@flow(name="rlhf-pipeline", flow_run_name="{profile}", log_prints=True)
def rlhf_pipeline(
    profile: str = "default",
    overrides: list[str] | None = None,
    seed: int | None = None,
    tracking_uri: str | None = None,
    registered_model: str | None = None,
    root: str | None = None,
    params: str = str(DEFAULT_PARAMS),
) -> State:
    """The whole pipeline; ``overrides`` are ``key.path=value`` strings applied over the profile.

    A caller gets the run's result; Prefect records it as a Completed state named by the decision (``gate_state``)."""
    overrides = flow_overrides(overrides, seed, tracking_uri, registered_model)
    if deployment.id:  # parameters anyone who reaches the server may have chosen
        refuse_unsafe_parameters(
            overrides,
            {"root": root, "params": params},
            {"root": str(profile_root(profile)), "params": str(DEFAULT_PARAMS)},
        )
    root = root or str(profile_root(profile))
    cfg = load_config(profile, overrides, params)
    runtimes.quiet_transformers()  # the stages in this process write through it
    runtimes.name_deepspeed_device()
    precision.refuse_unsupported(cfg.model)
    launcher.refuse_unhonoured(cfg, REPO_ROOT)
    export_credentials(cfg.orchestration)
    tracking = open_tracking(cfg, root)
    made = RunSoFar(time.time())
    with ExitStack() as alive:
        alive.enter_context(cores.run_slot())  # each task's torch threads: this run's share of the machine's cores
        try:
            made.data = data = data_tasks.data_stages(cfg, root, tracking)
            tracking.use_data(data.version, root, versioning.remote_url(Path(root), cfg.versioning))
            name_flow_run(f"{profile}-data-{data.md5[:8]}")
            alive.enter_context(
                run_records.alive(tracking.run_dir)
            )  # a run refused before training leaves nothing in the root
            write_run_record(cfg, root, tracking, made, run_records.RUNNING)
            close_abandoned_runs(tracking)
            ctx = training_tasks.run_context(cfg, root, tracking, data)
            training_tasks.plan_memory(ctx)
            # iterated RLHF, or people labelling: each labelling round a subflow
            rounds = cfg.comparisons.rounds > 1 or cfg.comparisons.labeler == "human"
            made.trained = trained = labelling_rounds.train_in_rounds(ctx) if rounds else training_tasks.train_all(ctx)
            evaluation = decision_tasks.evaluate(ctx, trained)
            if cfg.evaluation.judge.kind == "human":  # the flow run pauses until people's labels come in
                evaluation = human_judging.judged_by_people(ctx, evaluation)
            why = decision_tasks.reasons(ctx, trained, evaluation)  # measured before the registry moves
            made.decision = decision = decision_tasks.gate(ctx, trained, evaluation)
            made.registry = registry = decision_tasks.register_with_retries(ctx, trained, decision)
            decision_tasks.report_with_retries(ctx, trained, evaluation, decision, registry, why)
            training_tasks.prune_stage_outputs(ctx, trained)
        except Pause:  # suspended while people label (a deployment's run): resumed, the flow runs again
            suspend_tracking(tracking)
            write_run_record(cfg, root, tracking, made, run_records.SUSPENDED)
            raise
        except BaseException as error:
            closed = close_tracking(tracking, error)
            if made.data is not None:
                write_run_record(cfg, root, tracking, made, run_records.FAILED, error, not closed)
            raise
        write_run_record(cfg, root, tracking, made, run_records.COMPLETED)
        close_tracking(tracking, None)
    get_run_logger().info("gate: %s", decision.label)
    return gate_state(
        decision,
        {
            "data_version": data.version,
            "validation": data.validation.as_dict(),
            "prepared": data.prepared,
            "data": data.summary.as_record(),
            "evaluation": evaluation.as_record(),
            "judge": judge_facts(cfg.evaluation.judge)["label"],
            "budgets": decision_tasks.comparison_terms(ctx, trained).as_record(),
            "decision": decision.as_record(),
            "registry": registry.as_dict(),
            "five_reasons": why.as_record(),
            "rl_algorithm": cfg.rl.algorithm,
            "mlflow": {"uri": tracking.tracker.uri, "run_id": tracking.parent.run_id},
            "flow_run_id": str(flow_run.id) if flow_run.id else None,
            "run_dir": str(tracking.run_dir),
        },
    )


def gate_state(decision: Decision, result: dict) -> State:
    """The flow run's final state: Completed either way, named by the gate's decision, so a rejected run is told apart
    from a promoted one in the Prefect run list; the message names the rules that failed."""
    if decision.promote:
        return Completed(name="Promoted", message="gate: promote", data=result)
    failed = [reason.rule for reason in decision.failures]
    return Completed(name="Rejected", message=f"gate: reject ({'; '.join(dict.fromkeys(failed))})", data=result)


@dataclass
class RunSoFar:
    """What a flow run has made so far, each part once it exists: what its record says when its status changes."""

    started: float
    data: PreparedData | None = None
    trained: Trained | None = None
    decision: Decision | None = None
    registry: RegistryEntry | None = None


def write_run_record(
    cfg, root: str, tracking, made: RunSoFar, status: str, error: BaseException | None = None, mlflow_open: bool = False
) -> None:
    """``<run dir>/run.json``: what this run used and decided, so concurrent runs on one root stay
    tellable apart; "running" until the run ends (a dead run's record is closed by a later run)."""
    trained, decision, registry = made.trained, made.decision, made.registry
    stage_dirs, rounds = {}, []
    if trained is not None:
        store = StageStore(root)

        def where(name: str, r) -> dict:
            home = cfg.comparisons.dir if name.startswith("comparisons") else stage_home(cfg, name)
            return {"key": r.key, "directory": str(store.path(home, r.key)), "reused": r.reused}

        stage_dirs = {name: where(name, r) for name, r in trained.models().items()}
        rounds = [{name: where(name, r) for name, r in made.items()} for made in trained.rounds]
    run_records.write(
        tracking.run_dir,
        {
            "status": status,
            "error": f"{type(error).__name__}: {error}"[:2000] if error else None,
            "started": made.started,
            "finished": None if status == run_records.RUNNING else time.time(),
            "profile": cfg.profile,
            "seed": cfg.seed,
            "flow_run_id": str(flow_run.id) if flow_run.id else None,
            "mlflow": {"uri": tracking.tracker.uri, "run_id": tracking.parent.run_id},
            "mlflow_open": mlflow_open,
            "data_version": made.data.version,
            "stages": stage_dirs,
            "labelling_rounds": rounds,  # each round's comparisons and models (none for a single round)
            "decision": {"decision": decision.label, "score": decision.score} if decision else None,
            "registry": registry.as_dict() if registry else None,
        },
    )


def _print_summary(result: dict, seconds: float) -> None:
    version, data = result["data_version"], result["data"]
    print("\n== RLHF pipeline ==")
    print(f"data version : {version['md5']} ({version['action']}; tracked by {version['path']}.dvc)")
    for name, count in data["rows"].items():
        print(f"rows         : {name:<15} {count}")
    if "label_accuracy_vs_gold" in data:
        print(
            f"labels       : {data['label_accuracy_vs_gold']:.3f} agree with the gold judge "
            f"(Bradley-Terry predicts {data['label_accuracy_expected']:.3f})"
        )
        print(
            f"demos gold   : mean {data['demonstrations_gold_mean']:.2f}, "
            f"sd {data['demonstrations_gold_std']:.2f} (max {data['gold_maximum']:.1f})"
        )
    again = " (the same files passed the same suites before; not run again)" if result["validation"]["reused"] else ""
    print(f"validation   : passed{again}; Data Docs at {result['validation']['data_docs']}")
    print(f"prepared     : {result['prepared']}")
    print(f"rl algorithm : {result['rl_algorithm']} (the policy named ppo below)")
    print(format_table(EvaluationReport.from_record(result["evaluation"]), result["judge"]))
    print(format_budgets(ComparisonTerms.from_record(result["budgets"])))
    print(f"\n{result['decision']['summary']}")
    print(f"\n{format_records(result['five_reasons']['reasons'])}")
    registry = result["registry"]
    print(
        f"\nregistry     : {registry['name']} version {registry['version']} ({registry['decision']}); "
        f"champion = {registry['champion'] or 'none'}, challenger = {registry['challenger']}"
    )
    print(f"registry note: {registry['champion_note']}")
    print(f"mlflow       : {result['mlflow']['uri']} (run {result['mlflow']['run_id']})")
    print(f"run record   : {result['run_dir']}/run.json")
    print(f"wall time    : {seconds:.1f} s")
    print("\nwhere to look:")
    uri = result["mlflow"]["uri"]
    if uri.startswith("http"):
        print(f"  MLflow UI  : {uri}")
    else:
        print(
            f"  MLflow UI  : .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (then http://127.0.0.1:5000)"
        )
    api = os.environ.get("PREFECT_API_URL")
    run_page = f"runs/flow-run/{result['flow_run_id']}"
    if api:
        print(f"  Prefect UI : {api.removesuffix('/api')}/{run_page}")
    else:
        print(
            f"  Prefect UI : .venv/bin/prefect server start --host 127.0.0.1   (then http://127.0.0.1:4200/{run_page})"
        )


def refuse_a_pause_nobody_can_resume(cfg) -> None:
    """People judge while the flow run waits on a Prefect server they can reach: not on a temporary one."""
    from prefect.settings import get_current_settings

    people = [
        f"{key} is 'human'"
        for key, value in (
            ("evaluation.judge.kind", cfg.evaluation.judge.kind),
            ("comparisons.labeler", cfg.comparisons.labeler),
        )
        if value == "human"
    ]
    if people and get_current_settings().api.url is None:
        raise ConfigError(
            f"{' and '.join(people)}: the flow run pauses for people's labels and is resumed from the "
            "Prefect UI or API, so run it against a Prefect server (start one with `prefect server start --host "
            "127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api), not the temporary one"
        )


def main(argv: list[str] | None = None) -> int:
    from components.offline import stay_offline

    args = parse_args(argv)
    stay_offline()
    overrides = args.overrides
    try:
        cfg = load_config(args.profile, overrides, args.params)  # refuse a bad config before any work starts
        precision.refuse_unsupported(cfg.model)
        launcher.refuse_unhonoured(cfg, REPO_ROOT)
        refuse_a_pause_nobody_can_resume(cfg)
        started = time.perf_counter()
        with EARLY_SERVER.adopt() if EARLY_SERVER else nullcontext():
            result = rlhf_pipeline(profile=args.profile, overrides=overrides, root=args.root, params=args.params)
    except (ConfigError, DataDrift, data_stages.DataValidationFailed) as error:
        print(f"\npipeline stopped: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"\npipeline stopped: {error}; nothing was registered", file=sys.stderr)
        return 3
    except (JudgeError, human_judging.HumanJudgeError, human_labelling.HumanLabellingError) as error:
        print(f"\npipeline stopped: {error}", file=sys.stderr)
        return 5
    except TrackingUnavailable as error:
        print(f"\npipeline stopped: {error}", file=sys.stderr)
        return 4
    _print_summary(result, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
