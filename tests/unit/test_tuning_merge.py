"""benchmarks/tune.py --merge: sweeps run apart (one per core) become one table, by configuration."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from components.config import load_config

REPO = Path(__file__).resolve().parents[2]


def tune_module():
    spec = importlib.util.spec_from_file_location("tune", REPO / "benchmarks" / "tune.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    return tune


def sweep(path: Path, rows: list[tuple[str, dict, float]], seed: int = 7) -> Path:
    record = {
        "profile": "default",
        "tuning_seed": seed,
        "overrides": [],
        "selection": {"prompts": 200},
        "rule": "one standard error",
        "results": [
            {
                "method": m,
                "config": c,
                "label_win_rate": w,
                "chosen_snapshot": 1,
                "seconds": 1.0,
                "diagnostic_gold": 0.0,
            }
            for m, c, w in rows
        ],
    }
    path.write_text(json.dumps(record))
    return path


def test_parts_join_by_configuration_and_a_later_run_of_one_replaces_it(tmp_path):
    tune = tune_module()
    base = load_config("default")
    a, b = ({"rl.algorithm": "rloo", "ppo.lr": lr} for lr in (5e-5, 1e-4))
    first = sweep(tmp_path / "first.json", [("rloo", a, 0.40), ("dpo", {"baselines.dpo.beta": 0.1}, 0.45)])
    second = sweep(tmp_path / "second.json", [("rloo", b, 0.50), ("rloo", a, 0.30)])  # a again: the later run counts
    out = tmp_path / "merged.json"
    assert tune.merge([first, second], out, base) == 0
    merged = json.loads(out.read_text())
    rates = {(r["method"], json.dumps(r["config"], sort_keys=True)): r["label_win_rate"] for r in merged["results"]}
    assert rates == {
        ("rloo", json.dumps(a, sort_keys=True)): 0.30,
        ("rloo", json.dumps(b, sort_keys=True)): 0.50,
        ("dpo", json.dumps({"baselines.dpo.beta": 0.1})): 0.45,
    }
    assert merged["configurations_per_method"] == {"dpo": 1, "rloo": 2}
    # one standard error at 0.5 over 200 prompts is 0.035: 0.30 is outside it, so b is chosen
    assert merged["chosen"]["rloo"] == b


def test_sweeps_of_different_tuning_seeds_are_refused(tmp_path):
    tune = tune_module()
    parts = [sweep(tmp_path / "a.json", [], seed=7), sweep(tmp_path / "b.json", [], seed=8)]
    with pytest.raises(SystemExit, match="cannot merge"):
        tune.merge(parts, tmp_path / "out.json", load_config("default"))
