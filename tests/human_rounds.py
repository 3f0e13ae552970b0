"""A human judge's round as the tests play it: the overrides that make one quick, finding the paused flow run and
the round's exported files, and labels that favour PPO on every pair."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.labelling.labelling_tools import ARGILLA_RECORDS
from flows.labelling.human_judging import HUMAN_DIR, KEY
from tests.pipeline_runs import WIDE_OPEN


def human_round(registered_model: str, pairs_per_baseline: int) -> list[str]:
    """One decoding mode, a few pairs per baseline, a 1 s poll, the gate wide open, a registered model of its own."""
    return [
        "evaluation.judge.kind=human",
        f"evaluation.judge.pairs_per_baseline={pairs_per_baseline}",
        "evaluation.judge.poll_seconds=1",
        "evaluation.modes=[sample]",
        "gate.modes=[sample]",
        f"tracking.registered_model={registered_model}",
        *WIDE_OPEN,
    ]


# two labelling rounds on the smoke profile, by the simulated labeller (ROUNDS) or by people (PEOPLE)
REGISTERED = "rounds-policy"
N_PROMPTS, ITERATIONS = 96, 4  # two rounds of 48 ranked groups (the smoke data contract wants 100 rows each)
ROUNDS = [
    "comparisons.rounds=2",
    f"comparisons.n_prompts={N_PROMPTS}",
    f"ppo.iterations={ITERATIONS}",
    f"tracking.registered_model={REGISTERED}",
]
PEOPLE = [
    *ROUNDS[:3],
    "ppo.between_rounds=continue",
    "comparisons.labeler=human",
    "comparisons.human.poll_seconds=1",
    "validation.preferences_rows.min=20",  # people tie on some pairs: fewer rows than the simulated labeller's
    "tracking.registered_model=people-rounds-policy",
]


def wait_for_paused_run(timeout: float = 300.0, exclude: set | None = None):
    """The first flow run the Prefect API (PREFECT_API_URL) has in state Paused, other than those in ``exclude``."""
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = [run for run in client.read_flow_runs(flow_run_filter=paused) if run.id not in (exclude or set())]
            if found:
                return found[0]
            time.sleep(0.5)
    raise TimeoutError("no flow run paused")


def newest_round(root: Path) -> Path:
    """The exported directory of the project's latest human round."""
    return max((root / "artifacts" / "runs").glob(f"*/{HUMAN_DIR}"), key=lambda p: p.stat().st_mtime)


def ppo_wins(keys: list[dict]) -> list[dict]:
    """Labels that pick PPO's side of every pair."""
    return [{"pair_id": k["pair_id"], "choice": k["ppo_side"]} for k in keys]


def labels_file(directory: Path, answers: list[dict], path: Path) -> None:
    """The answers as the labelling page downloads them: JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in answers))


def argilla_export(directory: Path, answers: list[dict], path: Path) -> None:
    """The answers as Argilla exports them: the round's exported records, each answer given by two people, written
    by Argilla's SDK as ``records.to_json`` writes them."""
    import argilla as rg
    from argilla.records._io._json import JsonIO

    records = [rg.Record.from_dict(item) for item in json.loads((directory / ARGILLA_RECORDS).read_text())]
    given = {row["pair_id"]: row["choice"] for row in answers}
    people = [uuid.uuid4(), uuid.uuid4()]
    for record in records:
        for person in people:
            record.responses.add(rg.Response("choice", given[record.id], user_id=person, status="submitted"))
    JsonIO.to_json(records, path)


class Labeller(threading.Thread):
    """Waits for the flow run to pause, writes ``answers(key rows)`` as its labels file (or, with ``write``, as a
    labelling tool's export) and resumes the run with it."""

    def __init__(self, api: str, root: Path, answers, labels: Path, write=labels_file):
        super().__init__(daemon=True)
        self.api, self.root, self.answers, self.labels, self.write = api, root, answers, labels, write
        self.paused_run, self.error = None, None

    def run(self) -> None:
        try:
            with temporary_settings({PREFECT_API_URL: self.api}):
                self.paused_run = wait_for_paused_run()
                directory = newest_round(self.root)
                keys = [json.loads(line) for line in (directory / KEY).read_text().splitlines()]
                self.write(directory, self.answers(keys), self.labels)
                resume_flow_run(self.paused_run.id, run_input={"labels_file": str(self.labels)})
        except BaseException as error:  # the test reads it
            self.error = error


def longer_side(keys: list[dict]) -> list[dict]:
    """Labels a person might give a labelling round: the response with more words, a tie when they have as many
    (sides are drawn at random, so the choices are not one side's)."""
    answers = []
    for key in keys:
        a, b = len(key["A"].split()), len(key["B"].split())
        answers.append({"pair_id": key["pair_id"], "choice": "A" if a > b else "B" if b > a else "tie"})
    return answers


class RoundLabeller(threading.Thread):
    """Answers ``rounds`` paused labelling rounds one after another: for each, waits for a paused flow run it has
    not answered, writes ``answers(the round's key rows)`` and resumes the run with it."""

    def __init__(self, api: str, root: Path, answers, labels_dir: Path, rounds: int):
        super().__init__(daemon=True)
        self.api, self.root, self.answers, self.labels_dir, self.rounds = api, root, answers, labels_dir, rounds
        self.answered: list = []  # (paused flow run, labels file) per round
        self.error = None

    def run(self) -> None:
        try:
            with temporary_settings({PREFECT_API_URL: self.api}):
                for round_index in range(1, self.rounds + 1):
                    paused = wait_for_paused_run(exclude={run.id for run, _ in self.answered})
                    [key] = sorted(
                        (self.root / "artifacts" / "runs").glob(f"*/labelling-round-{round_index}/{KEY}"),
                        key=lambda p: p.stat().st_mtime,
                    )[-1:]
                    keys = [json.loads(line) for line in key.read_text().splitlines()]
                    labels = self.labels_dir / f"round-{round_index}.jsonl"
                    labels.write_text("".join(json.dumps(row) + "\n" for row in self.answers(keys)))
                    resume_flow_run(paused.id, run_input={"labels_file": str(labels)})
                    self.answered.append((paused, labels))
        except BaseException as error:  # the test reads it
            self.error = error
