"""Prompts and responses as tensors: padding worked by hand, and each distinct text tokenized once."""

import gc
import weakref

import torch

from components.models import batching
from components.models.batching import encode_examples, encode_prompts, encode_responses, token_ids
from components.models.tokenizer import build_word_tokenizer

WORDS = frozenset({"a", "b", "c", "go", "."})  # ids: <pad> 0, <eos> 1, <unk> 2, then sorted: . 3, a 4, b 5, c 6, go 7


class CountingTokenizer:
    """The word tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self):
        self.inner = build_word_tokenizer(WORDS)
        self.pad_token_id, self.eos_token_id = self.inner.pad_token_id, self.inner.eos_token_id
        self.calls: list[str] = []

    def __call__(self, text, add_special_tokens):
        self.calls.append(text)
        return self.inner(text, add_special_tokens=add_special_tokens)


def test_prompts_are_left_padded_and_cut_from_the_front():
    ids, mask = encode_prompts(build_word_tokenizer(WORDS), ["go", "a b go .", "c c c c c go"], 4)
    assert ids.tolist() == [[0, 0, 0, 7], [4, 5, 7, 3], [6, 6, 6, 7]]  # the last 4 of 6 tokens: the request is kept
    assert mask.tolist() == [[0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_responses_are_right_padded_and_end_in_eos_unless_full():
    ids, mask = encode_responses(build_word_tokenizer(WORDS), ["a", "b c", "a b c go"], 3)
    assert ids.tolist() == [[4, 1, 0], [5, 6, 1], [4, 5, 6]]  # the full response loses its EOS, not a word
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]


def test_an_example_batch_is_prompt_then_response_with_the_prompt_width():
    batch = encode_examples(build_word_tokenizer(WORDS), ["go", "a go"], ["b", ""], 4, 3)
    assert batch.input_ids.tolist() == [[0, 7, 5, 1], [4, 7, 1, 0]]
    assert batch.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.prompt_width == 2
    assert batch.response_ids.tolist() == [[5, 1], [1, 0]]
    assert batch.position_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, 2]]


def test_each_distinct_text_is_tokenized_once_per_tokenizer():
    tokenizer = CountingTokenizer()
    first = encode_prompts(tokenizer, ["a go", "b go", "a go"], 8)
    second = encode_prompts(tokenizer, ["b go", "a go", "c go"], 8)  # a second epoch meets known texts
    assert sorted(tokenizer.calls) == ["a go", "b go", "c go"]
    assert first[0].tolist() == [[4, 7], [5, 7], [4, 7]] and second[0].tolist() == [[5, 7], [4, 7], [6, 7]]
    assert token_ids(tokenizer, ["c go"]) == [[6, 7]] and len(tokenizer.calls) == 3

    other = CountingTokenizer()  # another tokenizer may split the same text differently: it is asked itself
    encode_prompts(other, ["a go"], 8)
    assert other.calls == ["a go"]

    # forgotten with their tokenizers: the cache holds them weakly, so nothing keeps them alive once the test lets go
    # (read per tokenizer: the cache's size also moves when the collector frees other tests' tokenizers, under load)
    assert tokenizer in batching._known_ids and other in batching._known_ids
    refs = [weakref.ref(tokenizer), weakref.ref(other)]
    del tokenizer, other
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
