"""Learning behaviour of the reward model, and comparison collection from a policy.

Everything runs on a tiny policy trained here (2 layers, 64 wide, 2 epochs of SFT on 3,000
demonstrations), so the file needs no artefact and runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from components.adapters.data_stages import DataValidationFailed, save_comparisons
from components.config import ComparisonsConfig, ModelConfig, RewardConfig, SFTConfig, load_config
from components.data.files import PREFERENCES, file_name, read_jsonl
from components.data.ranking import SOURCE, rank_sampled, sampled_labeller
from components.evaluation.report import gold_accuracy
from components.models.builders import build_policy
from components.models.scoring import score_comparisons
from components.models.tokenizer import build_word_tokenizer
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score
from components.task.labeler import SimulatedLabeler
from components.task.lexicon import VOCABULARY
from components.training.comparisons import collect_sft_comparisons, draw_prompts, sample_reference
from components.training.reward import split_comparisons, train_reward_ensemble, train_reward_model
from components.training.sft import train_sft

SEED = 0
MODEL_CFG = ModelConfig(n_layer=2, n_embd=64, n_head=4, max_prompt_tokens=24, max_response_tokens=40)
SFT_CFG = SFTConfig(epochs=2.0, batch_size=32, lr=3e-3, warmup_steps=10)
REWARD_CFG = RewardConfig(epochs=1.5, batch_size=32, lr=1e-3, warmup_steps=10, valid_fraction=0.1)
K = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These matmuls are too small to gain from a second thread, and on a busy machine OpenMP threads spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def config():
    return load_config(
        "smoke", overrides={"data": {"synthetic": {"n_demonstrations": 3000, "n_comparison_prompts": 6000}}}
    )


@pytest.fixture(scope="module")
def dataset(config):
    return generate_synthetic(config).rows


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(VOCABULARY)


@pytest.fixture(scope="module")
def sft_policy(dataset, tokenizer):
    policy = build_policy(MODEL_CFG, tokenizer, SEED)
    train_sft(policy, tokenizer, dataset["demonstrations"], SFT_CFG, MODEL_CFG, SEED)
    return policy.eval()


def gold_scores(rows: list[dict]) -> tuple[list[float], list[float]]:
    return (
        [gold_score(r["prompt"], r["chosen"], r.get("chosen_ended", True)) for r in rows],
        [gold_score(r["prompt"], r["rejected"], r.get("rejected_ended", True)) for r in rows],
    )


@pytest.mark.slow  # ~30 s: trains a reward model on 5,400 pairs
def test_reward_model_orders_held_out_pairs_like_the_gold_judge(sft_policy, tokenizer, dataset):
    comparisons = dataset["preferences"]
    prompts = draw_prompts([r["prompt"] for r in dataset["demonstrations"]], 64, SEED + 1)
    reference = sample_reference(sft_policy, tokenizer, prompts, MODEL_CFG, temperature=1.0, batch_size=64, seed=SEED)
    assert [p for p, _ in reference] == prompts
    model, metrics, history = train_reward_ensemble(
        sft_policy, tokenizer, comparisons, REWARD_CFG, MODEL_CFG, SEED, reference_samples=reference
    )
    _, valid = split_comparisons(comparisons, REWARD_CFG.valid_fraction, SEED)
    assert metrics["valid_pairs"] == len(valid) == 600 and metrics["train_pairs"] == 5400
    chosen_rewards, rejected_rewards = score_comparisons(model, tokenizer, valid, MODEL_CFG)
    # chance is 0.5. Measured with this seed: 0.73 against gold, 0.68 against the labels (the
    # labels themselves agree with gold on 0.86 of these pairs, so the RM sees through some noise).
    # With 600 pairs one standard error is 0.02: the thresholds leave 4 of them for other platforms.
    assert gold_accuracy(chosen_rewards, rejected_rewards, *gold_scores(valid)) > 0.65
    assert metrics["valid_accuracy"] > 0.6
    assert metrics["valid_loss"] < metrics["first_loss"] - 0.02 and history[-1]["step"] + 1 == metrics["steps"]
    # normalised: the returned model scores the SFT policy's own samples with mean 0 and spread 1
    assert abs(metrics["reference_mean"]) < 1e-5 and metrics["reward_offset"] != 0.0
    assert metrics["reference_std"] == pytest.approx(1.0, abs=1e-4)


def test_collection_gives_every_pair_of_k_samples_and_passes_the_data_gate(
    sft_policy, tokenizer, config, dataset, tmp_path: Path
):
    train_prompts = [r["prompt"] for r in dataset["demonstrations"]]
    eval_prompts = frozenset(r["prompt"] for r in dataset["eval_prompts"])
    prompts = draw_prompts(train_prompts, 40, SEED)
    prompt_ids = {r["prompt"]: r["prompt_id"] for r in dataset["demonstrations"]}
    cfg = ComparisonsConfig(n_prompts=40, responses_per_prompt=K, temperature=1.0, batch_size=16)
    ranker = SimulatedLabeler(config.data.synthetic.labeler_temperature, random.Random(SEED)).rank
    rows = collect_sft_comparisons(
        sft_policy,
        tokenizer,
        prompts,
        cfg,
        MODEL_CFG,
        sampled_labeller(ranker, config.validation.min_response_words, prompt_ids),
        SEED,
    )

    by_group: dict[int, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    for group, pairs in by_group.items():
        distinct = {r["chosen"] for r in pairs} | {r["rejected"] for r in pairs}
        assert len(pairs) == len(distinct) * (len(distinct) - 1) // 2 and {r["prompt"] for r in pairs} == {
            prompts[group]
        }
    # K=4 samples give 6 pairs; identical or too-short samples may remove a few, not most
    assert sum(len(p) == K * (K - 1) // 2 for p in by_group.values()) >= 0.9 * len(prompts)
    assert all(r["chosen"] != r["rejected"] and r["source"] == SOURCE for r in rows)
    # metadata only: no gold score travels with the training rows
    assert {key for r in rows for key in r} == {
        "prompt",
        "chosen",
        "rejected",
        "chosen_position",
        "prompt_id",
        "source",
        "group",
        "chosen_ended",
        "rejected_ended",
    }

    target = tmp_path / "comparisons"
    report = save_comparisons(rows, target, config.validation, VOCABULARY, tmp_path / "reports", eval_prompts)
    assert report.success, report.summary()
    assert report.rows == {str(target / file_name(PREFERENCES)): len(rows)}
    assert [r.data for r in read_jsonl(target / file_name(PREFERENCES), PREFERENCES)] == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparisons", "reports"]  # no staging copy left


def test_a_collection_that_fails_the_gate_leaves_nothing_behind(config, dataset, tmp_path: Path):
    leaked = sorted(r["prompt"] for r in dataset["eval_prompts"])[0]
    rows = [
        {
            "prompt": leaked,
            "chosen": f"this phone is great {'and i like it ' * (i % 3)}.",
            "rejected": "the the the.",
            "chosen_position": i % 2,
        }
        for i in range(config.validation.preferences_rows.min + 10)
    ]
    with pytest.raises(DataValidationFailed) as failed:
        save_comparisons(
            rows, tmp_path / "comparisons", config.validation, VOCABULARY, tmp_path / "reports", frozenset([leaked])
        )
    rules = {f.rule for f in failed.value.report.failures}
    assert "no eval prompt among the training prompts" in rules
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_ranker_is_told_which_samples_never_ended_and_rows_record_it():
    prompt = "write a positive review of the phone that mentions the battery and the screen."
    groups = [
        [
            ("the battery is great.", True),
            ("the screen is great and the battery", False),
            ("ok", True),
            ("the battery is great.", True),
        ],
        [("the screen is great.", True), ("the battery is great.", True)],
    ]
    seen = []

    def ranker(p: str, responses: list[str], ended: list[bool]) -> list[int]:
        seen.append(dict(zip(responses, ended)))
        return list(range(len(responses)))  # shown order is the ranking

    rows = rank_sampled([prompt, prompt], groups, ranker, min_words=3)
    # group 0: "ok" is too short, the duplicate collapses -> 2 responses, 1 pair; group 1: 1 pair
    assert seen == [
        {"the battery is great.": True, "the screen is great and the battery": False},
        {"the screen is great.": True, "the battery is great.": True},
    ]
    assert [(r["chosen"], r["chosen_ended"], r["rejected"], r["rejected_ended"], r["group"]) for r in rows] == [
        ("the battery is great.", True, "the screen is great and the battery", False, 0),
        ("the screen is great.", True, "the battery is great.", True, 1),
    ]


def test_simulated_labeler_ranks_a_sample_that_never_ended_below_the_same_text_that_did():
    prompt = "write a positive review of the phone that mentions the battery and the screen."
    text = "the battery is great and the screen is great. i like this phone."
    # the gold judge takes 1.5 points off a response that never ended; at temperature 0.01 that is
    # 150 logits, against Gumbel noise of scale 1
    rank = SimulatedLabeler(0.01, random.Random(0)).rank
    assert gold_score(prompt, text, ended=False) == pytest.approx(gold_score(prompt, text) - 1.5)
    assert all(rank(prompt, [text, text], [False, True]) == [1, 0] for _ in range(20))


def test_an_ensemble_has_independent_normalised_members_and_round_trips(sft_policy, tokenizer, dataset, tmp_path):
    """Two members from independent heads and data orders: different scores, each with mean 0 and std 1 on the
    SFT samples, one held-out split; saved and loaded back as an ensemble that scores the same."""
    from components.models.ensemble import RewardEnsemble, load_reward_model, members_of
    from components.models.saving import save_model
    from components.models.scoring import score_samples, score_samples_by_member

    comparisons = dataset[PREFERENCES][:1200]
    reference = sample_reference(
        sft_policy, tokenizer, [r["prompt"] for r in comparisons[:128]], MODEL_CFG, 1.0, 64, SEED
    )
    cfg = REWARD_CFG.model_copy(update={"epochs": 0.5, "ensemble_size": 2})
    ensemble, metrics, history = train_reward_ensemble(
        sft_policy, tokenizer, comparisons, cfg, MODEL_CFG, SEED, reference_samples=reference
    )
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble) == 2 and metrics["ensemble_size"] == 2
    by_member = score_samples_by_member(ensemble, tokenizer, reference, MODEL_CFG).double()
    assert by_member.mean(0).abs().max() < 1e-4 and (by_member.std(0) - 1).abs().max() < 1e-4
    assert (by_member[:, 0] - by_member[:, 1]).abs().mean() > 0.05  # the members differ
    assert 0 < metrics["member_agreement"] < 1 and {"member0_valid_accuracy", "member1_valid_accuracy"} <= set(metrics)
    steps = [h["step"] for h in history]
    assert steps == sorted(set(steps)) and {h["member"] for h in history} == {
        0,
        1,
    }  # one step axis, member after member
    save_model(ensemble, tokenizer, tmp_path / "rm", card={})
    assert sorted(p.name for p in (tmp_path / "rm").iterdir() if p.is_dir()) == ["member-0", "member-1"]
    loaded = load_reward_model(tmp_path / "rm")
    assert len(members_of(loaded)) == 2
    assert torch.allclose(score_samples(loaded, tokenizer, reference, MODEL_CFG), by_member.mean(-1).float(), atol=1e-5)


def test_the_epoch_kept_is_the_one_with_the_lowest_held_out_loss_and_its_weights_are_that_epochs(
    sft_policy, tokenizer, dataset
):
    """Known answer: under a constant rate (after warm-up) the first epoch of a 3-epoch run is a 1-epoch run
    (same data order), and its last epoch is the 3-epoch run without selection. Their held-out losses, computed
    by those separate runs, must be the losses recorded for epochs 1 and 3; a snapshot taken a step early or late
    would fail. The model returned is the recorded argmin's."""
    comparisons = dataset["preferences"][:1200]
    cfg = REWARD_CFG.model_copy(update={"epochs": 3.0, "lr_schedule": "constant", "lr": 3e-3})
    _, selected, _ = train_reward_model(sft_policy, tokenizer, comparisons, cfg, MODEL_CFG, SEED)
    losses = [selected[f"epoch{k}_valid_loss"] for k in (1, 2, 3)]
    # exact: the same weights scored by the same ops on the same machine (float error does not enter)
    assert selected["selected_epoch"] == 1 + losses.index(min(losses))
    assert selected["valid_loss"] == min(losses)

    for epochs, k in ((1.0, 1), (3.0, 3)):
        plain = cfg.model_copy(update={"epochs": epochs, "select_epoch": False})
        _, metrics, _ = train_reward_model(sft_policy, tokenizer, comparisons, plain, MODEL_CFG, SEED)
        assert "selected_epoch" not in metrics
        assert metrics["valid_loss"] == losses[k - 1], k  # exact, as above: the same ops on the same weights
