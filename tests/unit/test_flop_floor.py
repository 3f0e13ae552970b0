"""The FLOP floor benchmark's counter (benchmarks/flop_floor.py) on a tiny GPT-2, against counts made by hand
from the config: N from the shapes of GPT-2's weights, tokens from the masks written out below."""

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from benchmarks.flop_floor import FlopCounter, floor_rows, matmul_parameters

LAYERS, WIDTH, VOCAB = 2, 16, 50
# per block: attention c_attn (d x 3d) and c_proj (d x d), MLP c_fc (d x 4d) and c_proj (4d x d): 12 d^2
BODY = LAYERS * 12 * WIDTH**2  # 6144
LM_HEAD = VOCAB * WIDTH  # 800; tied to the token embedding, but a matmul all the same
SCORE_HEAD = WIDTH  # one output, no bias

# two left-padded rows of width 6: 3 + 4 = 7 real tokens of 12 positions
IDS = torch.tensor([[0, 0, 0, 5, 6, 7], [0, 0, 8, 9, 10, 11]])
MASK = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
REAL = 7


def config(**extra) -> GPT2Config:
    return GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        **extra,
    )


def scalar_model() -> GPT2ForSequenceClassification:
    """A one-output sequence classifier, as the project's reward model and critic are."""
    torch.manual_seed(0)
    return GPT2ForSequenceClassification(config(num_labels=1))


@pytest.fixture
def policy() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(config())


def attention(context: int) -> int:
    """Per token: QK^T and attention·V over ``context`` positions in every layer, 2·context·d each."""
    return 4 * LAYERS * context * WIDTH


def test_n_is_every_block_weight_and_the_head_not_the_embeddings(policy):
    assert matmul_parameters(policy) == BODY + LM_HEAD == 6944
    assert matmul_parameters(scalar_model()) == BODY + SCORE_HEAD


def test_a_forward_pass_without_grad_counts_only_the_real_tokens(policy):
    with torch.no_grad(), FlopCounter() as counter:
        policy(input_ids=IDS, attention_mask=MASK)
    assert (counter.forward_tokens, counter.trained_tokens, counter.model_calls) == (REAL, 0, 1)
    # (2 x 6944 + 4 x 2 x 6 x 16) x 7: one token more or less is 14,656 FLOPs off
    assert counter.flops == (2 * (BODY + LM_HEAD) + attention(6)) * REAL == 102_592


def test_a_forward_pass_with_grad_counts_as_trained_forward_and_backward(policy):
    with FlopCounter() as counter:
        policy(input_ids=IDS, attention_mask=MASK).logits.sum().backward()
    assert (counter.trained_tokens, counter.forward_tokens) == (REAL, 0)
    assert counter.flops == 3 * 102_592  # 6·N per token, attention x3


def test_a_frozen_model_under_grad_is_forward_only(policy):
    policy.requires_grad_(False)
    with FlopCounter() as counter:
        policy(input_ids=IDS, attention_mask=MASK)
    assert (counter.trained_tokens, counter.forward_tokens) == (0, REAL)


def test_without_a_mask_every_position_counts(policy):
    with torch.no_grad(), FlopCounter() as counter:
        policy(input_ids=IDS)
    assert counter.forward_tokens == 12


def test_generation_with_a_kv_cache_counts_each_new_token_once(policy):
    # the prefill reads both prompts (7 real tokens, context 6), then each of 3 more steps feeds the 2 rows one
    # sampled token each against a context of 7, 8, 9; the 4th sampled token is never fed back
    generation = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.inference_mode(), FlopCounter() as counter:
        policy.generate(input_ids=IDS, attention_mask=MASK, generation_config=generation)
    assert (counter.forward_tokens, counter.trained_tokens, counter.model_calls) == (REAL + 2 * 3, 0, 4)
    # generation asks for the last position's logits only: the prefill's LM head runs on 2 rows, not 7 tokens
    prefill = (2 * BODY + attention(6)) * REAL + 2 * LM_HEAD * 2
    steps = sum((2 * (BODY + LM_HEAD) + attention(context)) * 2 for context in (7, 8, 9))
    assert counter.flops == prefill + steps


def test_generation_without_padding_takes_the_context_from_the_cache(policy):
    # a mask of all ones is dropped by generate: 2 rows of 5 real tokens, then 2 x 3 fed tokens at contexts 6, 7, 8
    generation = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch.inference_mode(), FlopCounter() as counter:
        policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=generation)
    assert counter.forward_tokens == 10 + 2 * 3
    prefill = (2 * BODY + attention(5)) * 10 + 2 * LM_HEAD * 2
    steps = sum((2 * (BODY + LM_HEAD) + attention(context)) * 2 for context in (6, 7, 8))
    assert counter.flops == prefill + steps


def test_a_scalar_head_read_on_the_base_model_counts_the_body_once_and_the_head_by_its_rows():
    # as components.models.batching.token_scores reads a reward model: base_model, then the head on the response
    model = scalar_model()
    with torch.no_grad(), FlopCounter() as counter:
        hidden = model.base_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        model.score(hidden[:, 4:])  # 2 rows x 2 response positions
    assert (counter.forward_tokens, counter.model_calls) == (REAL, 1)
    assert counter.flops == (2 * BODY + attention(6)) * REAL + 2 * SCORE_HEAD * 4


def test_a_call_that_raises_leaves_the_counter_counting_the_next_one(policy):
    with torch.no_grad(), FlopCounter() as counter:
        with pytest.raises(IndexError):
            policy(input_ids=IDS + VOCAB, attention_mask=MASK)  # token ids past the embedding
        policy(input_ids=IDS, attention_mask=MASK)
    assert (counter.forward_tokens, counter.model_calls) == (REAL, 1)


def test_nothing_is_counted_once_the_counter_is_closed(policy):
    with torch.no_grad(), FlopCounter() as counter:
        policy(input_ids=IDS, attention_mask=MASK)
    with torch.no_grad():
        policy(input_ids=IDS, attention_mask=MASK)
    assert counter.forward_tokens == REAL


def test_floor_is_flops_over_throughput_and_ratio_is_seconds_over_floor():
    stages = {"sft": {"gflop": 30.0, "seconds": 12.0, "trained_tokens": 1, "forward_tokens": 0, "model_calls": 1}}
    throughput = {"fp32": {64 * 10: 50.0}, "bf16": {64 * 10: 150.0}}
    (row,) = floor_rows(stages, {"sft": 64}, 10, throughput)
    assert row["matmul_rows"] == 640
    assert row["floor_seconds"] == pytest.approx(0.6) and row["ratio"] == pytest.approx(20.0)
    assert row["floor_seconds_bf16"] == pytest.approx(0.2) and row["ratio_bf16"] == pytest.approx(60.0)
