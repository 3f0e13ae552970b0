"""Every stage on a GPU, where there is one (benchmarks/gpu_check.sh runs it on a lent GPU machine; skipped elsewhere:
no CPU machine can show it). Every module's forward pass in every stage, watched by a global forward hook, reads and
writes tensors on the GPU only, and the runtime runs in bf16 where the GPU has it."""

import pytest
import torch

from components.config import load_config
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.task.review_task import ReviewTask
from components.training import recipe
from components.training.loop import Harness
from components.training.rounds import tagged
from flows.execution import runtimes, stage_calls

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine"),
]


class Devices:
    """The device types of every tensor any module's forward pass returned while the block ran."""

    def __init__(self):
        self.seen: set[str] = set()

    def hook(self, module, inputs, output):
        self.add(output)

    def add(self, value):
        if isinstance(value, torch.Tensor):
            self.seen.add(value.device.type)
        elif isinstance(value, dict):  # a transformers ModelOutput
            for item in value.values():
                self.add(item)
        elif isinstance(value, tuple | list):
            for item in value:
                self.add(item)

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("peft", [None, "{r: 4}"])
def test_every_stage_computes_on_the_gpu(peft):
    every_stage_computes_on("cuda", peft)


def every_stage_computes_on(device: str, peft: str | None) -> None:
    cfg = load_config("smoke", ["selection.candidates=2", *([f"model.peft={peft}"] if peft else [])])
    rows = generate_synthetic(cfg).rows
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    demonstrations = rows[DEMONSTRATIONS]
    prompts = sorted({r["prompt"] for r in demonstrations})
    environment = ReviewTask(cfg)
    with runtimes.in_process(cfg, use_cpu=device == "cpu") as runtime:
        assert runtime.device.type == device
        if device == "cuda" and torch.cuda.is_bf16_supported():
            assert runtime.describe()["mixed_precision"] == "bf16"

        def run(call: str, args: dict, models: dict):
            with Devices() as devices:
                result = stage_calls.CALLS[call](cfg, tokenizer, args, models, runtime, environment, None)
            assert devices.seen == {device}, (call, devices.seen)
            return result

        sft = run("sft", {"demonstrations": demonstrations}, {}).model
        comparisons = run(
            "comparisons",
            {"demonstrations": demonstrations, "train_prompts": prompts, "stream": "labeler"},
            {"sampler": sft},
        ).model
        reward = run("reward_model", {"comparisons": comparisons, "train_prompts": prompts}, {"sft": sft}).model
        policies = {"sft": sft}
        for name in recipe.SUPERVISED_BASELINES:
            policies[name] = run("baseline", {"name": name, "comparisons": comparisons}, {"sft": sft}).model
        round_rows = tagged(comparisons, 1, 0)
        run(
            "iterative_dpo",
            {"round_rows": round_rows, "seen_rows": round_rows, "round_index": 1},
            {"sft": sft, "previous": sft},
        )
        with Devices() as devices:
            policies["ppo"] = recipe.ppo_stage(
                cfg, tokenizer, sft, reward, prompts, demonstrations, harness=Harness(runtime=runtime)
            ).model
        assert devices.seen == {device}, ("ppo", devices.seen)
        wanted = [[name, "sample"] for name in policies] + [["best_of_n", "sample"], ["ppo", "greedy"]]
        eval_prompts = [r["prompt"] for r in rows[EVAL_PROMPTS]]
        decoded = run("decode", {"eval_prompts": eval_prompts, "wanted": wanted}, {**policies, "reward_model": reward})
        assert len(decoded.model) == len(wanted)
