"""The benchmark's real entry point runs end to end on the smoke profile and writes the documented JSON."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rlhf_vs_sl_benchmark_writes_every_documented_field(tmp_path):
    out = tmp_path / "rlhf_vs_sl.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/rlhf_vs_sl.py", "--profile", "smoke", "--seed", "3", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["profile"] == "smoke" and result["seed"] == 3
    for name in ("sft", "chosen", "top_ranked", "combined", "dpo", "ppo", "best_of_n"):
        policy = result["policies"][name]
        lo, hi = policy["gold_ci"]
        assert lo <= policy["gold_mean"] <= hi
    for name in ("sft", "chosen", "top_ranked", "combined", "dpo"):
        assert isinstance(result["policies"][name]["kl"], float)
        rate = result["ppo_win_rate"][name]
        assert 0 <= rate["ci"][0] <= rate["rate"] <= rate["ci"][1] <= 1
    assert set(result["evaluation"]) == {"sample", "greedy"}
    assert 0 <= result["rm_accuracy_gold"] <= 1
    assert {"sft", "comparisons", "reward", "chosen", "top_ranked", "combined", "dpo", "ppo", "evaluation"} <= set(result["stage_seconds"])
    assert result["peak_rss_mb"] > 0
    assert "gold mean [95% CI]" in done.stdout
