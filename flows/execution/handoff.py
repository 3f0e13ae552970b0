"""The pipeline's Prefect tasks: called with the run's hand-offs as arguments, each started on the run's share of
the machine's cores (`flows.execution.cores`).

Prefect walks every argument of a task call, into lists, dicts, dataclasses and pydantic models, looking for futures
and states to resolve and to record as inputs. The hand-offs (`flows.execution.run_context`) hold whole data sets and
the
comparison rows, so that walk visited ~280,000 objects per smoke run (~2.5 s of its ~15 s of flow). A hand-off task
marks each argument `opaque`: Prefect still resolves the argument itself and records the task that returned it (the
UI's dependency edges), but does not look inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task
from prefect.utilities.annotations import opaque

from flows.execution.cores import take_fair_threads

ENGINE_KEYWORDS = ("return_state", "wait_for")  # Task.__call__'s own keywords, not the function's


class HandOffTask(Task):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        take_fair_threads()
        wrapped = {k: v if k in ENGINE_KEYWORDS else opaque(v) for k, v in kwargs.items()}
        return super().__call__(*map(opaque, args), **wrapped)

    def with_options(self, **options: Any) -> HandOffTask:
        copy = super().with_options(**options)
        copy.__class__ = HandOffTask  # Task.with_options builds a plain Task
        return copy


def task(**options: Any) -> Callable[[Callable], HandOffTask]:
    """`prefect.task` for the pipeline's tasks (same options)."""
    return lambda fn: HandOffTask(fn, **options)
