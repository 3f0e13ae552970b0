"""The InstructGPT recipe stage by stage: each a function of (config, data, input models) that returns
the output model, its metrics and its per-step history. The Prefect flow and the benchmark both call
these, so what is measured is what is shipped.

No gold judge and no data-set code in here: the comparison labeller and the selection ranker (the simulated
labeler, or a user's own labels), the PPO monitor and the word vocabulary are handed in by the caller.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import Config, reward_model_config
from components.data.ranking import Labeller, Ranker, sampled_labeller
from components.models import lora
from components.models.builders import build_policy, frozen_copy
from components.models.decoding import Decoder
from components.models.ensemble import members_of
from components.models.runtime import SINGLE, Runtime
from components.models.tokenizer import build_word_tokenizer, load_tokenizer
from components.training.algorithms import rl_algorithm
from components.training.chosen import train_chosen, train_top_ranked
from components.training.combined import train_combined
from components.training.comparisons import collect_sft_comparisons, draw_prompts, sample_reference, sample_responses
from components.training.dpo import train_dpo
from components.training.loop import QUIET, Harness, Snapshots
from components.training.ppo import RLModels, train_ppo
from components.training.reward import split_comparisons, train_reward_ensemble
from components.training.rounds import RoundLabels, round_prompts, tagged
from components.training.selection import LabelledSlice, held_out_slice, select_snapshot
from components.training.sft import train_sft

SUPERVISED_BASELINES = ("chosen", "top_ranked", "combined", "dpo")


@dataclass
class StageResult:
    model: Any  # a PreTrainedModel, or the comparison rows for the collection stage
    metrics: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    key: str = ""  # what the output depends on, hashed (set by the caller that caches stages)
    reused: bool = False  # loaded from a finished earlier run instead of trained
    logged_steps: tuple[int, int] = (0, 0)  # [first, last + 1) of the steps the stage logged itself while it ran
    placement: dict = field(default_factory=dict)  # where it ran: device, processes, mixed precision, threads


class Stages(Protocol):
    """Where each stage of the recipe runs and what it reads: the flow's Prefect tasks (stage reuse, tracking,
    launched processes), or a benchmark's calls of the ``*_stage`` functions below in its own process."""

    def sft(self) -> StageResult: ...

    def comparisons(self, sft: StageResult) -> StageResult: ...  # its model: the ranked comparison rows

    def reward_model(self, sft: StageResult, comparisons: StageResult) -> StageResult: ...

    def baseline(self, name: str, sft: StageResult, comparisons: StageResult) -> StageResult: ...

    def rl(self, sft: StageResult, reward_model: StageResult, comparisons: StageResult) -> StageResult: ...


@dataclass(frozen=True)
class RecipeRun:
    """What one pass of the recipe trained."""

    sft: StageResult
    comparisons: StageResult
    reward_model: StageResult
    rl: StageResult  # the policy ``rl.algorithm`` trained
    baselines: dict[str, StageResult]


def train_all(stages: Stages) -> RecipeRun:
    """The InstructGPT recipe in the paper's order, on the same labels for RL and every supervised baseline: SFT, its
    ranked samples, the reward model, the supervised uses of the same rankings, then RL from SFT against the reward
    model. The flow and the benchmarks both call this, so what is measured is what is shipped."""
    sft = stages.sft()
    comparisons = stages.comparisons(sft)
    reward_model = stages.reward_model(sft, comparisons)
    baselines = {name: stages.baseline(name, sft, comparisons) for name in SUPERVISED_BASELINES}
    rl = stages.rl(sft, reward_model, comparisons)
    return RecipeRun(sft, comparisons, reward_model, rl, baselines)


def timed(fn: Callable[..., tuple]) -> Callable[..., StageResult]:
    def run(*args, **kwargs) -> StageResult:
        started = time.perf_counter()
        model, metrics, history = fn(*args, **kwargs)
        return StageResult(model, metrics, history, round(time.perf_counter() - started, 2))

    return run


def make_tokenizer(cfg: Config, vocabulary: frozenset[str] | None) -> PreTrainedTokenizerBase:
    """The local model's tokenizer, or a word tokenizer over ``vocabulary`` (the embedded task's lexicon, or the
    words of the user's data) for a model trained from scratch."""
    if cfg.model.source == "local":
        return load_tokenizer(cfg.model.local_dir)
    if vocabulary is None:
        raise ValueError("a model trained from scratch needs the vocabulary of its word tokenizer")
    return build_word_tokenizer(vocabulary)


def comparison_labeller(cfg: Config, rank: Ranker, demonstrations: list[dict]) -> Labeller:
    """``rank`` turning SFT samples into preference rows: responses shorter than the data contract's
    ``validation.min_response_words`` left out, prompts named by the demonstrations' ``prompt_id`` where they
    have one."""
    prompt_ids = {r["prompt"]: r["prompt_id"] for r in demonstrations if "prompt_id" in r}
    return sampled_labeller(rank, cfg.validation.min_response_words, prompt_ids)


def pretrained_policy(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """What SFT starts from: the user's local model, or one initialised from the seed for training from scratch."""
    return build_policy(cfg.model, tokenizer, cfg.seed)


def sft_stage(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, demonstrations: list[dict], log=None, runtime: Runtime = SINGLE
) -> StageResult:
    # a model trained from scratch is trained in full: adapters adapt a trained one
    policy = lora.for_training(pretrained_policy(cfg, tokenizer), cfg.model, adapters=cfg.model.source == "local")
    return timed(train_sft)(
        policy, tokenizer, demonstrations, cfg.sft, cfg.model, cfg.seed, harness=Harness(runtime, log)
    )


def round_draw(cfg: Config, train_prompts: list[str], round_index: int | None = None) -> tuple[list[str], int]:
    """(prompts, sampling seed) of comparison collection: the whole draw, or with ``round_index`` (1-based) the
    round's slice of it (``components.training.rounds``) and the round's own seed."""
    prompts = draw_prompts(train_prompts, cfg.comparisons.n_prompts, cfg.seed)
    if round_index is None:
        return prompts, cfg.seed
    return round_prompts(prompts, cfg.comparisons.rounds)[round_index - 1], cfg.seed + round_index - 1


def round_samples(
    cfg: Config,
    tokenizer,
    policy: PreTrainedModel,
    train_prompts: list[str],
    round_index: int | None = None,
    runtime: Runtime = SINGLE,
) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """The drawn prompts and K samples of each from ``policy``: what people rank in a labelling round."""
    prompts, seed = round_draw(cfg, train_prompts, round_index)
    c = cfg.comparisons
    decoder = Decoder(tokenizer, cfg.model, seed, runtime)
    return prompts, sample_responses(policy, prompts, decoder, c.responses_per_prompt, c.temperature, c.batch_size)


def comparisons_stage(
    cfg: Config,
    tokenizer,
    policy: PreTrainedModel,
    train_prompts: list[str],
    labeller: Labeller,
    round_index: int | None = None,
    group_offset: int = 0,
    runtime: Runtime = SINGLE,
) -> StageResult:
    """InstructGPT step 2: K samples per drawn training prompt from ``policy`` (SFT, or in a later labelling round
    the current policy), ranked by ``labeller``; every pair becomes a row. With ``round_index`` (1-based), only the
    round's slice of the draw is labelled (``round_draw``)."""

    def collect():
        prompts, seed = round_draw(cfg, train_prompts, round_index)
        rows = collect_sft_comparisons(policy, tokenizer, prompts, cfg.comparisons, cfg.model, labeller, seed, runtime)
        if round_index is not None:
            rows = tagged(rows, round_index, group_offset)
        return rows, {"pairs": len(rows), "prompts": len(prompts)}, []

    return timed(collect)()


def reward_stage(
    cfg: Config,
    tokenizer,
    sft: PreTrainedModel,
    comparisons: list[dict],
    train_prompts: list[str],
    demonstrations: list[dict] | None = None,
    log=None,
    runtime: Runtime = SINGLE,
) -> StageResult:
    """InstructGPT step 2b, on SFT's transformer or, with ``reward.model``, on its own one SFT-trained on the
    ``demonstrations`` first; ``reward.shuffle_labels`` swaps chosen/rejected at random: the negative control.
    The reward is normalised on SFT's samples either way: the policy's distribution is what it will score."""
    if cfg.reward.shuffle_labels:
        rng = random.Random(f"{cfg.seed}/shuffled-labels")
        comparisons = [
            {**row, "chosen": row["rejected"], "rejected": row["chosen"]} if rng.random() < 0.5 else row
            for row in comparisons
        ]
    reference_prompts = draw_prompts(train_prompts, cfg.reward.reference_samples, cfg.seed + 1)
    reference = sample_reference(
        sft,
        tokenizer,
        reference_prompts,
        cfg.model,
        cfg.comparisons.temperature,
        cfg.comparisons.batch_size,
        cfg.seed,
        runtime,
    )
    started = time.perf_counter()
    backbone = reward_backbone(cfg, tokenizer, sft, demonstrations, runtime)
    result = timed(train_reward_ensemble)(
        backbone,
        tokenizer,
        comparisons,
        cfg.reward,
        reward_model_config(cfg),
        cfg.seed,
        reference,
        Harness(runtime, log),
    )
    if backbone is not sft:
        result.metrics["backbone_parameters"] = sum(p.numel() for p in backbone.parameters())
        result.seconds = round(time.perf_counter() - started, 2)  # its SFT included
    return result


def reward_backbone(
    cfg: Config, tokenizer, sft: PreTrainedModel, demonstrations: list[dict] | None, runtime: Runtime = SINGLE
) -> PreTrainedModel:
    """SFT itself, or the reward model's own transformer (``reward.model``) SFT-trained on the demonstrations."""
    if cfg.reward.model is None:
        return sft
    if demonstrations is None:
        raise ValueError("reward.model gives the reward model its own transformer, SFT-trained on the demonstrations")
    own = cfg.model_copy(update={"model": reward_model_config(cfg)})
    if own.model.source == "local":
        theirs = load_tokenizer(own.model.local_dir)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"reward.model.local_dir {own.model.local_dir}: its tokenizer is not the policy's "
                f"(model.local_dir {cfg.model.local_dir}): the reward model reads the policy's token ids"
            )
    return sft_stage(own, tokenizer, demonstrations, runtime=runtime).model


def up_to_reward_model(
    cfg: Config, tokenizer, demonstrations: list[dict], labeller: Labeller
) -> tuple[PreTrainedModel, list[dict], PreTrainedModel]:
    """SFT, its ranked comparisons and the reward model: what PPO starts from, in one call (benchmarks, tests)."""
    prompts = sorted({r["prompt"] for r in demonstrations})
    sft = sft_stage(cfg, tokenizer, demonstrations).model
    comparisons = comparisons_stage(cfg, tokenizer, sft, prompts, labeller).model
    return sft, comparisons, reward_stage(cfg, tokenizer, sft, comparisons, prompts, demonstrations).model


def labelled_split(cfg: Config, comparisons: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held out): the reward model and every supervised baseline train on the first; the second
    (``reward.valid_fraction`` of the ranked groups) is held out from all of them."""
    return split_comparisons(comparisons, cfg.reward.valid_fraction, cfg.seed)


def select_candidate(
    cfg: Config,
    result: StageResult,
    snapshots: list[tuple[int, dict]],
    tokenizer,
    comparisons: list[dict],
    make_ranker: Callable[[], Ranker] | None,
    unit: str = "step",
    runtime: Runtime = SINGLE,
) -> StageResult:
    """Ship the snapshot the labeller prefers on the held-out slice (``selection``); without a labeller, the last."""
    items = (
        held_out_slice(labelled_split(cfg, comparisons)[1], cfg.selection.prompts) if make_ranker is not None else []
    )
    started = time.perf_counter()
    result.model, selection = select_snapshot(
        result.model,
        snapshots,
        tokenizer,
        LabelledSlice(items, make_ranker),
        cfg.selection,
        cfg.model,
        cfg.seed,
        runtime,
    )
    result.metrics.update({**selection.metrics(unit), "selection.seconds": round(time.perf_counter() - started, 2)})
    return result


def baseline_stage(
    cfg: Config,
    name: str,
    tokenizer,
    sft: PreTrainedModel,
    comparisons: list[dict],
    log=None,
    make_ranker: Callable[[], Ranker] | None = None,
    runtime: Runtime = SINGLE,
) -> StageResult:
    """A supervised baseline from the SFT policy, trained on the reward model's training comparisons only;
    with ``make_ranker``, the snapshot the labeller prefers on the held-out slice ships (see ``select_candidate``)."""
    trainers = {
        "chosen": (train_chosen, cfg.baselines.chosen),
        "top_ranked": (train_top_ranked, cfg.baselines.top_ranked),
        "combined": (train_combined, cfg.baselines.combined),
        "dpo": (train_dpo, cfg.baselines.dpo),
    }
    trainer, section = trainers[name]
    train, _ = labelled_split(cfg, comparisons)
    snapshots = Snapshots(cfg.selection.candidates, cfg.selection.spacing)
    result = timed(trainer)(
        sft, tokenizer, train, section, cfg.model, cfg.seed, harness=Harness(runtime, log, snapshots)
    )
    return select_candidate(cfg, result, snapshots.taken, tokenizer, comparisons, make_ranker, runtime=runtime)


def iterative_dpo_stage(
    cfg: Config,
    tokenizer,
    sft: PreTrainedModel,
    previous: PreTrainedModel,
    labels: RoundLabels,
    make_ranker: Callable[[], Ranker] | None = None,
    harness: Harness = QUIET,
) -> StageResult:
    """One round of iterative DPO, the baseline that gets PPO's schedule of on-policy labels: the last round's DPO
    policy (SFT in round 1) trained on this round's labels of its own samples (their training split), reference =
    frozen SFT as PPO's. The last round ships the snapshot the labeller prefers on the held-out slice of every round
    (``labels.seen``); earlier rounds hand on their last step, the policy the next round samples."""
    train, _ = labelled_split(cfg, labels.rows)
    last_round = labels.index == cfg.comparisons.rounds
    snapshots = Snapshots(cfg.selection.candidates, cfg.selection.spacing) if last_round else None
    result = timed(train_dpo)(
        previous,
        tokenizer,
        train,
        cfg.baselines.dpo,
        cfg.model,
        cfg.seed + labels.index - 1,
        reference=frozen_copy(sft),
        harness=replace(harness, snapshots=snapshots),
    )
    if not last_round:
        return result
    return select_candidate(cfg, result, snapshots.taken, tokenizer, labels.seen, make_ranker, runtime=harness.runtime)


def ppo_stage(
    cfg: Config,
    tokenizer,
    sft: PreTrainedModel,
    reward_model: PreTrainedModel,
    train_prompts: list[str],
    demonstrations: list[dict],
    start: PreTrainedModel | None = None,
    harness: Harness = QUIET,
) -> StageResult:
    """InstructGPT step 3 with the RL algorithm ``rl.algorithm`` names: policy from SFT (or from ``start``: a later
    labelling round continuing the last round's policy), reference = frozen SFT always, PPO's critic from the RM (an
    ensemble's first member); resumes from the harness's ``checkpoint_dir``.

    The harness's ``runtime``: where it runs (device, processes, precision; see flows' stage runtimes)."""
    algorithm = rl_algorithm(cfg.rl, cfg.ppo, cfg.model)
    policy = lora.for_training(copy.deepcopy(start if start is not None else sft), cfg.model)
    # the reference is SFT: the policy's own base with its adapters off, unless the policy started elsewhere
    reference = lora.reference_for(policy, sft) if start is None else frozen_copy(sft)
    critic = (
        lora.for_training(copy.deepcopy(members_of(reward_model)[0]), cfg.model, heads=lora.SCALAR_HEADS)
        if algorithm.has_critic
        else None
    )
    models = RLModels(policy, reference, critic, frozen_copy(reward_model), tokenizer)
    return timed(train_ppo)(models, train_prompts, cfg.ppo, cfg.model, cfg.seed, demonstrations, algorithm, harness)


def label_budgets(
    cfg: Config, comparisons: list[dict], metrics: dict[str, dict], own: dict[str, list[dict]] | None = None
) -> dict[str, dict]:
    """What each policy's training saw of the labels: the comparisons it trained on, the held-out slice its
    selection (or the reward model's accuracy check) read, and the fresh labels its selection spent.

    ``metrics``: each trained stage's metrics by policy name ("reward_model", "ppo", the baselines).
    SFT sees no comparison; PPO and best-of-n see the reward model's; every policy starts from the same SFT;
    ``own``: the comparisons of a policy labelled on its own samples (iterative DPO in labelling rounds).
    """
    budgets = {
        "sft": {
            "train_pairs": 0,
            "held_out_pairs": 0,
            "selection_labels": 0,
            "total": 0,
            "trainable_parameters": metrics.get("sft", {}).get("trainable_parameters"),
        }
    }
    for name in ("ppo", "best_of_n", *SUPERVISED_BASELINES):
        train, held_out = labelled_split(cfg, (own or {}).get(name, comparisons))
        base = {"train_pairs": len(train), "held_out_pairs": len(held_out)}
        labels = int(metrics.get(name, {}).get("selection.labels", 0))
        budgets[name] = {
            **base,
            "selection_labels": labels,
            "total": base["train_pairs"] + base["held_out_pairs"] + labels,
            # what its optimiser moved: every weight, or the adapters (model.peft); best-of-n trains nothing
            "trainable_parameters": 0 if name == "best_of_n" else metrics.get(name, {}).get("trainable_parameters"),
        }
    return budgets
