"""Sampling is exactly softmax(logits / temperature), whatever a model directory's generation_config.json says."""

import torch
from transformers import GenerationConfig

from components.models.batching import encode_prompts
from components.models.builders import load_causal_lm
from components.models.generation import generate
from tests.model.conftest import TINY

# settings a downloaded model directory may carry; each would change what is sampled
OFF_POLICY = {
    "repetition_penalty": 5.0,
    "no_repeat_ngram_size": 1,
    "top_k": 3,
    "top_p": 0.5,
    "temperature": 0.3,
    "min_new_tokens": 8,
    "suppress_tokens": [5, 6, 7],
}


def test_a_model_directory_generation_config_cannot_change_sampling(tmp_path, tokenizer, tiny_sft):
    """The same weights saved with OFF_POLICY settings sample exactly what they sample with none (same seed),
    greedy and at temperature 1. Before the fix transformers filled the unset fields from the directory's
    generation_config.json: 63 of 64 sampled and 64 of 64 greedy responses differed (untrained weights)."""
    policy = tiny_sft[0]
    policy.save_pretrained(tmp_path / "model", safe_serialization=True)
    GenerationConfig(**OFF_POLICY, do_sample=True).save_pretrained(tmp_path / "model")
    loaded = load_causal_lm(tmp_path / "model")
    assert loaded.generation_config.repetition_penalty == 5.0  # the directory does ask for it

    ids, mask = encode_prompts(
        tokenizer,
        ["write a positive review of the lamp that mentions the light and the cable."] * 64,
        TINY.max_prompt_tokens,
    )
    for greedy in (False, True):
        outputs = []
        for model in (policy, loaded):
            torch.manual_seed(0)
            outputs.append(
                generate(
                    model,
                    ids,
                    mask,
                    TINY.max_response_tokens,
                    tokenizer.eos_token_id,
                    tokenizer.pad_token_id,
                    1.0,
                    greedy,
                )
            )
        assert torch.equal(outputs[0].batch.input_ids, outputs[1].batch.input_ids), f"greedy={greedy}"
        assert torch.equal(outputs[0].ended, outputs[1].ended)
    assert loaded.generation_config.repetition_penalty == 5.0  # and keeps it for whoever else reads it
