"""This project's RL iteration (PPO and every other ``rl.algorithm``) beside TRL's PPO, on the same models,
prompts, batch, epochs and minibatches.

    pip install -e '.[peer]'    # trl==1.10.0, the last TRL release with a PPOTrainer
    python benchmarks/ppo_vs_trl.py [--profile default] [--iterations 6] [--runs artifacts/runs] [--algorithms ppo rloo]

Both start from the same SFT policy and reward model: those of the newest completed main-job run of the profile
(``--runs``), else trained with the profile first (not timed). Both train in this process, one after the other, on
the profile's settings: ``ppo.rollout_batch_size`` rollouts per iteration, ``ppo.ppo_epochs`` epochs of
``rollout_batch_size / minibatch_size`` minibatches (one optimiser step each), responses of up to
``model.max_response_tokens`` tokens sampled at ``ppo.temperature`` and ended at EOS; reference = the SFT policy,
critic initialised from the reward model; fp32. This project runs as the pipeline's PPO stage does, without the gold
monitor (TRL has none); TRL's PPOTrainer scores all rollouts in one forward batch and samples no completions for
display, its best case. This project's other algorithms run the same schedule (``ppo``'s settings: as many
responses an iteration; RLOO's and GRPO's are ``rl.samples_per_prompt`` responses to each of fewer prompts) without a
critic. TRL's ``bf16`` setting is left False: its PPOTrainer builds its own Accelerator without
mixed precision, so the setting does not reach the models (bf16=True measured 7.41 s against 7.54 s in fp32).

Reported per iteration: the mean wall time between consecutive iterations' ends, after the first (warm-up);
ratio = this project's algorithm / TRL's PPO. Writes benchmarks/results/ppo_vs_trl.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import get_args

import torch

from components.config import Config, RLAlgorithm, load_config
from components.data.files import DEMONSTRATIONS
from components.io import write_json
from components.models.builders import load_causal_lm, load_scalar_model
from components.models.ensemble import load_reward_model
from components.offline import stay_offline
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.training import recipe
from components.training.loop import Harness

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the benchmarks package beside components
RESULTS = REPO / "benchmarks" / "results" / "ppo_vs_trl.json"
TRL_VERSION = "1.10.0"

from benchmarks.flop_floor import matmul_gflops  # noqa: E402
from benchmarks.ppo_throughput import sft_and_reward_model  # noqa: E402
from components.models.precision import cpu_description  # noqa: E402


def steady_seconds(ends: list[float], started: float) -> float:
    """Mean seconds per iteration from each iteration's end time, the first (warm-up) left out."""
    durations = [b - a for a, b in zip([started, *ends], ends)]
    return statistics.fmean(durations[1:])


def trl_settings(cfg: Config, iterations: int, output_dir: str) -> dict:
    """TRL PPOConfig arguments for the profile's PPO. TRL's rollout batch is per_device_train_batch_size x
    gradient_accumulation_steps; it is cut into num_mini_batches minibatches, each split into micro-batches of
    per_device_train_batch_size with an optimiser step per gradient_accumulation_steps of them. One micro-batch per
    minibatch and no accumulation gives this project's schedule: one optimiser step per minibatch."""
    ppo = cfg.ppo
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": ppo.rollout_batch_size,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": ppo.rollout_batch_size // ppo.minibatch_size,
        "num_ppo_epochs": ppo.ppo_epochs,
        "total_episodes": iterations * ppo.rollout_batch_size,
        "local_rollout_forward_batch_size": ppo.rollout_batch_size,
        "response_length": cfg.model.max_response_tokens,
        "stop_token": "eos",
        "temperature": ppo.temperature,
        "missing_eos_penalty": ppo.missing_eos_penalty,
        "kl_coef": ppo.kl.kl_coef,
        "cliprange": ppo.cliprange,
        "cliprange_value": ppo.cliprange_value,
        "gamma": ppo.gamma,
        "lam": ppo.lam,
        "whiten_rewards": ppo.whiten_rewards,
        "learning_rate": ppo.lr,
        "max_grad_norm": ppo.max_grad_norm,
        "num_sample_generations": 0,
        "seed": cfg.seed,
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_strategy": "no",
        "disable_tqdm": True,
    }


def time_this_project(cfg: Config, tokenizer, sft: Path, reward_model: Path, prompts: list[str], rows) -> dict:
    """One RL stage of ``cfg.rl.algorithm``, timed per iteration."""
    ends: list[float] = []
    started = time.perf_counter()
    result = recipe.ppo_stage(
        cfg,
        tokenizer,
        load_causal_lm(sft),
        load_reward_model(reward_model),
        prompts,
        rows[DEMONSTRATIONS],
        harness=Harness(log=lambda iteration, entry: ends.append(time.perf_counter())),
    )
    last = result.history[-1]
    return {
        "seconds_per_iteration": steady_seconds(ends, started),
        "last_rm_score": last["rm_score"],
        "last_kl": last["kl"],
    }


def time_trl(cfg: Config, tokenizer, sft: Path, reward_model: Path, prompts: list[str], iterations: int) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"trl {trl.__version__} is installed; this benchmark compares with trl=={TRL_VERSION}")
    ends: list[float] = []

    class IterationEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    tokenizer.padding_side = "left"  # TRL's queries are left-padded, as this project's are
    queries = [tokenizer(p, add_special_tokens=False)["input_ids"][-cfg.model.max_prompt_tokens :] for p in prompts]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = PPOTrainer(
            args=PPOConfig(**trl_settings(cfg, iterations, output_dir)),
            processing_class=tokenizer,
            model=load_causal_lm(sft),
            ref_model=load_causal_lm(sft),
            reward_model=load_scalar_model(reward_model),
            value_model=load_scalar_model(reward_model),
            train_dataset=Dataset.from_dict({"input_ids": queries}),
            callbacks=[IterationEnds()],
        )
        started = time.perf_counter()
        trainer.train()
    return {"seconds_per_iteration": steady_seconds(ends, started), "trl_version": trl.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--runs", type=Path, default=REPO / "artifacts" / "runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--algorithms", nargs="+", default=list(get_args(RLAlgorithm)), choices=get_args(RLAlgorithm))
    args = parser.parse_args(argv)
    stay_offline()
    warnings.filterwarnings("ignore")
    iterations = [f"ppo.iterations={args.iterations}"]
    cfg = load_config(args.profile, iterations)
    if cfg.reward.ensemble_size != 1:
        raise SystemExit("TRL's PPOTrainer takes one reward model: run with reward.ensemble_size=1")
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
    with tempfile.TemporaryDirectory() as scratch:
        sft, reward_model, origin = sft_and_reward_model(cfg, args.runs, Path(scratch), tokenizer, rows)
        ours = {}
        for algorithm in args.algorithms:
            algorithm_cfg = load_config(args.profile, [*iterations, f"rl.algorithm={algorithm}"])
            ours[algorithm] = time_this_project(algorithm_cfg, tokenizer, sft, reward_model, prompts, rows)
        theirs = time_trl(cfg, tokenizer, sft, reward_model, prompts, args.iterations)

    result = {
        "cpu": cpu_description()["model_name"],
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops_fp32": matmul_gflops(
            cfg.ppo.minibatch_size * cfg.model.max_response_tokens, cfg.model.n_embd, torch.float32
        ),
        "profile": cfg.profile,
        "models": origin,
        "iterations": args.iterations,
        "rollout_batch_size": cfg.ppo.rollout_batch_size,
        "minibatch_size": cfg.ppo.minibatch_size,
        "ppo_epochs": cfg.ppo.ppo_epochs,
        "max_response_tokens": cfg.model.max_response_tokens,
        "this_project": ours,
        "trl": theirs,
        "ratio": {name: mine["seconds_per_iteration"] / theirs["seconds_per_iteration"] for name, mine in ours.items()},
    }
    print(
        f"RL iteration, profile {cfg.profile}: {cfg.ppo.rollout_batch_size} rollouts, {cfg.ppo.ppo_epochs} epochs x "
        f"{cfg.ppo.rollout_batch_size // cfg.ppo.minibatch_size} minibatches, mean of {args.iterations - 1} "
        f"iterations after the first; {result['cpu']}, {result['torch_threads']} torch threads, matmul fp32 "
        f"{result['matmul_gflops_fp32']:.0f} GFLOP/s"
    )
    print("implementation | s / iteration | ratio to TRL's PPO")
    for name, mine in ours.items():
        print(f"this project, {name} | {mine['seconds_per_iteration']:.2f} | {result['ratio'][name]:.3f}")
    print(f"TRL {theirs['trl_version']}, ppo | {theirs['seconds_per_iteration']:.2f} | 1")
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
