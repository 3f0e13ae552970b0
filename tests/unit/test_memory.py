"""The memory plan (components/models/memory.py, training/memory_plan.py, flows/execution/runtimes.py): known answers.

- The parameter count of the policy's shape equals GPT-2's, counted by hand from its sizes.
- Weights, gradients and optimiser state: 4, 4 and 8 bytes per trained parameter, divided over the ranks as each ZeRO
  stage shards them (1: the optimiser state, 2: and the gradients, 3: and the weights), none on the device offloaded.
- Activations: the estimate is an upper bound of the bytes autograd actually keeps for backward in a training forward
  pass (every saved tensor's storage, counted once), and within 4x of it (not a bound so loose it refuses what fits);
  gradient checkpointing brings both down.
- A stage planned beyond a rank's memory stops the run with the stage's numbers; a DeepSpeed setting no stage would
  honour is refused naming its key.
"""

import pytest
import torch

from components.config import ConfigError, load_config, reward_model_config
from components.data.files import DEMONSTRATIONS
from components.models import lora
from components.models.builders import build_policy, policy_config
from components.models.memory import MicroBatch, Placement, activation_bytes, shape_of, stage_memory
from components.task.generator import generate_synthetic
from components.task.lexicon import VOCABULARY
from components.training import recipe
from components.training.loop import Means
from components.training.memory_plan import recipe_memory
from components.training.sft import sft_objective
from flows.execution import launcher, runtimes


@pytest.fixture(scope="module")
def smoke():
    cfg = load_config("smoke")
    return cfg, recipe.make_tokenizer(cfg, VOCABULARY)


def test_the_policy_s_parameters_are_gpt2_s_counted_by_hand(smoke):
    cfg, tokenizer = smoke
    m = cfg.model
    h, vocab, positions = m.n_embd, len(tokenizer), m.max_prompt_tokens + m.max_response_tokens
    block = (2 * h) + (h * 3 * h + 3 * h) + (h * h + h) + (2 * h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    by_hand = vocab * h + positions * h + m.n_layer * block + 2 * h  # the LM head is tied to the embedding
    shape = shape_of(policy_config(m, tokenizer), None)
    assert shape.parameters == by_hand == sum(p.numel() for p in build_policy(m, tokenizer, 0).parameters())
    assert (shape.layers, shape.hidden, shape.heads, shape.vocabulary) == (m.n_layer, h, m.n_head, vocab)


def test_weights_gradients_and_optimiser_state_are_sharded_as_each_zero_stage_shards_them(smoke):
    cfg, tokenizer = smoke
    shape = shape_of(policy_config(cfg.model, tokenizer), None)
    n = shape.parameters

    def plan(**placement):
        return stage_memory("sft", shape, Placement(**placement), False, 1, 0, MicroBatch(1, 1, logits=False))

    whole = plan()
    assert (whole.weights, whole.gradients, whole.optimizer) == (4 * n, 4 * n, 8 * n)
    assert (plan(processes=2, zero_stage=1).optimizer, plan(processes=2, zero_stage=1).gradients) == (4 * n, 4 * n)
    assert plan(processes=2).gradients == 8 * n  # DDP's buckets: a second copy
    two = plan(processes=2, zero_stage=2)
    assert (two.weights, two.gradients, two.optimizer) == (4 * n, 2 * n, 4 * n)
    three = plan(processes=2, zero_stage=3)
    assert (three.weights, three.gradients, three.optimizer) == (2 * n, 2 * n, 4 * n)
    offloaded = plan(processes=2, zero_stage=3, offload_optimizer=True, offload_parameters=True)
    assert (offloaded.weights, offloaded.optimizer) == (0, 0)


def test_adapters_train_only_their_own_parameters_and_ppo_keeps_no_second_base_copy(smoke):
    cfg, tokenizer = smoke
    adapted_cfg = load_config("smoke", ["model.peft={r: 4}"])
    full_shape = shape_of(policy_config(cfg.model, tokenizer), None)
    full = {s.stage: s for s in recipe_memory(cfg, full_shape, Placement())}
    shape = shape_of(policy_config(adapted_cfg.model, tokenizer), adapted_cfg.model.peft)
    adapted = {s.stage: s for s in recipe_memory(adapted_cfg, shape, Placement())}
    assert shape.adapter_parameters == 2048  # r (in + out) per layer: tests/model/test_lora.py counts it by hand
    assert adapted["dpo"].optimizer == 8 * shape.adapter_parameters and full["dpo"].optimizer == 8 * shape.parameters
    # PPO: policy, critic, the reward model and its frozen copy, SFT, the snapshots; the reference is the policy with
    # its adapters off
    base, snapshots = 4 * shape.parameters, cfg.selection.candidates
    assert full["ppo"].weights == (6 + snapshots) * base
    assert adapted["ppo"].weights == (5 + snapshots) * base + 2 * 4 * shape.adapter_parameters
    # RLOO, GRPO, REINFORCE++: no critic, one model's weights, gradients and optimiser state less
    for algorithm in ("rloo", "grpo", "reinforce_pp"):
        [rl] = [
            s
            for s in recipe_memory(load_config("smoke", [f"rl.algorithm={algorithm}"]), full_shape, Placement())
            if s.stage == "ppo"
        ]
        assert rl.weights == full["ppo"].weights - base and rl.optimizer == full["ppo"].optimizer / 2, algorithm


def test_a_reward_model_of_its_own_size_is_counted_at_its_size_wherever_it_is_held(smoke):
    """reward.model: the reward stage trains the reward model's size beside SFT (or, if larger, its own SFT first);
    PPO's critic and the reward model's two copies are the reward model's size, the rest the policy's."""
    cfg, tokenizer = smoke
    own = load_config("smoke", ["reward.model={n_layer: 2, n_embd: 64, n_head: 4}"])
    shape = shape_of(policy_config(cfg.model, tokenizer), None)
    reward_shape = shape_of(policy_config(reward_model_config(own), tokenizer), None)
    p, r = shape.parameters, reward_shape.parameters
    assert r > 3 * p  # twice as wide and twice as deep
    plan = {s.stage: s for s in recipe_memory(own, shape, Placement(), reward_shape)}
    same = {s.stage: s for s in recipe_memory(cfg, shape, Placement())}
    reward = plan["reward_model"]
    assert (reward.weights, reward.gradients, reward.optimizer) == (4 * (r + p), 4 * r, 8 * r)
    ppo, snapshots = plan["ppo"], cfg.selection.candidates
    assert ppo.weights == 4 * (3 + snapshots) * p + 4 * 3 * r  # policy, reference, SFT, snapshots; critic, RM twice
    assert (ppo.gradients, ppo.optimizer) == (4 * (p + r), 8 * (p + r))
    assert plan["evaluation"].weights == 4 * (6 * p + r)  # SFT, the four baselines and PPO; the reward model
    for stage in ("sft", "chosen", "dpo"):
        assert plan[stage] == same[stage], stage


def test_a_rank_decodes_whole_decodings_so_its_evaluation_batch_is_not_divided(smoke):
    cfg, tokenizer = smoke
    shape = shape_of(policy_config(cfg.model, tokenizer), None)
    sequence = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    logits = 2 * cfg.evaluation.batch_size * sequence * shape.vocabulary * 4  # logits and log-softmax, fp32
    for processes in (1, 2):
        [evaluation] = [s for s in recipe_memory(cfg, shape, Placement(processes=processes)) if s.stage == "evaluation"]
        assert evaluation.activations == logits, processes


def saved_bytes(loss_fn) -> int:
    """The bytes autograd keeps for backward while ``loss_fn`` runs: every saved tensor's storage, once."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn().backward()
    return sum(storages.values())


def measured(checkpointing: bool) -> dict:
    """What autograd keeps in a training forward pass of the SFT loss over 16 smoke demonstrations (2 x 64 GPT-2):
    of the transformer's blocks alone, and of the whole loss (the blocks, then the vocabulary's logits)."""
    cfg = load_config("smoke", ["model.n_layer=2", "model.n_embd=64", f"model.gradient_checkpointing={checkpointing}"])
    tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
    rows = generate_synthetic(load_config("smoke")).rows[DEMONSTRATIONS][:16]
    policy = lora.for_training(build_policy(cfg.model, tokenizer, 0), cfg.model).train()
    objective = sft_objective(tokenizer, cfg.model, torch.device("cpu"))
    batch, counts = objective.encode(rows)
    blocks = saved_bytes(
        lambda: policy.transformer(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state.sum()
    )
    whole = saved_bytes(lambda: objective.loss(policy, batch, Means(counts))[0])
    shape = shape_of(policy_config(cfg.model, tokenizer), None)
    placement = Placement(checkpointing=checkpointing)
    sequence = batch.input_ids.shape[1]
    return {
        "blocks": blocks,
        "logits": whole - blocks,
        "estimate": activation_bytes(shape, len(rows), sequence, placement, logits=False),
        "estimate_logits": activation_bytes(shape, len(rows), sequence, placement)
        - activation_bytes(shape, len(rows), sequence, placement, logits=False),
        "layers": cfg.model.n_layer,
    }


def test_the_activation_estimate_bounds_what_autograd_keeps_within_4x():
    """Without checkpointing, autograd keeps every block's activations; with it, each block's input, and in
    backward one block's activations again while it is recomputed (the full run's bytes per block)."""
    full, checkpointed = measured(False), measured(True)
    assert full["blocks"] <= full["estimate"] <= 4 * full["blocks"], full
    recomputed = full["blocks"] // full["layers"]
    peak = checkpointed["blocks"] + recomputed
    assert peak <= checkpointed["estimate"] <= 4 * peak, (checkpointed, recomputed)
    assert checkpointed["estimate"] < full["estimate"] and checkpointed["blocks"] < full["blocks"] / 2
    for run in (full, checkpointed):  # the logits, their log-softmax, and in backward their gradient
        assert run["logits"] <= run["estimate_logits"] <= 4 * run["logits"], run


def test_a_stage_beyond_a_rank_s_memory_stops_the_run_with_its_numbers(smoke, monkeypatch):
    cfg, tokenizer = smoke
    monkeypatch.setattr(runtimes, "rank_memory", lambda cfg, profile: ("a small device", 2**20))  # 1 MiB
    with pytest.raises(runtimes.MemoryPlanError) as refused:
        runtimes.plan_memory(cfg, tokenizer)
    message = str(refused.value)
    assert "memory plan, per rank: sft needs" in message and "ppo needs" in message and "GiB" in message
    assert "a small device" in message and "model.gradient_checkpointing" in message
    monkeypatch.setattr(runtimes, "rank_memory", lambda cfg, profile: ("a large device", 2**40))
    assert next(s.stage for s in runtimes.plan_memory(cfg, tokenizer)) == "sft"


@pytest.mark.parametrize(
    "setting, key",
    [
        ({"offload_optimizer_device": "nvme"}, "offload_optimizer_device"),
        ({"offload_param_device": "cpu", "zero_stage": 2}, "offload_param_device"),
        ({"zero3_init_flag": True}, "zero3_init_flag"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
        ({"gradient_clipping": 0.5}, "gradient_clipping"),
        ({"stage3_max_live_parameters": 10**9}, "stage3_max_live_parameters"),
    ],
)
def test_a_deepspeed_setting_no_stage_would_honour_is_refused_by_name(setting, key, tmp_path):
    import yaml

    raw = yaml.safe_load((launcher_profiles() / "deepspeed-zero3.yaml").read_text())
    raw["deepspeed_config"] = {**raw["deepspeed_config"], **setting}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config("smoke", [f"distributed.accelerate_config={path}"])
    with pytest.raises(ConfigError) as refused:
        launcher.refuse_unhonoured(cfg, tmp_path)
    assert f"deepspeed_config.{key}" in str(refused.value)


def test_the_shipped_deepspeed_profiles_are_honoured_whole():
    for name, stage, offload in (("deepspeed-zero2", 2, False), ("deepspeed-zero3", 3, False)):
        cfg = load_config("smoke", [f"distributed.accelerate_config=infra/accelerate/{name}.yaml"])
        launcher.refuse_unhonoured(cfg, launcher_profiles().parents[1])
        zero = launcher.zero_settings(runtimes.run_profile(cfg), launcher.max_grad_norms(cfg))
        assert zero.stage == stage and zero.offload_optimizer is offload


def launcher_profiles():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "infra" / "accelerate"


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_gradient_checkpointing_takes_the_same_steps(stage):
    """Recomputing the blocks' activations in backward computes the same gradients: the same weights after the
    stage, bit for bit (the same kernels on the same inputs). DPO trains in eval mode (dropout off), where
    transformers would skip checkpointing unless each block is told to keep it (lora.keep_checkpointing)."""
    from components.task.review_task import ReviewTask

    def trained(checkpointing: bool):
        cfg = load_config("smoke", [f"model.gradient_checkpointing={checkpointing}", "baselines.dpo.epochs=0.25"])
        rows = generate_synthetic(cfg).rows
        tokenizer = recipe.make_tokenizer(cfg, VOCABULARY)
        sft = recipe.sft_stage(cfg, tokenizer, rows[DEMONSTRATIONS])
        if stage == "sft":
            return sft.model
        prompts = sorted({r["prompt"] for r in rows[DEMONSTRATIONS]})
        labeller = recipe.comparison_labeller(cfg, ReviewTask(cfg).labeller("labeler"), rows[DEMONSTRATIONS])
        comparisons = recipe.comparisons_stage(cfg, tokenizer, sft.model, prompts, labeller).model
        return recipe.baseline_stage(cfg, "dpo", tokenizer, sft.model, comparisons).model

    plain, checkpointed = trained(False), trained(True)
    for name, parameter in plain.state_dict().items():
        assert torch.equal(parameter, checkpointed.state_dict()[name]), name


def test_a_batch_two_processes_cannot_share_is_refused_before_any_work(tmp_path):
    profiles = launcher_profiles().parents[1]
    two = ["distributed.accelerate_config=infra/accelerate/cpu-2proc.yaml"]
    launcher.refuse_unhonoured(load_config("smoke", two), profiles)  # the smoke batches split
    for setting, key in (
        ("sft.batch_size=1", "sft.batch_size"),
        ("baselines.dpo.gradient_accumulation_steps=32", "baselines.dpo.batch_size"),
        ("ppo.gradient_accumulation_steps=16", "ppo.gradient_accumulation_steps"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            launcher.refuse_unhonoured(load_config("smoke", [*two, setting]), profiles)
