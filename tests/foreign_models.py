"""Tiny models of foreign architectures, built from config and saved the way the Hub ships them, for the tests that
run the flow on a user's own model: a Llama with a byte-level BPE tokenizer and no pad token, and a GPT-NeoX whose
pad token is its EOS. Nothing is downloaded: each tokenizer is trained here on the texts it will read."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 320  # the 256 bytes, the special tokens and a few dozen merges
WIDTH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
MAX_POSITIONS = 128


def byte_level_bpe(texts: Iterable[str], special: list[str]) -> Tokenizer:
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(list(texts), trainer)
    return core


def save_llama(directory: Path, texts: Iterable[str]) -> Path:
    """A Llama-3-style model: byte-level BPE, <s> and </s>, no pad token at all."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(texts, ["<s>", "</s>"]), bos_token="<s>", eos_token="</s>"
    )
    assert tokenizer.pad_token is None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        **WIDTH,
    )
    return _save(directory, LlamaForCausalLM(config), tokenizer)


def save_gpt_neox(directory: Path, texts: Iterable[str]) -> Path:
    """A Pythia-style GPT-NeoX: byte-level BPE whose one special token is BOS, EOS and pad at once."""
    end = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(texts, [end]), bos_token=end, eos_token=end, pad_token=end
    )
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        **WIDTH,
    )
    return _save(directory, GPTNeoXForCausalLM(config), tokenizer)


def save_judge(directory: Path, model_dir: Path) -> Path:
    """A separate one-output judge model of ``model_dir``'s architecture and tokenizer (its own random weights)."""
    judge = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1)
    judge.config.pad_token_id = judge.config.eos_token_id
    judge.save_pretrained(directory, safe_serialization=True)
    PreTrainedTokenizerFast.from_pretrained(str(model_dir)).save_pretrained(directory)
    return directory


def save_wider(directory: Path, model_dir: Path) -> Path:
    """A model of ``model_dir``'s architecture and tokenizer, twice as wide (its own random weights): a larger model
    that reads the same tokens, as a user's reward model beside their policy."""
    config = AutoConfig.from_pretrained(str(model_dir))
    config.hidden_size, config.intermediate_size = 2 * config.hidden_size, 2 * config.intermediate_size
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    return _save(directory, AutoModelForCausalLM.from_config(config), tokenizer)


def _save(directory: Path, model, tokenizer: PreTrainedTokenizerFast) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
