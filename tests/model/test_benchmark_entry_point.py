"""The benchmark's real entry point runs end to end on the smoke profile and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.evaluation.best_of_n import best_of_n_kl, kl_matched_n

pytestmark = pytest.mark.slow  # the benchmark end to end

REPO = Path(__file__).resolve().parents[2]
POLICIES = ("sft", "chosen", "top_ranked", "combined", "dpo")
RL = ("ppo", "rloo", "grpo", "reinforce_pp")


def benchmark(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """benchmarks/rlhf_vs_sl.py run as a user runs it, from the repository root."""
    return subprocess.run(
        [sys.executable, "benchmarks/rlhf_vs_sl.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_rlhf_vs_sl_benchmark_writes_every_documented_field(tmp_path):
    out = tmp_path / "rlhf_vs_sl.json"
    done = benchmark(
        "--profile", "smoke", "--seeds", "2", "--seed", "3", "--rl-without-sft", "--out", str(out), timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["profile"] == "smoke" and result["baselines"] == list(POLICIES)
    assert set(result["rl"]) == set(RL) and result["rl"]["ppo"] == [] and "rl.algorithm=grpo" in result["rl"]["grpo"]
    assert [run["seed"] for run in result["runs"]] == [3, 4] and result["across_seeds"]["seeds"] == [3, 4]
    for run in result["runs"]:
        assert set(run["evaluation"]) == {"sample", "greedy"}
        for mode, block in run["evaluation"].items():
            for name in (*POLICIES, *(("best_of_n",) if mode == "sample" else ())):
                rate = block["ppo_win_rate"][name]
                assert 0 <= rate["ci"][0] <= rate["rate"] <= rate["ci"][1] <= 1, (mode, name)
                gold = block["policies"][name]["gold"]
                assert gold["ci"][0] <= gold["value"] <= gold["ci"][1]
        matched = run["evaluation"]["sample"]["policies"]["best_of_n_matched"]  # best-of-n at PPO's KL
        assert matched["n"] == kl_matched_n(matched["ppo_kl"], 256) and matched["kl"] == best_of_n_kl(matched["n"])
        assert matched["ppo_kl"] == run["evaluation"]["sample"]["policies"]["ppo"]["kl"]
        assert 0 <= run["evaluation"]["sample"]["ppo_win_rate"]["best_of_n_matched"]["ci"][0] <= 1
        assert 0 <= run["reward_model"]["accuracy_gold"] <= 1
        assert {"sft", "comparisons", "reward", *POLICIES[1:], *RL, "evaluation"} <= set(run["stage_seconds"])
        assert set(run["stage_peak_mb"]) == set(run["stage_seconds"]) and min(run["stage_peak_mb"].values()) >= 0
        assert run["stage_peak_mb"]["sft"] > 0  # a training stage needs memory of its own, even after earlier ones
        assert set(run["rl_histories"]) == {*RL[1:], "rl_without_sft"}
        for block in run["evaluation"].values():  # every RL algorithm against every supervised baseline
            assert set(block["rl_win_rate"]) == {*RL, "rl_without_sft"}
            assert set(block["rl_win_rate"]["grpo"]) == set(POLICIES)
            assert "rl_without_sft" in block["ppo_win_rate"]  # reason 5: SFT + RL against RL alone
            # PPO's row is the gate's own comparison, computed apart
            for baseline in POLICIES:
                ppo, gate = block["rl_win_rate"]["ppo"][baseline], block["ppo_win_rate"][baseline]
                assert (ppo["value"], ppo["ci"]) == (gate["value"], gate["ci"])
        budgets = run["label_budgets"]
        assert budgets["sft"]["total"] == 0 and budgets["ppo"]["train_pairs"] == budgets["dpo"]["train_pairs"] > 0
        assert (
            budgets["ppo"]["selection_labels"] == budgets["dpo"]["selection_labels"]
        )  # the same budget for each method
    for mode, block in result["across_seeds"]["evaluation"].items():  # the seed is the unit: one value per seed
        for name, row in block.items():
            per_seed = [run["evaluation"][mode]["ppo_win_rate"][name]["value"] for run in result["runs"]]
            win = row["ppo_win_rate"]
            assert win["values"] == per_seed and win["seeds"] == 2
            assert win["mean"] == pytest.approx((per_seed[0] + per_seed[1]) / 2)
            # t on 1 degree of freedom: 12.706 * sd / sqrt(2), sd = |a - b| / sqrt(2)
            half = 12.7062 * abs(per_seed[0] - per_seed[1]) / 2
            assert win["ci"] == pytest.approx([win["mean"] - half, win["mean"] + half], rel=1e-4, abs=1e-9)
    for mode, block in result["across_seeds"]["rl_vs_baselines"].items():
        for name, row in block.items():
            for baseline, cell in row.items():
                per_seed = [run["evaluation"][mode]["rl_win_rate"][name][baseline]["value"] for run in result["runs"]]
                assert cell["win_rate"]["values"] == per_seed
                assert cell["win_rate"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "each RL algorithm's win rate against each supervised baseline" in done.stdout
    reasons = result["across_seeds"]["five_reasons"]  # on the seed-level intervals
    assert [r["number"] for r in reasons] == [1, 2, 3, 4, 5] and "Five reasons for RL over SL" in done.stdout
    assert all(run["token_sensitivity"]["pairs"] >= 0 for run in result["runs"])
    assert [run["token_sensitivity_fluent"]["edits"] for run in result["runs"]] == ["fluent"] * 2
    for run in result["runs"]:
        curve = run["best_of_n_headroom"]
        assert curve["n"][0] == 1 and curve["gold_picks"][0] == pytest.approx(
            curve["rm_picks"][0]
        )  # N = 1: nothing to pick
        assert curve["gold_picks"] == sorted(
            curve["gold_picks"]
        )  # the oracle's pick never gets worse with more samples
        assert all(r <= g + 1e-9 for g, r in zip(curve["gold_picks"], curve["rm_picks"]))
    assert (tmp_path / "rlhf_vs_sl_headroom.png").stat().st_size > 0
    assert result["peak_rss_mb"] > 0
    assert "gold mean [95% CI]" in done.stdout and "over seeds [3, 4]" in done.stdout
    assert all(run["evaluation"]["sample"]["policies"]["best_of_n_matched"]["picks"] == 2 for run in result["runs"])

    # seeds run on two cores at once, one file each, combine into what one run over both seeds writes
    halves = []
    for k, run in enumerate(result["runs"]):
        halves.append(tmp_path / f"seed{k}.json")
        halves[-1].write_text(json.dumps({**result, "runs": [run]}))
    combined = tmp_path / "combined.json"
    done = benchmark("--combine", *map(str, halves[::-1]), "--out", str(combined))
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads(combined.read_text())
    assert merged["runs"] == result["runs"] and merged["across_seeds"] == result["across_seeds"]
    again = benchmark("--combine", str(halves[0]), str(halves[0]), "--out", str(combined))
    assert again.returncode != 0 and "a seed appears twice" in again.stderr

    # a seed run without --rl-without-sft joins the others: that policy is estimated over the seeds that have it
    second = json.loads(halves[1].read_text())
    run = second["runs"][0]
    del run["rl_histories"]["rl_without_sft"]
    for block in run["evaluation"].values():
        for table in (block["ppo_win_rate"], block["rl_win_rate"], block["policies"]):
            table.pop("rl_without_sft", None)
    halves[1].write_text(json.dumps({**second, "rl_without_sft": []}))
    done = benchmark("--combine", *map(str, halves), "--out", str(combined))
    assert done.returncode == 0, done.stderr[-3000:]
    mixed = json.loads(combined.read_text())
    assert mixed["rl_without_sft"] == [3]
    for block in mixed["across_seeds"]["evaluation"].values():
        assert block["rl_without_sft"]["ppo_win_rate"]["seeds"] == 1 and block["sft"]["ppo_win_rate"]["seeds"] == 2
    assert mixed["across_seeds"]["rl_vs_baselines"]["sample"]["rl_without_sft"]["dpo"]["win_rate"]["seeds"] == 1


def test_the_two_turn_task_runs_through_the_benchmark_and_measures_reason_two_conversational_half(tmp_path):
    out = tmp_path / "two_turn.json"
    done = benchmark(
        "--profile",
        "smoke",
        "--set",
        "data.synthetic.turns=2",
        "--set",
        "model.max_response_tokens=64",
        "--set",
        "validation.max_response_words=80",
        "--rl",
        "ppo",
        "--seed",
        "5",
        "--out",
        str(out),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [run["turns"] for run in result["runs"]] == [2]
    reason = result["across_seeds"]["five_reasons"][1]
    assert reason["number"] == 2 and "coherent conversations need cumulative rewards" in reason["claim"]
    assert "ppo vs combined" in reason["evidence"]
