"""The GPU check: every stage of the recipe on one GPU, on the runtime the flow gives a single-GPU profile (the stages'
own code, in one process, bf16 autocast where the GPU has it), with a GPT-2-medium-shaped model built from config
(24 x 1024, GPT-2's 50,257-token vocabulary: 355M parameters, random weights), full-parameter and with LoRA.

    python benchmarks/gpu_check.py [--shape 355m] [--variants full lora] [--out DIR]     (benchmarks/gpu_check.sh)

Per stage: seconds, tokens per second (training stages: the tokens their forward passes read; sampling stages: the
response tokens they sampled) and the peak GPU memory allocated during the stage. It checks, and fails otherwise,
that the stage ran where the user's model runs: the runtime's device is the GPU, and every model the stage hands on
has every parameter on it; the precision it ran in (bf16 autocast where the GPU has it) is recorded.
``--device cpu --shape tiny`` runs the same script on a CPU (how it is checked without a GPU). The Prefect/MLflow
flow is not needed: the machine needs torch, transformers, accelerate, peft, pydantic and pyyaml.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from components.config import load_config
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS
from components.evaluation.judges import gold_judge
from components.evaluation.report import EvaluatedModels, evaluate_policies
from components.models.builders import build_policy
from components.models.decoding import Decoder
from components.models.ensemble import members_of
from components.models.saving import save_model
from components.models.tokenizer import build_word_tokenizer
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe
from components.training.loop import Harness
from flows.execution import runtimes

# n_layer, n_embd, n_head, vocabulary (None: the task's words only), positions
SHAPES = {"355m": (24, 1024, 16, 50257, 1024), "124m": (12, 768, 12, 50257, 1024), "tiny": (1, 32, 2, None, 64)}
LORA = "model.peft={r: 8, alpha: 16, target_modules: [c_attn, c_proj, c_fc]}"


def local_model(shape: str, directory: Path) -> int:
    """A GPT-2 of ``shape`` with random weights and the task's word tokenizer, as a local model directory."""
    n_layer, n_embd, n_head, vocabulary, positions = SHAPES[shape]
    tokenizer = build_word_tokenizer(VOCABULARY)
    cfg = load_config("smoke", [f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}"])
    policy = build_policy(cfg.model, tokenizer, 0)
    config = policy.config
    config.vocab_size, config.n_positions = vocabulary or len(tokenizer), positions
    model = type(policy)(config)
    save_model(model, tokenizer, directory, {"shape": shape})
    return sum(p.numel() for p in model.parameters())


class Stages:
    """Times each stage, reads its peak memory and checks where its models are."""

    def __init__(self, runtime):
        self.runtime, self.rows = runtime, {}

    def __call__(self, name: str, fn, tokens=None):
        device = self.runtime.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        count = tokens(result) if tokens else None
        model = getattr(result, "model", None)
        if isinstance(model, torch.nn.Module):
            placed = {p.device.type for member in members_of(model) for p in member.parameters()}
            assert placed == {device.type}, f"{name}: parameters on {placed}, the runtime is on {device}"
        self.rows[name] = {
            "seconds": round(seconds, 2),
            "tokens": count,
            "tokens_per_second": round(count / seconds, 1) if count else None,
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
            "device": str(device),
            **{k: v for k, v in self.runtime.describe().items() if k in ("mixed_precision", "processes")},
        }
        print(json.dumps({name: self.rows[name]}), flush=True)
        return result


def response_tokens(tokenizer, texts) -> int:
    texts = [text for text in texts if text]
    return sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def run_variant(cfg, runtime) -> dict:
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    demonstrations = rows[DEMONSTRATIONS]
    prompts = sorted({r["prompt"] for r in demonstrations})
    task = ReviewTask(cfg)
    stage = Stages(runtime)
    trained_tokens = lambda result: result.history[-1].get("input_tokens")  # noqa: E731
    sft = stage("sft", lambda: recipe.sft_stage(cfg, tokenizer, demonstrations, runtime=runtime), trained_tokens)
    labeller = recipe.comparison_labeller(cfg, task.labeller("labeler"), demonstrations)
    comparisons = stage(
        "comparisons",
        lambda: recipe.comparisons_stage(cfg, tokenizer, sft.model, prompts, labeller, runtime=runtime),
        lambda r: response_tokens(tokenizer, {row[side] for row in r.model for side in ("chosen", "rejected")}),
    ).model
    reward = stage(
        "reward_model",
        lambda: recipe.reward_stage(cfg, tokenizer, sft.model, comparisons, prompts, demonstrations, runtime=runtime),
        trained_tokens,
    )
    policies = {"sft": sft.model}
    for name in recipe.SUPERVISED_BASELINES:
        policies[name] = stage(
            name,
            lambda name=name: recipe.baseline_stage(
                cfg,
                name,
                tokenizer,
                sft.model,
                comparisons,
                make_ranker=lambda: task.labeller("selection"),
                runtime=runtime,
            ),
            trained_tokens,
        ).model
    policies["ppo"] = stage(
        "ppo",
        lambda: recipe.ppo_stage(
            cfg, tokenizer, sft.model, reward.model, prompts, demonstrations, harness=Harness(runtime=runtime)
        ),
        lambda r: sum(h["response_tokens"] for h in r.history),
    ).model
    eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
    report = stage(
        "evaluation",
        lambda: evaluate_policies(
            EvaluatedModels(policies, reward.model),
            eval_prompts,
            cfg.evaluation,
            Decoder(tokenizer, cfg.model, cfg.seed, runtime),
            gold_judge(gold_score),
            cfg.baselines.best_of_n,
        ),
        # every response of every policy under every mode: its words, and EOS
        lambda r: sum(s["n"] * (s["length"] + 1) for block in r.modes.values() for s in block.policies.values()),
    )
    return {"stages": stage.rows, "ppo_gold_sample": report.modes["sample"].policies["ppo"]["gold"]["value"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="355m")
    parser.add_argument("--variants", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU here: nothing checked", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / f"gpu-check-{args.shape}-model"
    parameters = local_model(args.shape, model_dir)
    results = {"shape": args.shape, "parameters": parameters, "torch": torch.__version__, "variants": {}}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for variant in args.variants:
        overrides = ["model.source=local", f"model.local_dir={model_dir}", *([LORA] if variant == "lora" else [])]
        cfg = load_config("smoke", overrides)
        with runtimes.in_process(cfg, use_cpu=args.device == "cpu") as runtime:
            assert runtime.device.type == args.device, runtime.device
            if args.device == "cuda" and torch.cuda.is_bf16_supported():
                assert runtime.describe()["mixed_precision"] == "bf16", runtime.describe()
            results["variants"][variant] = run_variant(cfg, runtime)
    path = args.out / f"gpu_check_{args.shape}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"{args.shape} ({parameters / 1e6:.1f}M parameters) on {results.get('gpu', args.device)}")
    print("variant | stage | device | precision | seconds | tokens/s | peak GiB")
    for variant, outcome in results["variants"].items():
        for name, row in outcome["stages"].items():
            print(
                f"{variant} | {name} | {row['device']} | {row['mixed_precision']} | {row['seconds']} | "
                f"{row['tokens_per_second']} | {row['peak_gib']}"
            )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
