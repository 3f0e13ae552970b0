"""The reward model's math: loss and accuracies on hand-computed numbers, the held-out split,
the normalisation to mean 0 on SFT samples, and where the reward is read (the EOS position)."""

from __future__ import annotations

import math

import pytest
import torch

from components.config import ModelConfig, RewardConfig
from components.evaluation.report import gold_accuracy
from components.models.batching import encode_examples, sequence_scores
from components.models.builders import build_policy, load_scalar_model, scalar_model_from
from components.models.saving import save_model
from components.models.tokenizer import build_word_tokenizer
from components.task.lexicon import VOCABULARY
from components.training import reward
from components.training.reward import (
    group_comparisons,
    normalise_rewards,
    pair_rewards,
    pairwise_accuracy,
    reward_loss,
    score_samples,
    split_comparisons,
    train_reward_ensemble,
)

MODEL_CFG = ModelConfig(n_layer=1, n_embd=16, n_head=2, max_prompt_tokens=24, max_response_tokens=12)
PROMPT = "write a positive review of the phone that mentions the battery and the screen."
SAMPLES = [
    (PROMPT, "the battery is great."),
    (PROMPT, "the screen is very good and the battery is bad."),
    (PROMPT, "i like this phone."),
    (PROMPT, "the the the."),
    (
        PROMPT,
        "the screen is great . the battery is great . this phone is great . the screen",
    ),  # fills the limit: no EOS
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(VOCABULARY)


@pytest.fixture
def reward_model(tokenizer):
    """A tiny scalar model whose head is large enough that its mean on SAMPLES is far from 0."""
    model = scalar_model_from(build_policy(MODEL_CFG, tokenizer, seed=0))
    torch.manual_seed(1)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    return model.eval()


# --- loss and accuracy ------------------------------------------------------------------------


def test_loss_matches_hand_computed_values():
    # pairs: r(chosen) - r(rejected) = [2 - 0, 0 - 1] = [2, -1]
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928011; -log sigmoid(-1) = log(1 + e) = 1.313261687
    loss = reward_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((0.126928011 + 1.313261687) / 2, abs=1e-6)
    assert pairwise_accuracy(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])) == 0.5


def test_loss_is_log_2_when_chosen_and_rejected_score_the_same():
    rewards = torch.tensor([-3.0, 0.0, 0.7, 5.0])
    assert reward_loss(rewards, rewards.clone()).item() == pytest.approx(math.log(2), abs=1e-6)
    assert pairwise_accuracy(rewards, rewards.clone()) == 0.0  # a tie is not a correct ordering


def test_loss_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.tensor([0.5], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    reward_loss(chosen, rejected).backward()
    # d/dc -log sigmoid(c - r) = -(1 - sigmoid(0)) = -0.5 at c == r
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)


def test_gold_accuracy_skips_pairs_the_judge_ties():
    # pair 1: RM and gold both prefer chosen (agree); pair 2: gold tie (skipped);
    # pair 3: RM prefers chosen, gold prefers rejected (disagree) -> 1 of 2 decided pairs
    accuracy = gold_accuracy(
        torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]), [2.0, 1.0, 5.0], [1.0, 1.0, 6.0]
    )
    assert accuracy == 0.5
    # the gold judge may disagree with the labels: a pair labelled the "wrong" way round counts as
    # correct when the RM agrees with gold rather than with the label
    assert gold_accuracy([0.0], [1.0], [0.0], [2.0]) == 1.0
    assert math.isnan(gold_accuracy([1.0], [0.0], [1.0], [1.0]))


# --- held-out split ---------------------------------------------------------------------------


def test_split_holds_out_whole_groups_and_is_seeded():
    rows = [
        {"prompt": f"p{g}", "chosen": f"c{i}", "rejected": f"r{i}", "group": g} for g in range(50) for i in range(6)
    ]
    train, valid = split_comparisons(rows, 0.1, seed=3)
    assert len(valid) == 5 * 6 and len(train) + len(valid) == len(rows)  # 10% of 50 groups, 6 pairs each
    assert not {r["group"] for r in train} & {r["group"] for r in valid}
    assert split_comparisons(rows, 0.1, seed=3) == (train, valid)
    assert split_comparisons(rows, 0.1, seed=4)[1] != valid


def test_split_treats_rows_without_group_as_their_own_group():
    rows = [{"prompt": "p", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    train, valid = split_comparisons(rows, 0.25, seed=0)
    assert len(valid) == 10 and len(train) == 30


def test_groups_keep_their_pairs_together_and_ungrouped_rows_stand_alone():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "group": 7},
        {"prompt": "q", "chosen": "x", "rejected": "y"},
        {"prompt": "p", "chosen": "a", "rejected": "c", "group": 7},
        {"prompt": "q", "chosen": "x", "rejected": "y"},
    ]
    assert group_comparisons(rows) == [[rows[0], rows[2]], [rows[1]], [rows[3]]]


# --- one forward pass per distinct response -----------------------------------------------------


def test_a_group_s_pairs_score_each_distinct_response_once(reward_model, tokenizer, monkeypatch):
    a, b, c = (r for _, r in SAMPLES[:3])
    rows = [  # the 3 pairs of a ranked group of 3 (a > c > b): 3 responses, not 6
        {"prompt": PROMPT, "chosen": a, "rejected": b},
        {"prompt": PROMPT, "chosen": a, "rejected": c},
        {"prompt": PROMPT, "chosen": c, "rejected": b},
    ]
    widths = []

    def counting(tokenizer, prompts, responses, *limits):
        widths.append(len(responses))
        return encode_examples(tokenizer, prompts, responses, *limits)

    monkeypatch.setattr(reward, "encode_examples", counting)
    with torch.no_grad():
        chosen, rejected = pair_rewards(reward_model, tokenizer, rows, MODEL_CFG)
    assert widths == [3]
    monkeypatch.undo()
    alone = {r: score_samples(reward_model, tokenizer, [(PROMPT, r)], MODEL_CFG).item() for r in (a, b, c)}
    expected_chosen = torch.tensor([alone[a], alone[a], alone[c]])
    expected_rejected = torch.tensor([alone[b], alone[c], alone[b]])
    assert torch.allclose(chosen, expected_chosen, atol=1e-5) and torch.allclose(rejected, expected_rejected, atol=1e-5)


# --- normalisation ----------------------------------------------------------------------------


def test_normalisation_gives_mean_zero_and_unit_spread_on_reference_samples_and_survives_reload(
    reward_model, tokenizer, tmp_path
):
    before = score_samples(reward_model, tokenizer, SAMPLES, MODEL_CFG).double()
    assert abs(before.mean().item()) > 0.1 and abs(before.std().item() - 1) > 0.1  # the test means something
    offset, scale = normalise_rewards(reward_model, tokenizer, SAMPLES, MODEL_CFG)
    after = score_samples(reward_model, tokenizer, SAMPLES, MODEL_CFG).double()
    assert offset == pytest.approx(before.mean().item(), abs=1e-5) and scale == pytest.approx(
        before.std().item(), rel=1e-5
    )
    assert abs(after.mean().item()) < 1e-5 and after.std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(after, (before - offset) / scale, atol=1e-5)  # an affine map: every ordering is unchanged
    # GPT-2's head has no bias and its class rebuilds it without one: the shift must live in a kept parameter
    save_model(reward_model, tokenizer, tmp_path / "rm", card={})
    reloaded = score_samples(load_scalar_model(tmp_path / "rm").eval(), tokenizer, SAMPLES, MODEL_CFG).double()
    assert torch.allclose(reloaded, after, atol=1e-5)


def test_normalisation_uses_the_head_bias_when_there_is_one(reward_model, tokenizer):
    biased = torch.nn.Linear(MODEL_CFG.n_embd, 1, bias=True)
    with torch.no_grad():
        biased.weight.copy_(reward_model.score.weight)
        biased.bias.fill_(2.0)
    reward_model.score = biased
    ln_f_bias = reward_model.base_model.ln_f.bias.clone()
    offset, scale = normalise_rewards(reward_model, tokenizer, SAMPLES, MODEL_CFG)
    assert abs(score_samples(reward_model, tokenizer, SAMPLES, MODEL_CFG).mean().item()) < 1e-5
    assert biased.bias.item() == pytest.approx((2.0 - offset) / scale, abs=1e-5)
    assert torch.equal(reward_model.base_model.ln_f.bias, ln_f_bias)


def test_training_reports_offset_and_scale_and_returns_a_model_normalised_on_reference(tokenizer):
    policy = build_policy(MODEL_CFG, tokenizer, seed=0)
    rows = [{"prompt": PROMPT, "chosen": "the battery is great.", "rejected": "the the the."}] * 8
    cfg = RewardConfig(epochs=1.0, batch_size=4, lr=1e-2, warmup_steps=0, valid_fraction=0.25)
    model, metrics, history = train_reward_ensemble(
        policy, tokenizer, rows, cfg, MODEL_CFG, seed=0, reference_samples=SAMPLES
    )
    assert metrics["train_pairs"] == 6 and metrics["valid_pairs"] == 2 and len(history) == 2
    assert metrics["reward_offset"] != 0.0 and abs(metrics["reference_mean"]) < 1e-5
    assert metrics["reward_scale"] > 0 and metrics["reference_std"] == pytest.approx(1.0, abs=1e-5)
    assert abs(score_samples(model, tokenizer, SAMPLES, MODEL_CFG).mean().item()) < 1e-5
    # the policy is untouched: the RM trained a copy of its transformer
    assert torch.equal(policy.base_model.ln_f.bias, build_policy(MODEL_CFG, tokenizer, seed=0).base_model.ln_f.bias)


# --- where the reward is read -----------------------------------------------------------------


def test_reward_is_read_at_the_eos_position(reward_model, tokenizer):
    batch = encode_examples(
        tokenizer,
        [PROMPT, PROMPT],
        ["the battery is great.", "the screen is very good and the battery is bad."],
        24,
        12,
    )
    eos = int(batch.response_mask[0].sum()) - 1  # row 0 is the shorter: padding follows its EOS
    assert batch.response_ids[0, eos].item() == tokenizer.eos_token_id and eos + 1 < batch.response_ids.shape[1]
    base = sequence_scores(reward_model, batch)

    after_eos = batch.input_ids.clone()
    after_eos[0, batch.prompt_width + eos + 1] = tokenizer.convert_tokens_to_ids("bad")
    changed = sequence_scores(
        reward_model, type(batch)(after_eos, batch.attention_mask, batch.response_mask, batch.prompt_width)
    )
    assert torch.allclose(changed, base, atol=1e-6)

    before_eos = batch.input_ids.clone()
    before_eos[0, batch.prompt_width + eos - 2] = tokenizer.convert_tokens_to_ids("bad")  # "great" -> "bad"
    changed = sequence_scores(
        reward_model, type(batch)(before_eos, batch.attention_mask, batch.response_mask, batch.prompt_width)
    )
    assert abs(changed[0].item() - base[0].item()) > 1e-3 and changed[1].item() == pytest.approx(
        base[1].item(), abs=1e-6
    )


def test_reward_does_not_depend_on_the_padding_other_rows_force(reward_model, tokenizer):
    # scored alone vs next to a longer response (more right padding) and a longer prompt (more left padding)
    alone = score_samples(reward_model, tokenizer, SAMPLES[:1], MODEL_CFG)
    longer_prompt = "write a negative review of the laptop that mentions the keyboard and the battery life."
    together = score_samples(
        reward_model, tokenizer, [SAMPLES[0], SAMPLES[1], (longer_prompt, "i like it.")], MODEL_CFG
    )
    assert together[0].item() == pytest.approx(alone[0].item(), abs=1e-5)
