"""The pipeline's hand-off tasks (flows/execution/handoff.py) on the session's Prefect server: their arguments arrive as
they
were passed, unwalked, and the task that made an argument is still recorded as the run's upstream input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prefect import flow
from prefect import task as prefect_task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, State

from flows.execution.handoff import HandOffTask, task

pytestmark = pytest.mark.integration


@dataclass
class Box:
    items: list


def hand_back(box: Box, inside: list) -> tuple[Box, list]:
    return box, inside


@task(name="make")
def make() -> Box:
    return Box([1, 2])


hand_off = task(name="hand off")(hand_back)
hand_off_retried = hand_off.with_options(retries=1)
walked = prefect_task(name="walked")(hand_back)  # Prefect's own task: resolves what it finds inside its arguments


@flow(name="hand-offs")
def hand_offs():
    box = make()
    return (
        box,
        hand_off(box, [Completed(data=3)]),
        hand_off_retried(box, [Completed(data=4)]),
        walked(box, [Completed(data=5)]),
    )


def test_a_hand_off_task_gets_its_arguments_unwalked_and_records_the_task_that_made_them(prefect_server):
    with temporary_settings({PREFECT_API_URL: prefect_server[0]}):
        state = hand_offs(return_state=True)
        box, (seen, inside), (_, inside_retried), (_, inside_walked) = state.result()
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
    assert seen is box
    assert isinstance(inside[0], State) and isinstance(inside_retried[0], State)  # not looked into
    assert inside_walked == [5]  # what Prefect's walk would have done to them
    assert type(hand_off_retried) is HandOffTask and hand_off_retried.retries == 1
    by_name = {r.name.rsplit("-", 1)[0]: r for r in runs}
    made = by_name["make"].id
    assert [i.id for i in by_name["hand off"].task_inputs["box"]] == [made]  # the UI's dependency edge
    assert made in [i.id for i in by_name["walked"].task_inputs["box"]]
