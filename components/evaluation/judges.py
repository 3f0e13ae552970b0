"""Judges of held-out responses: who takes the place of the embedded task's gold judge on a user's model and data.

A judge scores a batch of ``(prompt, response, ended)``; the report's win rates and means are computed from its scores
exactly as from the gold judge's. Kinds (``evaluation.judge.kind``):
  - ``gold``: the embedded task's hidden judge (the environment's ``gold``);
  - ``reward_model``: a separate judge model directory (HF layout, safetensors), as Gao et al.'s "gold RM"; never the
    reward model PPO optimised (refused by the content hash of its weights);
  - ``python``: ``module:function(prompts, responses) -> scores``, a user's own scoring function;
  - ``human``: people comparing blinded pairs while the flow run waits (``pairwise.py``; no per-response scores).
Whatever a judge returns is checked: one finite number per response, or a JudgeError naming the judge and the row.
"""

from __future__ import annotations

import importlib
import math
import numbers
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from components import io
from components.config import JudgeConfig, ModelConfig
from components.evaluation.policy_eval import GoldFn, Scores
from components.models.builders import load_scalar_model
from components.models.runtime import Runtime
from components.models.scoring import score_samples
from components.models.tokenizer import load_tokenizer

WEIGHTS = "model.safetensors"


class JudgeError(ValueError):
    """A judge that cannot be used, or returned what a judge must not."""


@dataclass(frozen=True)
class Judge:
    kind: str
    name: str  # how the report, the gate's reasons and MLflow name it
    scores: Scores

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        return checked(self.name, self.scores(prompts, responses, ended), prompts, responses)


def checked(name: str, scores, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    scores = list(scores)
    if len(scores) != len(responses):
        raise JudgeError(f"judge {name} returned {len(scores)} scores for {len(responses)} responses")
    for row, score in enumerate(scores):
        # numbers.Real takes NumPy's scalars too (a judge returning an array of float32 is fine)
        if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise JudgeError(
                f"judge {name} returned {score!r} for row {row} (prompt {prompts[row][:80]!r}): "
                "every score must be a finite number"
            )
    return [float(s) for s in scores]


def gold_judge(gold: GoldFn) -> Judge:
    return Judge("gold", "gold", lambda ps, rs, es: [gold(p, r, e) for p, r, e in zip(ps, rs, es, strict=True)])


def python_judge(entry_point: str, call_seconds: float | None = None) -> Judge:
    """``module:function``; the function takes (prompts, responses) and returns one score per response. With
    ``call_seconds`` a call that has not returned by then is a JudgeError (the call, left in a daemon thread, cannot
    hold the process)."""
    module_name, _, function_name = entry_point.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise JudgeError(f"judge {entry_point}: cannot import it ({type(error).__name__}: {error})") from None
    if not callable(function):
        raise JudgeError(f"judge {entry_point} is not callable")

    def call(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        try:
            return list(function(list(prompts), list(responses)))
        except Exception as error:
            raise JudgeError(f"judge {entry_point} raised {type(error).__name__}: {error}") from error

    def scores(prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        if call_seconds is None:
            return call(prompts, responses)
        outcome: list = []

        def run() -> None:
            try:
                outcome.append(call(prompts, responses))
            except BaseException as error:  # handed to the caller's thread
                outcome.append(error)

        worker = threading.Thread(target=run, name=f"judge {entry_point}", daemon=True)
        started = time.monotonic()
        worker.start()
        while worker.is_alive():  # short joins: the caller stays interruptible (flows/execution/deadlines.py)
            if time.monotonic() - started > call_seconds:
                raise JudgeError(
                    f"judge {entry_point} did not return within {call_seconds:g} s (timeouts.judge_call_seconds) "
                    f"scoring {len(responses)} responses"
                )
            worker.join(0.1)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    return Judge("python", entry_point, scores)  # the name judge_facts gives it


def weights_hash(directory: str | Path) -> str:
    return io.sha256_file(Path(directory) / WEIGHTS)


def reward_model_judge(
    model_dir: str | Path, model_cfg: ModelConfig, optimised: Sequence[str | Path], device: str = "cpu"
) -> Judge:
    """A judge model directory (no remote code, safetensors only), never one of the ``optimised`` reward models; it
    scores on ``device`` (where the policies run)."""
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS).is_file():
        raise JudgeError(f"judge model {model_dir}: no {WEIGHTS} (only safetensors weights are loaded)")
    digest = weights_hash(model_dir)
    for directory in optimised:
        if (Path(directory) / WEIGHTS).is_file() and weights_hash(directory) == digest:
            raise JudgeError(
                f"judge model {model_dir} has the same weights as the reward model PPO optimised ({directory}): "
                "a policy tuned against a judge cannot be judged by it"
            )
    model, tokenizer = load_scalar_model(model_dir), load_tokenizer(model_dir)
    model.eval()
    runtime = Runtime(device=device)

    def scores(prompts: Sequence[str], responses: Sequence[str], ended: Sequence[bool]) -> list[float]:
        samples = list(zip(prompts, responses, strict=True))
        return score_samples(model, tokenizer, samples, model_cfg, runtime).tolist()

    return Judge("reward_model", str(model_dir), scores)


def judge_facts(cfg: JudgeConfig) -> dict:
    """What the gate and the report say of the judge: its kind, its name, whether it scored PPO's iterations."""
    name = {"gold": "gold", "python": cfg.entry_point, "reward_model": cfg.model_dir, "human": "people"}[cfg.kind]
    return {
        "kind": cfg.kind,
        "name": name,
        "label": {"gold": "gold", "human": "human judges"}.get(cfg.kind, f"{cfg.kind} judge '{name}'"),
        "scores_ppo_iterations": cfg.kind == "gold" or (cfg.kind != "human" and cfg.monitor_ppo),
        "pairwise": cfg.kind == "human",
    }


def ppo_monitor_judge(
    cfg: JudgeConfig,
    model_cfg: ModelConfig,
    gold: GoldFn | None,
    optimised: Sequence[str | Path],
    device: str = "cpu",
    call_seconds: float | None = None,
) -> Judge | None:
    """The judge that scores PPO's rollouts for the record and the gate's trend rule; None when it does not."""
    if not judge_facts(cfg)["scores_ppo_iterations"] or (cfg.kind == "gold" and gold is None):
        return None
    return make_judge(cfg, model_cfg, gold, optimised, device, call_seconds)


def make_judge(
    cfg: JudgeConfig,
    model_cfg: ModelConfig,
    gold: GoldFn | None,
    optimised: Sequence[str | Path],
    device: str = "cpu",
    call_seconds: float | None = None,
) -> Judge | None:
    """The judge that scores each response (a judge model on ``device``); None for people, who compare pairs
    (``pairwise.py``). ``call_seconds``: a python judge's deadline per call."""
    if cfg.kind == "human":
        return None
    if cfg.kind == "gold":
        if gold is None:
            raise JudgeError(
                "evaluation.judge.kind is 'gold', but the embedded task's gold judge reads only its own prompts: "
                "for your data set evaluation.judge.kind to reward_model (with model_dir) or python (with entry_point)"
            )
        return gold_judge(gold)
    if cfg.kind == "python":
        return python_judge(cfg.entry_point, call_seconds)
    return reward_model_judge(cfg.model_dir, model_cfg, optimised, device)
