"""The benchmark's real entry point runs end to end on the smoke profile and writes the documented JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmark end to end

REPO = Path(__file__).resolve().parents[2]
POLICIES = ("sft", "chosen", "top_ranked", "combined", "dpo")


def test_rlhf_vs_sl_benchmark_writes_every_documented_field(tmp_path):
    out = tmp_path / "rlhf_vs_sl.json"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/rlhf_vs_sl.py",
            "--profile",
            "smoke",
            "--seeds",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["profile"] == "smoke" and result["baselines"] == list(POLICIES)
    assert [run["seed"] for run in result["runs"]] == [3, 4] and result["pooled"]["seeds"] == [3, 4]
    for run in result["runs"]:
        assert set(run["evaluation"]) == {"sample", "greedy"}
        for mode, block in run["evaluation"].items():
            for name in (*POLICIES, *(("best_of_n",) if mode == "sample" else ())):
                rate = block["ppo_win_rate"][name]
                assert 0 <= rate["ci"][0] <= rate["rate"] <= rate["ci"][1] <= 1, (mode, name)
                gold = block["policies"][name]["gold"]
                assert gold["ci"][0] <= gold["value"] <= gold["ci"][1]
        assert 0 <= run["reward_model"]["accuracy_gold"] <= 1
        assert {"sft", "comparisons", "reward", *POLICIES[1:], "ppo", "evaluation"} <= set(run["stage_seconds"])
        budgets = run["label_budgets"]
        assert budgets["sft"]["total"] == 0 and budgets["ppo"]["train_pairs"] == budgets["dpo"]["train_pairs"] > 0
        assert (
            budgets["ppo"]["selection_labels"] == budgets["dpo"]["selection_labels"]
        )  # the same budget for each method
    for mode, block in result["pooled"]["evaluation"].items():
        for name, rate in block["ppo_win_rate"].items():
            per_seed = [run["evaluation"][mode]["ppo_win_rate"][name] for run in result["runs"]]
            assert rate["n"] == sum(r["n"] for r in per_seed)
            assert rate["rate"] == pytest.approx(sum(r["rate"] * r["n"] for r in per_seed) / rate["n"])
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
    assert "gold mean [95% CI]" in done.stdout and "pooled over seeds [3, 4]" in done.stdout
