"""PPO checkpoints: a run interrupted after a checkpoint and resumed ends bit-identical to one that never stopped,
with a critic (PPO) and without one (GRPO: the policy and its optimiser alone)."""

import copy

import pytest
import torch

from components.config import RLConfig
from components.data.files import DEMONSTRATIONS
from components.training.algorithms import rl_algorithm
from components.training.checkpoints import latest_checkpoint
from components.training.loop import Harness
from components.training.ppo import RLModels, train_ppo
from tests.model.conftest import PPO, SEED, TINY

CFG = PPO.model_copy(update={"iterations": 5, "checkpoint_every": 2})


class Interrupted(Exception):
    pass


def run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, algorithm, checkpoint_dir=None, stop_at=None):
    sft, rm = tiny_sft[0], tiny_reward_model[0]
    chosen = rl_algorithm(RLConfig(algorithm=algorithm), CFG, TINY)
    prompts = sorted({d["prompt"] for d in smoke_rows[DEMONSTRATIONS]})

    def log(iteration, entry):
        if iteration == stop_at:
            raise Interrupted(iteration)  # a crash after iteration `stop_at` was sampled, before its checkpoint

    return train_ppo(
        RLModels(
            copy.deepcopy(sft),
            copy.deepcopy(sft),
            copy.deepcopy(rm) if chosen.has_critic else None,
            copy.deepcopy(rm),
            tokenizer,
        ),
        prompts,
        CFG,
        TINY,
        SEED,
        algorithm=chosen,
        harness=Harness(log=log, checkpoint_dir=checkpoint_dir),
    )


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_an_interrupted_run_resumes_to_the_same_weights(
    tiny_sft, tiny_reward_model, tokenizer, smoke_rows, tmp_path, algorithm
):
    uninterrupted, _, full_history = run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, algorithm)

    with pytest.raises(Interrupted):
        run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, algorithm, tmp_path, stop_at=3)
    saved = latest_checkpoint(tmp_path)
    assert saved.iteration == 2 and len(saved.history) == 2  # the checkpoint after iterations 0-1 survived the crash
    assert ("critic" in saved.tensors) == (algorithm == "ppo")

    resumed, _, history = run(tiny_sft, tiny_reward_model, tokenizer, smoke_rows, algorithm, tmp_path)
    for (name, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name  # single process on CPU: identical, no tolerance
    assert [h["rm_score"] for h in history] == [h["rm_score"] for h in full_history]
    assert [h["iteration"] for h in history] == list(range(CFG.iterations))


def test_a_partial_checkpoint_is_never_picked_up(tmp_path):
    (tmp_path / ".partial-x").mkdir()  # what a crash mid-write leaves behind
    assert latest_checkpoint(tmp_path) is None
