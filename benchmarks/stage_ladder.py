"""A pretrained-size model through the whole flow: the main command on the smoke profile with a GPT-2-small-shaped
local model (12 x 768, GPT-2's 50,257-token vocabulary, 1,024 positions: 124.4M parameters, random weights built
from config), every stage launched under `accelerate launch` so that each has its own processes, full-parameter and
with LoRA, on one process and on two.

    python benchmarks/stage_ladder.py [--runs full:cpu-1proc ... lora:cpu-2proc] [--shape 124m] [--keep]

LoRA adapts a trained model (a random one has nothing to adapt: its adapters alone do not move a 50k-token model's
mass onto the task's words in the smoke SFT's ten steps, and the comparisons' validation stops the run, as it
should): the LoRA runs start from the full run's SFT policy, and every stage, SFT included, trains adapters.

Per stage, read back from the run's MLflow store: where it ran (device, processes, threads), its seconds, the peak
memory of each rank (the resident set's peak on a CPU, the allocated peak on a GPU) and its tokens per second:
- SFT, the reward model and the baselines: the tokens their forward passes read (every rank's, ``input_tokens``);
- comparison sampling and the held-out decodings: the response tokens they sampled (the outputs, tokenized);
- PPO: the response tokens sampled over its iterations (each sampled, scored and trained on).
The model's text is the task's word vocabulary (its ids a small corner of the 50,257 rows), so the embedding and the
logits cost what GPT-2's do. Writes benchmarks/results/stage_ladder.json; docs/scaling-out.md has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.adapters.tracking import latest_pipeline_stages
from components.config import TrackingConfig, load_config
from components.io import write_json
from components.models.builders import build_policy
from components.models.precision import cpu_description
from components.models.saving import save_model
from components.models.tokenizer import build_word_tokenizer
from components.offline import stay_offline
from components.task.lexicon import VOCABULARY

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "stage_ladder.json"
SHAPES = {  # n_layer, n_embd, n_head, vocabulary, positions
    "124m": (12, 768, 12, 50257, 1024),  # GPT-2 small
    "355m": (24, 1024, 16, 50257, 1024),  # GPT-2 medium (the GPU check's)
    "tiny": (1, 32, 2, None, 64),  # the script's own check: the task's words only (a random 50k-token model samples
    # words the word tokenizer has no text for until SFT has moved its mass onto the task's)
}
LORA = "model.peft={r: 8, alpha: 16, target_modules: [c_attn, c_proj, c_fc]}"
STAGES = ("sft", "comparisons", "reward_model", "baseline_chosen", "baseline_top_ranked", "baseline_combined")
STAGES += ("baseline_dpo", "ppo", "evaluation")


def model_dir(shape: str, directory: Path) -> tuple[Path, int]:
    """A GPT-2 of ``shape`` with random weights, and the task's word tokenizer, as a local model directory."""
    n_layer, n_embd, n_head, vocabulary, positions = SHAPES[shape]
    tokenizer = build_word_tokenizer(VOCABULARY)
    cfg = load_config("smoke", [f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}"])
    policy = build_policy(cfg.model, tokenizer, seed=0)
    config = policy.config
    config.vocab_size, config.n_positions = vocabulary or len(tokenizer), positions
    model = type(policy)(config)
    save_model(model, tokenizer, directory, {"shape": shape})
    return directory, sum(p.numel() for p in model.parameters())


def run_flow(root: Path, local_dir: Path, profile: str, lora: bool, env: dict, timeout: float) -> float:
    overrides = [
        "model.source=local",
        f"model.local_dir={local_dir}",
        "distributed.launch=accelerate",  # every stage in processes of its own: its peak memory is its own
        f"distributed.accelerate_config=infra/accelerate/{profile}.yaml",
        "tracking.log_models=false",
        *([LORA] if lora else []),
    ]
    command = [sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--root", str(root)]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the main command exited {done.returncode}:\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def response_tokens(texts: list[str]) -> int:
    tokenizer = build_word_tokenizer(VOCABULARY)
    return sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])  # + EOS


def stage_rows(root: Path) -> dict[str, dict]:
    """Every stage's run of the latest pipeline run: where it ran, seconds, peak memory per rank, tokens/s."""
    stages = latest_pipeline_stages(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", TrackingConfig().experiment)
    rows = {}
    for run in stages:
        name, tags, metrics = run.name, run.tags, run.metrics
        if name not in STAGES:
            continue
        seconds = metrics.get("decode_seconds" if name == "evaluation" else "seconds")
        if name in ("sft", "reward_model") or name.startswith("baseline_"):
            tokens = metrics.get("input_tokens")
        elif name == "ppo":
            tokens = sum(run.history("response_tokens"))
        elif name == "comparisons":
            rows_file = next((root / "artifacts" / "comparisons").glob("*/preferences.jsonl"))
            pairs = [json.loads(line) for line in rows_file.read_text().splitlines()]
            tokens = response_tokens(sorted({r["chosen"] for r in pairs} | {r["rejected"] for r in pairs}))
        else:
            decoded = [
                json.loads(p.read_text())
                for p in (root / "artifacts" / "models" / "evaluation").glob("*/*/responses.json")
            ]
            tokens = response_tokens([text for responses in decoded for text in responses["texts"]])
        peaks = json.loads(tags.get("runtime.peak_memory_bytes", "[]"))
        rows[name] = {
            "device": tags.get("runtime.device"),
            "processes": int(tags.get("runtime.processes", 0)),
            "threads_per_process": int(tags.get("runtime.threads_per_process", 0)),
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_second": tokens / seconds if tokens and seconds else None,
            "peak_memory_mib_per_rank": [round(b / 2**20) for b in peaks],
        }
    return rows


def planned_mib(shape: str, variant: str, profile: str) -> dict[str, int]:
    """The memory plan of every stage for a run (what the flow checks before training), in MiB per rank."""
    from transformers import GPT2Config

    from components.models.memory import Placement, shape_of
    from components.training.memory_plan import recipe_memory

    n_layer, n_embd, n_head, vocabulary, positions = SHAPES[shape]
    cfg = load_config("smoke", [LORA, "model.source=local", "model.local_dir=."] if variant == "lora" else [])  # as run
    vocabulary = vocabulary or len(build_word_tokenizer(VOCABULARY))
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocabulary, n_positions=positions)
    placement = Placement(processes=2 if profile.startswith("cpu-2") else 1)
    plan = recipe_memory(cfg, shape_of(config, cfg.model.peft), placement)
    named = {s.stage: round(s.total / 2**20) for s in plan}
    return {stage: named.get(stage.removeprefix("baseline_")) for stage in STAGES}


def table(result: dict) -> None:
    print(f"\n{result['shape']}: {result['parameters'] / 1e6:.1f}M parameters, {result['cpu']}")
    print("variant | profile | stage | device x processes | seconds | tokens/s | peak MiB per rank | planned MiB")
    for run in result["runs"]:
        if "failed" in run:
            print(f"{run['variant']} | {run['profile']} | failed: {run['failed'][-300:]}")
            continue
        plans = planned_mib(result["shape"], run["variant"], run["profile"])
        for stage in STAGES:
            row = run.get("stages", {}).get(stage)
            if row is None:
                continue
            rate = f"{row['tokens_per_second']:.0f}" if row["tokens_per_second"] else "-"
            peaks = ", ".join(f"{m:,}" for m in row["peak_memory_mib_per_rank"])
            plan = f"{plans[stage]:,}" if plans.get(stage) else "-"
            print(
                f"{run['variant']} | {run['profile']} | {stage} | {row['device']} x {row['processes']} | "
                f"{row['seconds']:.1f} | {rate} | {peaks} | {plan}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="124m")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["full:cpu-1proc", "full:cpu-2proc", "lora:cpu-1proc", "lora:cpu-2proc"],
        help="variant:profile (full or lora; a name in infra/accelerate); lora after a full run",
    )
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="add to the runs already in --out (others replaced)")
    parser.add_argument("--table", action="store_true", help="print the table of --out and run nothing")
    args = parser.parse_args(argv)
    if args.table:
        table(json.loads(args.out.read_text()))
        return 0
    stay_offline()
    cpu = cpu_description()
    kept = json.loads(args.out.read_text())["runs"] if args.keep and args.out.is_file() else []
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        local_dir, parameters = model_dir(args.shape, Path(scratch) / "model")
        env = {**os.environ, "PREFECT_HOME": str(Path(scratch) / "prefect-home")}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        trained_sft = None  # the full run's SFT policy: what the LoRA runs adapt
        for plan in args.runs:
            variant, profile = plan.split(":")
            root = Path(scratch) / f"{variant}-{profile}"
            root.mkdir()
            subprocess.run(["git", "init", "-q"], cwd=root, check=True)
            base = local_dir if variant == "full" else trained_sft
            if base is None:
                raise SystemExit(f"{plan}: a LoRA run adapts the SFT policy of a full run: run one before it")
            try:
                wall = run_flow(root, base, profile, variant == "lora", env, args.timeout)
            except RuntimeError as error:
                runs.append({"variant": variant, "profile": profile, "failed": str(error)[-2000:]})
                print(json.dumps(runs[-1]), flush=True)
                continue
            if variant == "full" and trained_sft is None:
                trained_sft = next((root / "artifacts" / "models" / "sft").iterdir())
            runs.append({"variant": variant, "profile": profile, "wall_seconds": wall, "stages": stage_rows(root)})
            print(json.dumps(runs[-1]), flush=True)
            done = {(r["variant"], r["profile"]) for r in runs}
            result = {
                "shape": args.shape,
                "parameters": parameters,
                "lora": LORA,
                "cpu": cpu["model_name"],
                "bf16_native": cpu["bf16_native"],
                "cpu_count": os.cpu_count(),
                "runs": [r for r in kept if (r["variant"], r["profile"]) not in done] + runs,
            }
            write_json(args.out, result)
    table(result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
