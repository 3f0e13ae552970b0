"""Held-out responses remembered between runs on one project root: a policy decoded before under the same mode is not
decoded again when everything its responses depend on is unchanged.

    <root>/<artifacts_dir>/evaluation/<policy>-<mode>/<key>/responses.json   and the card that marks it finished

The key holds the policy's stage key (so its weights), the SFT reference's (KL) and the reward model's (RM scores,
best-of-n's pick), the held-out prompts, the decoding mode and batch size, the model settings, the seed and the source
of the code that decodes. What is remembered is what decoding made (texts, ended, RM scores, KL), never a judge's
scores: the judge scores every response afresh in every run. Concurrent runs share as stages do: one decodes while
the other waits for the key, then reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from functools import cache

from prefect import get_run_logger

from components.evaluation import best_of_n, policy_eval, report
from components.evaluation.policy_eval import DecodingMode, Responses
from components.io import write_json
from components.models import batching, decoding, ensemble, generation
from components.models.saving import CARD, stage_key
from components.models.stage_store import StageStore
from flows.execution.run_context import RunContext, Trained
from flows.execution.stage_runs import waiting_for

RESPONSES = "responses.json"
DECODING_MODULES = (policy_eval, report, decoding, generation, batching, ensemble, best_of_n)  # what decoding runs


@cache
def decoding_source() -> str:
    return hashlib.sha256("".join(inspect.getsource(m) for m in DECODING_MODULES).encode()).hexdigest()


def policy_keys(trained: Trained) -> dict[str, str]:
    """The stage key of every policy the evaluation decodes; best-of-n samples the SFT policy."""
    keys = {name: result.key for name, result in trained.models().items() if name != "reward_model"}
    return {**keys, report.BEST_OF_N: trained.sft.key}


def decoding_key(ctx: RunContext, trained: Trained, policy: str, mode: DecodingMode) -> str | None:
    """None when a stage it depends on has no key (nothing to recognise its output by): then it is decoded anew."""
    cfg = ctx.cfg
    depends_on = {
        "policy": policy_keys(trained).get(policy),
        "reference": trained.sft.key,
        "reward_model": trained.reward_model.key,
    }
    if not all(depends_on.values()):
        return None
    return stage_key(
        stage="evaluation",
        **depends_on,
        mode=dataclasses.asdict(mode),
        batch_size=cfg.evaluation.batch_size,
        best_of_n=cfg.baselines.best_of_n.model_dump(mode="json") if policy == report.BEST_OF_N else None,
        prompts=hashlib.sha256(json.dumps(ctx.data.eval_prompts).encode()).hexdigest(),
        data=ctx.data.md5,
        model=cfg.model.model_dump(mode="json"),
        seed=cfg.seed,
        code=decoding_source(),
    )


def decoding_home(ctx: RunContext, policy: str, mode: DecodingMode) -> str:
    return f"{ctx.cfg.artifacts_dir}/evaluation/{policy}-{mode.name}"


def remembered(
    ctx: RunContext,
    trained: Trained,
    reused: list[str],
    decoded: dict[tuple[str, str], Responses] | None = None,
) -> report.Recall:
    """A ``Recall`` for ``evaluate_policies``; appends ``policy (mode)`` to ``reused`` for each decoding it reuses.
    ``decoded``: what a launch decoded already (by policy and mode name), taken instead of decoding here."""
    store = StageStore(ctx.root)

    def recall(policy: str, mode: DecodingMode, decode: report.Decode) -> Responses:
        def fresh() -> Responses:
            return decoded[(policy, mode.name)] if decoded is not None else decode()

        key = decoding_key(ctx, trained, policy, mode)
        if key is None or not ctx.cfg.orchestration.reuse_finished_stages:
            return fresh()
        home = decoding_home(ctx, policy, mode)
        with store.claim(home, key, waiting_for(f"evaluation of {policy} ({mode.name})", key)) as directory:
            if store.finished(home, key):
                get_run_logger().info("evaluation: reusing the %s responses of %s in %s", mode.name, policy, directory)
                store.touch(home, key)
                reused.append(f"{policy} ({mode.name})")
                return Responses(**json.loads((directory / RESPONSES).read_text(encoding="utf-8")))
            responses = fresh()
            write_json(directory / RESPONSES, dataclasses.asdict(responses))
            write_json(directory / CARD, {"stage": "evaluation", "stage_key": key, "policy": policy, "mode": mode.name})
            return responses

    return recall


def decodings(ctx: RunContext, trained: Trained) -> list[tuple[str, DecodingMode, str | None]]:
    """(policy, mode, key) of every decoding the evaluation makes; best-of-n only under sampling."""
    return [
        (policy, mode, decoding_key(ctx, trained, policy, mode))
        for mode in report.decoding_modes(ctx.cfg.evaluation)
        for policy in policy_keys(trained)
        if policy != report.BEST_OF_N or report.decodes_best_of_n(mode)
    ]


def to_decode(ctx: RunContext, trained: Trained) -> list[tuple[str, str]]:
    """(policy, mode name) of every decoding that no finished earlier one stands in for."""
    store = StageStore(ctx.root)
    reuse = ctx.cfg.orchestration.reuse_finished_stages
    return [
        (policy, mode.name)
        for policy, mode, key in decodings(ctx, trained)
        if key is None or not reuse or not store.finished(decoding_home(ctx, policy, mode), key)
    ]


def decodings_in_use(ctx: RunContext, trained: Trained) -> dict[str, str]:
    """{home: key} of every decoding this run's evaluation used (pruning keeps them)."""
    return {decoding_home(ctx, policy, mode): key for policy, mode, key in decodings(ctx, trained) if key is not None}
