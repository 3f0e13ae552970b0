"""The tokenizer: word-level for the embedded task, or the one shipped with a local HF model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def build_word_tokenizer(vocabulary: frozenset[str]) -> PreTrainedTokenizerFast:
    """One id per word or punctuation mark of the embedded task; lower-cases its input."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *sorted(vocabulary)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # "day." -> "day", "."
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def words_of(texts: Iterable[str]) -> frozenset[str]:
    """Every word and punctuation mark of ``texts`` as ``build_word_tokenizer`` splits them (lower-cased)."""
    split = pre_tokenizers.Whitespace()
    return frozenset(piece for text in texts for piece, _ in split.pre_tokenize_str(text.lower()))


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model; gets a pad token (its EOS) if it has none. Never runs remote code."""
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
