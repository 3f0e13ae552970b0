"""PPO jobs for the launch tests (tests/distributed/): a smoke-sized SFT policy and reward model saved where a
launched job reads them, and the job files over them."""

from __future__ import annotations

from pathlib import Path

from components.config import Config, load_config
from components.data.files import DEMONSTRATIONS
from components.models.builders import load_causal_lm, load_scalar_model
from components.models.saving import save_model
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe
from components.training.loop import Harness
from flows.execution.ppo_worker import PPOJob

SFT_LONGER = ["sft.epochs=20", "sft.lr=3e-3"]
# Near-greedy rollouts from the same starting weights make the ranks' two shards together exactly the batch one
# process samples; one minibatch per epoch makes the updates the same steps. One iteration only: after an update,
# weights that differ by float noise (~1e-8) can flip a near-tied token, and the trajectories part (measured).
# The log-probs of softmax(logits / 0.001) of a near-greedy policy have gradients ~1e-10, which Adam (eps 1e-8) turns
# into steps ~lr/100: lr 1e-2 moves the weights by ~4e-4 (at 1e-3 by 4e-5, too close to the 1e-6 agreement bound).
SAME_BATCH = [
    "ppo.iterations=1",
    "ppo.rollout_batch_size=16",
    "ppo.minibatch_size=16",
    "ppo.ppo_epochs=3",
    "ppo.temperature=0.001",
    "ppo.lr=1e-2",
]


def ppo_inputs(models: Path) -> dict:
    """A smoke-sized SFT policy trained long enough to have a peaked next-token distribution, and its reward
    model, saved under ``models``. (The smoke profile's own SFT is near uniform; near-greedy decoding of a
    near-uniform policy flips tokens on float noise.)"""
    cfg = load_config("smoke", SFT_LONGER)
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
    sft, _, reward_model = recipe.up_to_reward_model(
        cfg,
        tokenizer,
        rows[DEMONSTRATIONS],
        recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), rows[DEMONSTRATIONS]),
    )
    save_model(sft, tokenizer, models / "sft", {})
    save_model(reward_model, tokenizer, models / "reward_model", {})
    return {"models": models, "prompts": prompts, "demonstrations": rows[DEMONSTRATIONS], "tokenizer": tokenizer}


def job(inputs: dict, job_dir: Path, overrides: list[str], checkpoint_dir: Path | None = None) -> Config:
    """A PPO job (smoke profile with ``overrides``) over the inputs' SFT and reward model; its config."""
    cfg = load_config("smoke", [*SFT_LONGER, *overrides])
    PPOJob(
        cfg,
        inputs["models"] / "sft",
        inputs["models"] / "reward_model",
        inputs["prompts"],
        inputs["demonstrations"],
        checkpoint_dir,
        vocabulary=VOCABULARY,
    ).write(job_dir)
    return cfg


def one_plain_process(inputs: dict, cfg: Config, **harness) -> recipe.StageResult:
    """The same PPO in this process: no launcher, no data parallelism, no DeepSpeed; ``harness``: the fields of its
    ``Harness`` (runtime, monitor, checkpoint_dir, ...)."""
    models = inputs["models"]
    return recipe.ppo_stage(
        cfg,
        inputs["tokenizer"],
        load_causal_lm(models / "sft"),
        load_scalar_model(models / "reward_model"),
        inputs["prompts"],
        inputs["demonstrations"],
        harness=Harness(**harness),
    )
