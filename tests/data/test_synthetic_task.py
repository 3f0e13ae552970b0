"""The embedded task: prompts, demonstrator spread, labeler noise, split and determinism."""

import random
import statistics

import pytest

from components.config import load_config
from components.data import files
from components.data.dataset import write_dataset
from components.data.ranking import ranked_pairs
from components.data.text import words
from components.io import sha256_file
from components.task.demonstrator import DemonstratorStyle, draw_carelessness, write_demonstration
from components.task.generator import generate_synthetic
from components.task.gold_judge import gold_score, judge
from components.task.labeler import SimulatedLabeler, label_agreement
from components.task.lexicon import VOCABULARY
from components.task.prompts import all_prompts, parse_prompt


def test_prompts_round_trip_through_their_text():
    prompts = all_prompts()
    assert len(prompts) == len(set(p.text for p in prompts)) == 24 * 2 * 28  # products x sentiments x aspect pairs
    assert all(parse_prompt(p.text) == p for p in prompts)


def test_vocabulary_is_small_and_covers_everything_the_demonstrator_writes():
    rng = random.Random(0)
    assert 150 <= len(VOCABULARY) <= 500
    for prompt in all_prompts()[:100]:
        text = write_demonstration(prompt, draw_carelessness(rng, 1.0, 1.0), rng)
        assert set(words(text)) <= VOCABULARY
        assert set(words(prompt.text)) <= VOCABULARY


def test_careful_demonstrations_score_higher_than_careless_ones():
    rng = random.Random(1)
    prompts = all_prompts()
    careful = [gold_score(p, write_demonstration(p, 0.0, rng)) for p in prompts]
    careless = [gold_score(p, write_demonstration(p, 1.0, rng)) for p in prompts]
    # margin: careless demonstrations lose at least 1.5 gold points on average (max score 5.5)
    assert statistics.fmean(careful) - statistics.fmean(careless) > 1.5


def test_demonstrations_have_a_wide_quality_spread_and_plausible_length():
    rng = random.Random(2)
    prompts = all_prompts()
    judged = []
    for _ in range(2000):
        p = rng.choice(prompts)
        judged.append(judge(p, write_demonstration(p, draw_carelessness(rng, 1.0, 1.5), rng)))
    scores = [j.score for j in judged]
    assert statistics.pstdev(scores) > 1.0
    assert sum(s >= 4.0 for s in scores) / len(scores) > 0.2  # plenty of good ones
    assert sum(s <= 2.0 for s in scores) / len(scores) > 0.2  # and plenty of bad ones
    assert 12 <= statistics.fmean(j.n_words for j in judged) <= 25


@pytest.mark.parametrize("temperature", [0.3, 0.6, 1.0])
def test_label_accuracy_matches_what_bradley_terry_predicts(temperature):
    rng = random.Random(3)
    prompts = [p.text for p in all_prompts()]

    def sample(text):
        p = parse_prompt(text)
        return [(write_demonstration(p, draw_carelessness(rng, 1.0, 1.5), rng), True) for _ in range(2)]

    labeler = SimulatedLabeler(temperature, random.Random(4))
    drawn = [rng.choice(prompts) for _ in range(3000)]
    pairs = [pair for text in drawn for pair in pairs_of(text, sample(text), labeler)]
    agreement = label_agreement(pairs, temperature)
    # margin: 3000 pairs give a binomial standard error under 0.01; allow 0.03
    assert agreement.accuracy == pytest.approx(agreement.expected_accuracy, abs=0.03)
    assert 0.5 < agreement.accuracy < 1.0


def test_lower_temperature_labels_agree_more_with_gold():
    rng = random.Random(5)
    prompts = [p.text for p in all_prompts()]
    fixed = {
        t: [(write_demonstration(parse_prompt(t), draw_carelessness(rng, 1, 1.5), rng), True) for _ in range(2)]
        for t in prompts
    }
    accuracy = {}
    for temperature in (0.2, 2.0):
        labeler = SimulatedLabeler(temperature, random.Random(6))
        pairs = [pair for text in prompts * 5 for pair in pairs_of(text, fixed[text], labeler)]
        accuracy[temperature] = label_agreement(pairs, temperature).accuracy
    assert accuracy[0.2] > accuracy[2.0] + 0.1


def pairs_of(prompt: str, samples: list[tuple[str, bool]], labeler: SimulatedLabeler) -> list[dict]:
    return [pair for pair, _, _ in ranked_pairs(prompt, samples, labeler.rank)]


def test_ranked_pairs_takes_any_ranker_and_emits_all_k_choose_2_pairs():
    prompt = all_prompts()[0].text
    responses = [(text, True) for text in ["a b c.", "d e f.", "g h i.", "d e f."]]  # one duplicate, collapsed
    pairs = [pair for pair, _, _ in ranked_pairs(prompt, responses, lambda _, r, e: list(reversed(range(len(r)))))]
    assert len(pairs) == 3
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    # the ranker put the last unique response first, so it wins every pair it is in
    assert sum(p["chosen"] == "g h i." for p in pairs) == 2


def test_train_and_eval_prompts_are_disjoint_and_the_split_is_recorded():
    cfg = load_config("smoke")
    data = generate_synthetic(cfg)
    eval_texts = {r["prompt"] for r in data.rows[files.EVAL_PROMPTS]}
    assert eval_texts
    assert not eval_texts & {r["prompt"] for r in data.rows[files.DEMONSTRATIONS]}
    assert not eval_texts & {r["prompt"] for r in data.rows[files.PREFERENCES]}
    split = data.manifest["split"]
    assert set(split["eval_prompt_ids"]) == {r["prompt_id"] for r in data.rows[files.EVAL_PROMPTS]}
    assert not set(split["eval_prompt_ids"]) & set(split["train_prompt_ids"])


def _hashes(directory):
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    cfg = load_config("smoke")
    write_dataset(tmp_path / "a", generate_synthetic(cfg))
    write_dataset(tmp_path / "b", generate_synthetic(cfg))
    write_dataset(tmp_path / "c", generate_synthetic(load_config("smoke", overrides=[f"seed={cfg.seed + 1}"])))
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    different = _hashes(tmp_path / "c")
    for name in ("demonstrations.jsonl", "preferences.jsonl", "manifest.json"):
        assert different[name] != _hashes(tmp_path / "a")[name]


def test_the_stock_closing_habit_is_the_demonstrations_mode_at_its_default_and_absent_at_zero():
    """The habit is systematic (independent of carelessness): at the default rate (0.7) most reviews end with
    the stock line, so it is the mode imitation keeps; at 0 no review has it and no random draw is spent on it."""
    prompts = all_prompts()[:200]
    rng, rng_free = random.Random(5), random.Random(7)
    with_habit = [judge(p, write_demonstration(p, 0.0, rng, stock_closing=0.7)) for p in prompts]
    without = [judge(p, write_demonstration(p, 0.0, rng_free)) for p in prompts]
    assert 0.6 <= statistics.fmean(j.stock_phrases for j in with_habit) <= 0.8  # 0.7 +- 3 standard errors (0.032)
    # careful writers lose the line's cost too: 0.7 x 1.0 on average, less 3 standard errors (each ~0.03)
    assert statistics.fmean(j.score for j in without) - statistics.fmean(j.score for j in with_habit) > 0.6
    rng_a, rng_b = random.Random(6), random.Random(6)
    habit_free = [write_demonstration(p, 0.5, rng_a, stock_closing=0.0) for p in prompts]
    assert habit_free == [write_demonstration(p, 0.5, rng_b) for p in prompts]
    assert not any(judge(p, t).stock_phrases for p, t in zip(prompts, habit_free))
    assert load_config("default").data.synthetic.stock_closing_rate == 0.7


def test_even_the_most_careless_review_keeps_the_data_contracts_three_words():
    """A dropped aspect, a dropped word and a sentence broken off mid-way once left "color is" (2 words), which the
    data contract refuses (validation.min_response_words: 3): the generator must never write what its data fail.
    A style that makes every one of those slips at once, and nothing else, reaches the shortest reviews."""
    worst = DemonstratorStyle(
        opener=0, extra_aspect=0, join_aspects=0, verdict=0, flip_sentiment=0, drop_aspect=1, repeat_sentence=0,
        contradict=0, off_topic=0, grammar_slip=1, unterminated=1,
    )  # fmt: skip
    rng = random.Random(8)
    prompts = all_prompts()
    lengths = [len(words(write_demonstration(rng.choice(prompts), 1.0, rng, worst))) for _ in range(2000)]
    assert min(lengths) == load_config("default").validation.min_response_words
