"""Low-rank adapters (LoRA, Hu et al. 2021) through PEFT: ``model.peft`` trains, in every stage that fine-tunes an
existing model, only a rank-r update W + (alpha / r) B A of the target layers (and a new scalar head in full).

The adapters are injected into the model itself (``peft.inject_adapter_in_model``): it stays the transformers class
it was, so every reader of its parts (``base_model``, ``score``) works unchanged. B starts at 0, so the adapted model
computes exactly what the base computes until the first step. A stage hands on a plain model with the update merged
into the weights (``merged``): a registered model loads with plain transformers, and the next stage starts from it.
"""

from __future__ import annotations

import copy

import torch

from components.config import ModelConfig, PeftConfig

SCALAR_HEADS = ("score",)  # a reward model's or critic's new head: trained in full beside the adapters


def for_training(
    model: torch.nn.Module, model_cfg: ModelConfig, heads: tuple[str, ...] = (), adapters: bool = True
) -> torch.nn.Module:
    """The model a stage trains, from ``model`` (in place): adapters when ``model.peft`` asks and ``adapters`` allows
    (a model trained from scratch has nothing to adapt), the new ``heads`` trained in full; gradient checkpointing
    when ``model.gradient_checkpointing`` asks."""
    if adapters:
        model = adapted(model, model_cfg.peft, heads)
    if model_cfg.gradient_checkpointing:
        kwargs = {
            "use_reentrant": False
        }  # adapters leave the inputs without gradient: the reentrant form would drop them
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def keep_checkpointing(model: torch.nn.Module) -> None:
    """transformers checkpoints a block only while the block is in training mode; a stage that trains in eval mode
    (dropout off: DPO, PPO) sets each checkpointing block's own flag, its dropout layers staying as they are."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.training = True


def adapted(model: torch.nn.Module, cfg: PeftConfig | None, heads: tuple[str, ...] = ()) -> torch.nn.Module:
    """``model`` with adapters on ``cfg.target_modules`` (in place), only the adapters and the ``heads`` trainable;
    unchanged without ``cfg``."""
    if cfg is None:
        return model
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        fan_in_fan_out=is_gpt2_conv1d(model, cfg.target_modules),
        bias="none",
    )
    model = inject_adapter_in_model(config, model)
    for head in heads:
        getattr(model, head).requires_grad_(True)
    return model


def is_gpt2_conv1d(model: torch.nn.Module, targets: list[str]) -> bool:
    """GPT-2's projections are Conv1D (weight stored as (in, out)): PEFT must be told so."""
    from transformers.pytorch_utils import Conv1D

    return any(
        isinstance(module, Conv1D) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets
    )


def adapter_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def has_adapters(model: torch.nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters, and those the stage trains (what its optimiser holds state for)."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module, values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state of the plain model the adapted one computes: each adapted weight W + (alpha / r) B A under its plain
    name, the adapters dropped (a copy of the state of a model without adapters). ``values`` replace the model's own
    tensors by name (e.g. the fp32 master weights an engine keeps beside the 16-bit ones it computes with)."""
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    state.update(values or {})
    if not has_adapters(model):
        return state
    for name, layer in adapter_layers(model):
        adapter = layer.active_adapters[0]
        a, b = state.pop(f"{name}.lora_A.{adapter}.weight"), state.pop(f"{name}.lora_B.{adapter}.weight")
        delta = (b.float() @ a.float()) * layer.scaling[adapter]  # (out, in)
        if layer.fan_in_fan_out:  # GPT-2's Conv1D keeps its weight as (in, out)
            delta = delta.T
        base = f"{name}.base_layer.weight"
        state[base] = (state[base].float() + delta).to(state[base].dtype)
    return {name.replace(".base_layer.", "."): tensor for name, tensor in state.items() if ".lora_" not in name}


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain model (the same class, no adapters) whose weights hold the adapters' update; ``model`` itself when it
    has none."""
    if not has_adapters(model):
        return model
    if not hasattr(model, "config"):  # a wrapper of one model (TokenScores, TokenValues)
        ((_, inner),) = model.named_children()
        return type(model)(merged(inner))
    with torch.random.fork_rng(devices=[]):  # a fresh model's initialisation draws nothing from the caller's stream
        plain = type(model)(model.config)
    plain.load_state_dict(merged_state_dict(model))
    return plain.to(next(model.parameters()).device).train(model.training)


class AdaptersDisabled(torch.nn.Module):
    """The base model under an adapted one: its forward pass with every adapter off. PPO's and DPO's reference when
    the policy is adapted, so one copy of the base weights serves both. The adapted model is not a submodule: freezing
    or moving the reference never touches the policy."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.adapted = [model]

    def forward(self, *args, **kwargs):
        model = self.adapted[0]
        layers = [layer for _, layer in adapter_layers(model)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            with torch.no_grad():
                return model(*args, **kwargs)
        finally:
            for layer in layers:
                layer.enable_adapters(True)


def reference_for(policy: torch.nn.Module, base: torch.nn.Module) -> torch.nn.Module:
    """The frozen reference of a policy trained from ``base``: the policy with its adapters off when it is adapted
    (the same weights, no second copy), else a frozen copy of ``base``."""
    if has_adapters(policy):
        return AdaptersDisabled(policy)
    reference = copy.deepcopy(base)
    reference.eval()
    reference.requires_grad_(False)
    return reference
