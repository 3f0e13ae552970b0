"""People as the labellers of a labelling round (``comparisons.labeler: human``): the round's subflow run samples each
track's current policy, exports every pair of each prompt's samples (blinded: neither the policy nor the track is
shown, sides drawn at random, both tracks' pairs shuffled together), waits until it is given the labels file (a
deployment's run is suspended before the subflow, no process held; a shell's run pauses in it), checks it with Great
Expectations and turns each answered pair into a preference row of its track (ties: none).

Resume the paused round from its page in the Prefect UI (Resume, then the path of the labels file), or with

    python -m flows.labelling.human_judging resume FLOW_RUN_ID LABELS_FILE

A round left unanswered past ``comparisons.human.timeout_seconds``, or given a labels file that breaks a rule, ends
the run with an error naming the file (or the pairs); nothing is trained on it and nothing is registered.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from components import io
from components.adapters.validation import validate_labels
from components.data.files import LABELS, read_jsonl
from components.labelling import labelling_tools, pairwise_labels
from components.training import recipe
from flows.execution import runtimes
from flows.execution.handoff import task
from flows.execution.run_context import RunContext
from flows.labelling.human_judging import KEY, PAGE, PAIRS, HumanLabels, announce_wait, people_labels


class HumanLabellingError(RuntimeError):
    """A labelling round ended without usable labels: unanswered in time, or a labels file that breaks a rule."""


def round_dir(ctx: RunContext) -> Path:
    return Path(ctx.tracking.run_dir) / f"labelling-round-{ctx.round_index}"


def min_answers(ctx: RunContext, pairs: int) -> int:
    return pairwise_labels.min_answers(ctx.cfg.comparisons.human.min_answered_share, pairs)


@task(name="export pairs for people", cache_policy=NO_CACHE, task_run_name="export round {ctx.round_index}")
def export_round(ctx: RunContext, policies: dict[str, recipe.StageResult]) -> list[dict]:
    """Sample each track's policy on the round's prompts; write the pairs, the labelling page and the key."""
    cfg, directory = ctx.cfg, round_dir(ctx)
    round_id = hashlib.sha256(
        json.dumps(
            [ctx.round_index, {t: p.key for t, p in policies.items()}, cfg.comparisons.model_dump(mode="json")]
        ).encode()
    ).hexdigest()
    keys = []
    for track, policy in policies.items():
        with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:  # on the flow's own device
            prompts, groups = recipe.round_samples(
                cfg, ctx.tokenizer, policy.model, ctx.data.train_prompts, ctx.round_index, runtime
            )
        keys += pairwise_labels.sample_pairs(
            round_id, track, prompts, groups, cfg.validation.min_response_words, cfg.seed
        )
    directory.mkdir(parents=True, exist_ok=True)
    shown = pairwise_labels.shown(pairwise_labels.shuffled(keys, cfg.seed))
    io.write_jsonl(directory / PAIRS, shown)
    io.write_jsonl(directory / KEY, keys)
    title = f"Labelling round {ctx.round_index}: which response is better? {len(shown)} pairs"
    page = pairwise_labels.labelling_page(shown, title, f"round-{ctx.round_index}-labels.jsonl")
    io.atomic_write_bytes(directory / PAGE, page.encode("utf-8"))
    labelling_tools.write_imports(directory, shown)
    announce_wait(
        f"labelling-round-{ctx.round_index}",
        f"Labelling round {ctx.round_index} waits for people: {len(shown)} pairs",
        directory,
        min_answers(ctx, len(shown)),
        len(shown),
        cfg.comparisons.human.timeout_seconds,
        "a labelling round's pairs and how to resume",
    )
    return keys


@task(name="people's labels", cache_policy=NO_CACHE, task_run_name="labels of round {ctx.round_index}")
def round_labels(ctx: RunContext, keys: list[dict], labels_file: str) -> dict[str, list[dict]]:
    """Check the labels file (this round's pairs only, one answer each, a known choice, enough answers); each track's
    preference rows."""
    directory = round_dir(ctx)
    rules = pairwise_labels.label_rules([k["pair_id"] for k in keys], min_answers(ctx, len(keys)))
    refused = f"labelling round {ctx.round_index}: nothing was trained on it"
    labels_file = people_labels(Path(labels_file), directory, HumanLabellingError, refused)
    report = validate_labels(labels_file, rules, directory / "validation", ctx.cfg.validation.max_examples)
    create_markdown_artifact(key=f"labelling-round-{ctx.round_index}-labels", markdown=f"```\n{report.summary()}\n```")
    if not report.success:
        raise HumanLabellingError(
            f"labelling round {ctx.round_index}: the labels file was refused; nothing was trained on it.\n"
            f"{report.summary()}"
        )
    labels = {r.data["pair_id"]: r.data["choice"] for r in read_jsonl(labels_file, LABELS)}
    rows = pairwise_labels.preference_rows(keys, labels)
    get_run_logger().info(
        "labelling round %d: %d answers to %d pairs, %s preference rows",
        ctx.round_index,
        len(labels),
        len(keys),
        {track: len(r) for track, r in rows.items()},
    )
    return rows


def suspended_for_labels(ctx: RunContext, policies: dict[str, recipe.StageResult]) -> str:
    """A deployment's run, before the round's subflow: export, then suspend the run until it is given the labels
    file; its path. Prefect suspends a deployment's own run, not a subflow: the run's process exits while people
    label, and once resumed a worker runs it again from the start, every earlier stage reused, the same pairs
    exported, and each round's labels found waiting at its own suspension."""
    export_round(ctx, policies)
    announce(ctx)
    given = suspend_flow_run(
        wait_for_input=HumanLabels,
        timeout=ctx.cfg.comparisons.human.timeout_seconds,
        key=f"labelling-round-{ctx.round_index}",
    )
    return given.labels_file


def labelled_rows(ctx: RunContext, labels_file: str) -> dict[str, list[dict]]:
    """The round's rows from a labels file given to the run (``suspended_for_labels``) for the pairs it exported."""
    keys = [r.data for r in read_jsonl(round_dir(ctx) / KEY)]
    return round_labels(ctx, keys, labels_file)


def announce(ctx: RunContext) -> None:
    get_run_logger().info(
        "labelling round %d: %s holds the pairs and the labelling page; resume this run with the labels file",
        ctx.round_index,
        round_dir(ctx),
    )


def ranked_by_people(ctx: RunContext, policies: dict[str, recipe.StageResult]) -> dict[str, list[dict]]:
    """Export, pause until a labels file is given, check it; each track's rows. Called from the round's subflow (a
    pause belongs to a flow run, not to a task)."""
    keys = export_round(ctx, policies)
    human = ctx.cfg.comparisons.human
    announce(ctx)
    try:
        given = pause_flow_run(
            wait_for_input=HumanLabels,
            timeout=human.timeout_seconds,
            poll_interval=human.poll_seconds,
            key=f"labelling-round-{ctx.round_index}",
        )
    except FlowPauseTimeout:
        raise HumanLabellingError(
            f"nobody labelled the pairs in {round_dir(ctx) / PAIRS} within comparisons.human.timeout_seconds "
            f"({human.timeout_seconds} s); nothing was trained on them and nothing was registered. Label them and "
            "run again: the earlier stages are reused and the same pairs exported"
        ) from None
    return round_labels(ctx, keys, given.labels_file)
