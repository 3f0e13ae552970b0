"""The budgets table names the tuning that happened: on the embedded task the sweeps' configurations (PPO's second
sweep included), on a user's files none."""

from components.config import load_config
from components.evaluation.evaluation_report import EvaluationReport
from components.evaluation.five_reasons import FiveReasons, five_reasons
from components.evaluation.judges import judge_facts
from components.evaluation.report import ComparisonTerms, format_budgets
from flows.tasks.decision_tasks import tuning_budgets

FILES = [
    "data.source=files",
    "data.files.demonstrations=/data/demonstrations.jsonl",
    "data.files.preferences=/data/preferences.jsonl",
    "data.files.eval_prompts=/data/eval_prompts.jsonl",
    "evaluation.judge.kind=python",
    "evaluation.judge.entry_point=m:f",
]


def terms(cfg) -> ComparisonTerms:
    budget = {"train_pairs": 10, "held_out_pairs": 2, "selection_labels": 4, "total": 16, "trainable_parameters": 5}
    return ComparisonTerms(
        sft_start="abc",
        eval_prompt_count=3,
        eval_prompts_md5="x",
        label_budgets={"ppo": budget, "dpo": budget},
        tuning_budgets=tuning_budgets(cfg),
        tuning=cfg.tuning.model_dump(mode="json"),
        tuned_on_these_data=cfg.data.source == "synthetic",
    )


def test_the_embedded_task_counts_each_sweep_and_ppo_its_length_sweep_too():
    cfg = load_config("default")
    assert tuning_budgets(cfg) == {
        "sft": 0,
        "best_of_n": 0,
        "ppo": 12,
        "chosen": 6,
        "top_ranked": 6,
        "combined": 6,
        "dpo": 6,
    }
    table = format_budgets(terms(cfg))
    assert "configurations tried on tuning seed 7" in table
    assert [line.split()[5] for line in table.splitlines() if line.startswith(("ppo ", "dpo "))] == ["12", "6"]


def test_on_a_users_files_nothing_was_tuned_and_the_table_says_so():
    cfg = load_config("default", FILES)
    assert set(tuning_budgets(cfg).values()) == {0}
    table = format_budgets(terms(cfg))
    assert "nothing was tuned on these data" in table and "tuning seed" not in table
    assert [line.split()[5] for line in table.splitlines() if line.startswith(("ppo ", "dpo "))] == ["0", "0"]


def test_the_terminal_summary_names_the_users_judge_not_gold(capsys):
    """The table printed at the end of a run scored by a python judge used to say "gold" in its columns."""
    import flows.pipeline as pipeline

    cfg = load_config(
        "default",
        FILES,
    )
    policy = {"gold": {"value": 1.0, "ci": [0.5, 1.5]}, "rm": {"value": 0.1}, "length": 9.0, "unterminated": 0.0}
    win = {"value": 0.6, "ci": [0.55, 0.65], "ties": 0.1}
    result = {
        "data_version": {"md5": "0" * 32, "action": "new version", "path": "data"},
        "data": {"rows": {"eval_prompts": 3}},
        "validation": {"reused": False, "data_docs": "docs.html"},
        "prepared": {},
        "evaluation": {"sample": {"policies": {"sft": policy, "ppo": policy}, "ppo_win_rate": {"sft": win}}},
        "judge": judge_facts(cfg.evaluation.judge)["label"],
        "budgets": terms(cfg).as_record(),
        "decision": {"summary": "decision: reject"},
        "registry": {
            "name": "m",
            "version": "1",
            "decision": "reject",
            "champion": None,
            "challenger": "1",
            "champion_note": "-",
        },
        "mlflow": {"uri": "sqlite:///x.db", "run_id": "r"},
        "run_dir": "runs/r",
        "flow_run_id": "f",
        "rl_algorithm": "rloo",
    }
    found = five_reasons(EvaluationReport.from_record(result["evaluation"]), 0.7, None)
    result["five_reasons"] = FiveReasons(None, found).as_record()
    pipeline._print_summary(result, 1.0)
    out = capsys.readouterr().out
    assert "(scored by the python judge 'm:f')" in out and "PPO judge win rate" in out and "gold" not in out
    assert "rl algorithm : rloo" in out
    assert "5. CONFIRMED: SFT and RL work in combination (ppo vs sft, sample: 0.600 [0.550, 0.650])" in out
