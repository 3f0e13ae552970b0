"""People as the judge (``evaluation.judge.kind: human``): the flow run exports blinded pairs, pauses until someone
gives it the labels file, checks the labels with Great Expectations and computes PPO's win rates from them.

The pause is Prefect's ``pause_flow_run`` with an input form: resume the run from its page in the Prefect UI
(Resume, then the path of the labels file), or from a shell with

    python -m flows.labelling.human_judging resume FLOW_RUN_ID LABELS_FILE

A run left unanswered past ``evaluation.judge.timeout_seconds``, or given a labels file that breaks a rule, ends
with an error naming the file (or the pairs), and nothing is registered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import Field

from components import io
from components.adapters import plots
from components.adapters.tracking import StageRun
from components.adapters.validation import validate_labels
from components.data.files import LABELS, DataFileError, read_jsonl
from components.evaluation import pairwise
from components.evaluation.evaluation_report import EvaluationReport
from components.labelling import labelling_tools, pairwise_labels
from flows.execution.handoff import task
from flows.execution.run_context import RunContext, Trained
from flows.execution.stage_runs import recorded

HUMAN_DIR = "human-judge"
PAIRS, KEY, PAGE = "pairs.jsonl", "key.jsonl", "label.html"


class HumanLabels(RunInput):
    """The Prefect UI's resume form."""

    labels_file: str = Field(
        description=(
            "path of the labels file downloaded from label.html (JSON Lines: pair_id, choice A | B | tie), "
            "or of a Label Studio or Argilla JSON export of the same pairs"
        )
    )


class HumanJudgeError(RuntimeError):
    """The people's round ended without usable labels: unanswered in time, or a labels file that breaks a rule."""


def human_dir(ctx: RunContext) -> Path:
    return Path(ctx.tracking.run_dir) / HUMAN_DIR


def round_id(ctx: RunContext, trained: Trained) -> str:
    """What the responses come from: every policy's stage key, the held-out prompts, the evaluation settings."""
    models = {name: result.key for name, result in trained.models().items()}
    evaluation = ctx.cfg.evaluation.model_dump(mode="json", exclude={"judge"})
    material = json.dumps([models, sorted(ctx.data.eval_prompts), evaluation, ctx.cfg.seed], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def export(ctx: RunContext, run: StageRun, pairs: list[pairwise.Pair]) -> Path:
    """The pairs as labellers see them (JSONL and the labelling page), the key beside them; logged to MLflow."""
    directory = human_dir(ctx)
    directory.mkdir(parents=True, exist_ok=True)
    shown = [p.shown() for p in pairwise_labels.shuffled(pairs, ctx.cfg.seed)]
    io.write_jsonl(directory / PAIRS, shown)
    io.write_jsonl(directory / KEY, [p.key() for p in pairs])
    title = f"Which response is better? {len(shown)} pairs"
    page = pairwise_labels.labelling_page(shown, title, f"labels-{ctx.tracking.parent.run_id[:8]}.jsonl")
    io.atomic_write_bytes(directory / PAGE, page.encode("utf-8"))
    labelling_tools.write_imports(directory, shown)
    run.log_artifacts(directory, "human-judge")
    judge = ctx.cfg.evaluation.judge
    announce_wait(
        "human-judge",
        f"Waiting for people: {len(shown)} blinded pairs",
        directory,
        pairwise_labels.min_answers(judge.min_answered_share, len(shown)),
        len(shown),
        judge.timeout_seconds,
        "the human judge's round: what to label and how to resume",
    )
    return directory


def announce_wait(
    key: str, heading: str, directory: Path, needed: int, pairs: int, timeout: int, description: str
) -> None:
    """A Prefect artefact on the paused run: where the pairs are, how many answers it needs, how to resume it."""
    create_markdown_artifact(
        key=key,
        markdown="\n".join(
            [
                f"# {heading}",
                f"- labelling page (works offline): `{directory / PAGE}`",
                f"- the same pairs as JSON Lines: `{directory / PAIRS}`",
                f"- for Label Studio: `{directory / labelling_tools.LABEL_STUDIO_TASKS}` with the labelling config "
                f"`{directory / labelling_tools.LABEL_STUDIO_CONFIG_FILE}`; for Argilla: "
                f"`{directory / labelling_tools.ARGILLA_RECORDS}` (a `choice` label question: A, B, tie)",
                f"- answers needed: at least {needed} of {pairs}, within {timeout} s of the pause",
                "",
                "Pick the better response of each pair (A, B or tie), download the labels (or export the tool's JSON), "
                "then resume this run:",
                "- here in the Prefect UI: **Resume**, and give the labels file's (or the export's) path;",
                f"- or in a shell: `python -m flows.labelling.human_judging resume {flow_run.id} LABELS_FILE`",
            ]
        ),
        description=description,
    )


def judged_by_people(ctx: RunContext, evaluation: EvaluationReport) -> EvaluationReport:
    """Wait for a labels file; the evaluation with PPO's win rates by the labels. Called from the flow itself (a
    pause belongs to the flow run, not to a task).

    A deployment's run is suspended: its process exits, and a worker starts the run again once it is resumed with
    the labels; the run then reuses every stage, exports the same pairs and finds the labels waiting here. A run
    started from a shell has no worker to start it again: it pauses, its process polling the server."""
    judge = ctx.cfg.evaluation.judge
    directory = human_dir(ctx)
    get_run_logger().info(
        "human judge: %s holds the pairs and the labelling page; resume this run with the labels file", directory
    )
    if deployment.id:
        given = suspend_flow_run(wait_for_input=HumanLabels, timeout=judge.timeout_seconds, key="human-judge")
        return score_labels(ctx, evaluation, given.labels_file)
    try:
        given = pause_flow_run(
            wait_for_input=HumanLabels,
            timeout=judge.timeout_seconds,
            poll_interval=judge.poll_seconds,
            key="human-judge",
        )
    except FlowPauseTimeout:
        raise HumanJudgeError(
            f"nobody answered the pairs in {directory / PAIRS} within evaluation.judge.timeout_seconds "
            f"({judge.timeout_seconds} s); nothing was registered. Label them and run again: the trained stages are "
            "reused and the same pairs exported"
        ) from None
    return score_labels(ctx, evaluation, given.labels_file)


@task(name="human labels", cache_policy=NO_CACHE)
def score_labels(ctx: RunContext, evaluation: EvaluationReport, labels_file: str) -> EvaluationReport:
    """Check the labels (this run's pairs only, one answer each, a known choice, enough answers), then PPO's win
    rate against each policy under each mode, ties half, with a Wilson interval."""
    cfg, directory = ctx.cfg, human_dir(ctx)
    keys = [r.data for r in read_jsonl(directory / KEY)]
    ids = [k["pair_id"] for k in keys]
    needed = pairwise_labels.min_answers(cfg.evaluation.judge.min_answered_share, len(ids))
    rules = pairwise_labels.label_rules(ids, needed)
    labels_file = people_labels(Path(labels_file), directory, HumanJudgeError, "nothing was registered")
    report = validate_labels(labels_file, rules, directory / "validation", cfg.validation.max_examples)
    create_markdown_artifact(key="human-labels", markdown=f"```\n{report.summary()}\n```")
    if not report.success:
        raise HumanJudgeError(f"the labels file was refused; nothing was registered.\n{report.summary()}")
    labels = {r.data["pair_id"]: r.data["choice"] for r in read_jsonl(labels_file, LABELS)}
    judged = evaluation.with_ppo_win_rates(pairwise.ppo_win_rates(keys, labels))
    with recorded(ctx.tracking.stage("human-judge")) as run:
        run.log_text(Path(labels_file).read_text(encoding="utf-8"), "human-judge/labels.jsonl")
        run.log_metrics({"answers": float(len(labels)), "pairs": float(len(ids))})
        for mode, block in judged.modes.items():
            for name, win in block.ppo_win_rate.items():
                run.log_metrics(
                    {"value": win["value"], "ci_lo": win["ci"][0], "ci_hi": win["ci"][1], "ties": win["ties"]},
                    prefix=f"{mode}.ppo_win_rate.{name}.",
                )
            run.log_figure(plots.win_rates(block.as_record(), mode), f"plots/win_rates_{mode}.png")
    get_run_logger().info("human judge: %d answers to %d pairs accepted", len(labels), len(ids))
    return judged


def people_labels(given: Path, directory: Path, error: type[Exception], consequence: str) -> Path:
    """The labels file to check: ``given`` itself, or a Label Studio or Argilla export read into one (logged)."""
    try:
        tool = labelling_tools.tool_of(given)
        labels_file = labelling_tools.as_labels_file(given, directory)
    except DataFileError as refused:
        raise error(f"the labels file was refused; {consequence}.\n{refused}") from None
    if tool is not None:
        get_run_logger().info("labels read from %s's export %s into %s", tool, given, labels_file)
    return labels_file


def resume(flow_run_id: str, labels_file: Path) -> None:
    """What the UI's Resume form does: hand the paused run the labels file (read by the run, where it runs)."""
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(flow_run_id, run_input={"labels_file": str(labels_file.resolve())})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    resuming = commands.add_parser("resume", help="give a paused flow run its labels file")
    resuming.add_argument("flow_run_id")
    resuming.add_argument("labels_file", type=Path, help="labels JSON Lines, or a Label Studio or Argilla JSON export")
    args = parser.parse_args(argv)
    if not args.labels_file.is_file():
        print(f"no such labels file: {args.labels_file}", file=sys.stderr)
        return 2
    resume(args.flow_run_id, args.labels_file)
    print(f"flow run {args.flow_run_id} resumed with {args.labels_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
