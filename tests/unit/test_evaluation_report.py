"""The typed evaluation report against its JSON: the record is evaluation.json's, read back unchanged, and people's
win rates replace the judge's in a new report, the old one untouched."""

import json

from components.evaluation.evaluation_report import EvaluationReport

RECORD = {
    "sample": {
        "policies": {"sft": {"n": 4, "length": 3.0}, "ppo": {"n": 4, "length": 5.0, "kl": 1.5}},
        "ppo_win_rate": {},
        "ppo_rm_win_rate": {"sft": {"value": 0.75, "ci": [0.5, 1.0]}},
        "examples": [{"mode": "sample", "prompt": "p", "policy": "ppo", "response": "r", "gold": None, "rm": 0.1}],
    },
    "greedy": {
        "policies": {"sft": {"n": 2, "length": 3.0}},
        "ppo_win_rate": {},
        "ppo_rm_win_rate": {},
        "examples": [],
    },
}


def test_the_record_reads_back_to_the_same_json_keys_in_order():
    report = EvaluationReport.from_record(RECORD)
    assert json.dumps(report.as_record()) == json.dumps(RECORD)
    report.as_record()["sample"]["policies"].clear()  # a record is a copy: the report stays as it was
    assert report.modes["sample"].policies == RECORD["sample"]["policies"]


def test_peoples_win_rates_replace_the_judges_in_the_modes_they_name_only():
    report = EvaluationReport.from_record(RECORD)
    win = {"value": 1.0, "ci": [0.6, 1.0], "ties": 0.0}
    judged = report.with_ppo_win_rates({"sample": {"sft": win}})
    assert judged.modes["sample"].ppo_win_rate == {"sft": win}
    assert judged.modes["greedy"] == report.modes["greedy"] and report.modes["sample"].ppo_win_rate == {}
    assert list(judged.as_record()) == ["sample", "greedy"]
