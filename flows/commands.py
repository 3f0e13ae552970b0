"""The project's commands, installed by `pip install` (pyproject's ``[project.scripts]``): each runs its module exactly
as ``python -m`` does, so a module's ``__main__`` set-up (the main job's offline switches and early Prefect server)
is the same either way."""

from __future__ import annotations

import runpy


def _as_main(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def pipeline() -> None:
    """``rlhf-pipeline``: ``python -m flows.pipeline``, the main job."""
    _as_main("flows.pipeline")


def deploy() -> None:
    """``rlhf-deploy``: ``python -m flows.deploy``, the scheduled deployment."""
    _as_main("flows.deploy")


def data() -> None:
    """``rlhf-data``: ``python -m flows.data_cli``, the data stages as dvc.yaml runs them."""
    _as_main("flows.data_cli")


def judge() -> None:
    """``rlhf-judge``: ``python -m flows.labelling.human_judging``, resuming a run people judged."""
    _as_main("flows.labelling.human_judging")
