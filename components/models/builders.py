"""Policy, reward model and critic: built from a small GPT-2 config or loaded from a local HF directory.

The reward model and the critic are sequence-classification models with one output
(``AutoModelForSequenceClassification``, ``num_labels=1``): plain transformers loads them back.
Both start from the SFT policy's transformer (InstructGPT initialises the RM from the SFT model
and the value function from the RM).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from components.config import ModelConfig


class UnsafeModelError(ValueError):
    """A model directory that would need remote code or unpickling to load."""


def build_policy(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    if cfg.source == "local":
        return load_causal_lm(cfg.local_dir)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(policy_config(cfg, tokenizer))


def policy_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The policy's architecture: the local model's config, or a small GPT-2's from ``model``."""
    if cfg.source == "local":
        check_safe_model_dir(cfg.local_dir)
        return AutoConfig.from_pretrained(str(cfg.local_dir), trust_remote_code=False, local_files_only=True)
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.max_prompt_tokens + cfg.max_response_tokens,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function=cfg.activation,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def scalar_model_from(policy: PreTrainedModel) -> PreTrainedModel:
    """A one-output sequence classifier whose transformer is a copy of the policy's (head freshly initialised)."""
    settings = {k: v for k, v in policy.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = AutoConfig.for_model(**{**settings, "num_labels": 1})
    config.pad_token_id = policy.config.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    model.base_model.load_state_dict(policy.base_model.state_dict())
    return model


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy in eval mode whose parameters need no gradient: a reference or a fixed reward model."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def check_safe_model_dir(directory: str | Path) -> None:
    """Refuse what would need trust_remote_code or pickle: only safetensors weights and built-in architectures load."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise UnsafeModelError(f"{directory}: no config.json, not a Hugging Face model directory")
    config = json.loads((directory / "config.json").read_text())
    if "auto_map" in config:
        raise UnsafeModelError(
            f"{directory}: config.json has auto_map (custom code needing trust_remote_code); refused"
        )
    if not list(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        raise UnsafeModelError(
            f"{directory}: no .safetensors weights (found {pickled or 'none'}); pickle weights are refused"
        )


def load_causal_lm(directory: str | Path) -> PreTrainedModel:
    check_safe_model_dir(directory)
    return AutoModelForCausalLM.from_pretrained(
        str(directory), use_safetensors=True, trust_remote_code=False, local_files_only=True
    )


def load_scalar_model(directory: str | Path) -> PreTrainedModel:
    check_safe_model_dir(directory)
    return AutoModelForSequenceClassification.from_pretrained(
        str(directory), num_labels=1, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
