"""The data gate with real Great Expectations: a good data dir passes, each single defect is named.

Every bad input is a copy of the good dir with one defect; the report must name the file, the
rule and the line, and the data on disk must be byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.adapters.validation import SUMMARY, validate_data_dir
from components.config import RowBounds, ValidationConfig
from components.data import expectations
from components.data.files import DATASETS, DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES, Record, file_name
from components.io import write_json, write_jsonl

VOCABULARY = frozenset(
    [
        "write",
        "a",
        "review",
        "of",
        "the",
        "phone",
        "laptop",
        "camera",
        "screen",
        "battery",
        "keyboard",
        "is",
        "are",
        "great",
        "bad",
        "good",
        "slow",
        "fast",
        "and",
        "i",
        "like",
        "it",
        "do",
        "not",
        ".",
        ",",
        "!",
        "?",
    ]
)
CFG = ValidationConfig(
    min_response_words=3,
    max_response_words=12,
    max_prompt_words=10,
    demonstrations_rows=RowBounds(min=4, max=1000),
    preferences_rows=RowBounds(min=4, max=1000),
    eval_prompts_rows=RowBounds(min=2, max=1000),
)
EVAL = ["write a review of the camera.", "write a review of the keyboard."]
DEMONSTRATIONS_ROWS = [
    {"prompt": "write a review of the phone.", "response": "the screen is great.", "prompt_id": "phone"},
    {"prompt": "write a review of the phone.", "response": "the battery is bad.", "prompt_id": "phone"},
    {"prompt": "write a review of the laptop.", "response": "i like the keyboard!", "prompt_id": "laptop"},
    {"prompt": "write a review of the laptop.", "response": "the laptop is fast, i like it.", "prompt_id": "laptop"},
    {"prompt": "write a review of the phone.", "response": "i do not like the phone.", "prompt_id": "phone"},
]
PREFERENCES_ROWS = [
    {
        "prompt": "write a review of the phone.",
        "chosen": "the screen is great.",
        "rejected": "the screen is bad.",
        "chosen_position": 0,
    },
    {
        "prompt": "write a review of the phone.",
        "chosen": "i like the phone.",
        "rejected": "the phone is slow.",
        "chosen_position": 1,
    },
    {
        "prompt": "write a review of the laptop.",
        "chosen": "the keyboard is good.",
        "rejected": "keyboard keyboard keyboard.",
        "chosen_position": 0,
    },
    {
        "prompt": "write a review of the laptop.",
        "chosen": "the laptop is fast!",
        "rejected": "the laptop is bad.",
        "chosen_position": 1,
    },
    {
        "prompt": "write a review of the phone.",
        "chosen": "the battery is good.",
        "rejected": "the battery is slow.",
        "chosen_position": 0,
    },
    {
        "prompt": "write a review of the laptop.",
        "chosen": "i like it, it is fast.",
        "rejected": "slow slow slow.",
        "chosen_position": 1,
    },
]


def write_good_dir(path: Path) -> Path:
    write_jsonl(path / file_name(DEMONSTRATIONS), DEMONSTRATIONS_ROWS)
    write_jsonl(path / file_name(PREFERENCES), PREFERENCES_ROWS)
    write_jsonl(path / file_name(EVAL_PROMPTS), [{"prompt": p} for p in EVAL])
    write_json(path / "manifest.json", {"source": "test"})
    return path


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_good_dir(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def good_run(good_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    report_dir = tmp_path_factory.mktemp("good-report")
    return validate_data_dir(good_dir, CFG, VOCABULARY, report_dir), report_dir


# --- how to break a file -------------------------------------------------------------------


def replace_line(path: Path, number: int, content: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = content
    path.write_bytes(b"\n".join(lines))


DROP = object()  # edit_row(..., field=DROP) deletes the field


def edit_row(dataset: str, number: int, **changes) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / file_name(dataset)
        row = json.loads(path.read_bytes().split(b"\n")[number - 1])
        row.update(changes)
        row = {k: v for k, v in row.items() if v is not DROP}
        replace_line(path, number, json.dumps(row).encode())

    return apply


def set_line(dataset: str, number: int, content: bytes) -> Callable[[Path], None]:
    return lambda directory: replace_line(directory / file_name(dataset), number, content)


def set_bytes(dataset: str, content: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / file_name(dataset)
        path.write_bytes(content(path.read_bytes()))

    return apply


def cut_last_line(raw: bytes) -> bytes:
    return raw[: raw.rstrip(b"\n").rfind(b"\n") + 1] + b'{"prompt": "write a rev'


def first_lines(n: int) -> Callable[[bytes], bytes]:
    return lambda raw: b"".join(raw.splitlines(keepends=True)[:n])


def remove(dataset: str) -> Callable[[Path], None]:
    return lambda directory: (directory / file_name(dataset)).unlink()


@dataclass(frozen=True)
class Defect:
    dataset: str  # the file that must be named
    apply: Callable[[Path], None]
    expectation: str  # GX expectation type or "parse"
    rule: str  # a part of the rule's description
    line: int | None  # a line that must be quoted, when the rule is about rows


DEFECTS = {
    "malformed_json": Defect(
        DEMONSTRATIONS,
        set_line(DEMONSTRATIONS, 3, b'{"prompt": "write", "response": '),
        "parse",
        "one JSON object per line",
        3,
    ),
    "missing_field": Defect(
        PREFERENCES, edit_row(PREFERENCES, 2, rejected=DROP), "parse", "required field 'rejected'", 2
    ),
    "wrong_type": Defect(
        DEMONSTRATIONS, edit_row(DEMONSTRATIONS, 4, response=42), "parse", "field 'response' is a string", 4
    ),
    "empty_response": Defect(
        DEMONSTRATIONS,
        edit_row(DEMONSTRATIONS, 2, response=""),
        "expect_column_values_to_match_regex",
        "'response' is not empty",
        2,
    ),
    "chosen_equals_rejected": Defect(
        PREFERENCES,
        edit_row(PREFERENCES, 3, rejected="the keyboard is good."),
        "expect_column_values_to_be_in_set",
        "'chosen' differs from 'rejected'",
        3,
    ),
    "duplicated_pair": Defect(
        PREFERENCES,
        edit_row(PREFERENCES, 5, **{k: PREFERENCES_ROWS[0][k] for k in ("prompt", "chosen", "rejected")}),
        "expect_compound_columns_to_be_unique",
        "no duplicate (prompt, chosen, rejected)",
        5,
    ),
    "leaked_eval_prompt": Defect(
        PREFERENCES, edit_row(PREFERENCES, 4, prompt=EVAL[1]), "expect_column_values_to_be_in_set", "no eval prompt", 4
    ),
    "truncated_file": Defect(
        PREFERENCES, set_bytes(PREFERENCES, cut_last_line), "parse", "file ends with a newline", len(PREFERENCES_ROWS)
    ),
    "non_utf8": Defect(
        EVAL_PROMPTS, set_line(EVAL_PROMPTS, 2, b'{"prompt": "write a review \xff\xfe"}'), "parse", "UTF-8", 2
    ),
    "empty_file": Defect(EVAL_PROMPTS, set_bytes(EVAL_PROMPTS, lambda raw: b""), "parse", "file is not empty", None),
    "missing_file": Defect(EVAL_PROMPTS, remove(EVAL_PROMPTS), "parse", "file exists", None),
    "out_of_vocabulary": Defect(
        DEMONSTRATIONS,
        edit_row(DEMONSTRATIONS, 5, response="i do not like the zebra."),
        "expect_column_values_to_be_in_set",
        "vocabulary",
        5,
    ),
    "unknown_character": Defect(
        PREFERENCES,
        edit_row(PREFERENCES, 6, chosen="i like it 100 percent."),
        "expect_column_values_to_match_regex",
        "only letters",
        6,
    ),
    "response_too_long": Defect(
        DEMONSTRATIONS,
        edit_row(DEMONSTRATIONS, 1, response="the screen is great " * 4),
        "expect_column_values_to_be_between",
        "'response' has 3 to 12 words",
        1,
    ),
    "too_few_rows": Defect(
        DEMONSTRATIONS, set_bytes(DEMONSTRATIONS, first_lines(2)), "expect_table_row_count_to_be_between", "rows", None
    ),
    "label_imbalance": Defect(
        PREFERENCES,
        lambda d: [edit_row(PREFERENCES, n, chosen_position=0)(d) for n in (2, 4, 6)],
        "expect_column_mean_to_be_between",
        "label balance",
        None,
    ),
    "duplicate_eval_prompt": Defect(
        EVAL_PROMPTS,
        set_line(EVAL_PROMPTS, 2, json.dumps({"prompt": EVAL[0]}).encode()),
        "expect_column_values_to_be_unique",
        "no duplicate eval prompt",
        2,
    ),
}


@pytest.fixture(params=sorted(DEFECTS))
def broken(request, good_dir: Path, tmp_path: Path):
    """A copy of the good dir with one defect, and the validation report on it."""
    defect = DEFECTS[request.param]
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    defect.apply(data_dir)
    good_before, broken_before = fingerprint(good_dir), fingerprint(data_dir)
    report = validate_data_dir(data_dir, CFG, VOCABULARY, tmp_path / "reports")
    assert fingerprint(good_dir) == good_before
    assert fingerprint(data_dir) == broken_before, "validation must never write into the data dir"
    return defect, data_dir, report


def test_good_data_dir_passes(good_run) -> None:
    report, _ = good_run
    assert report.success, report.summary()
    assert report.failures == []
    assert sorted(Path(f).name for f in report.rows) == sorted(file_name(d) for d in DATASETS)
    assert sum(report.rows.values()) == len(DEMONSTRATIONS_ROWS) + len(PREFERENCES_ROWS) + len(EVAL)


def test_good_run_writes_data_docs_and_summary_outside_the_data_dir(good_dir: Path, good_run) -> None:
    report, report_dir = good_run
    assert report.data_docs_index is not None
    index = Path(report.data_docs_index)
    assert index.name == "index.html" and index.is_file()
    assert index.resolve().is_relative_to(report_dir.resolve())
    assert json.loads((report_dir / SUMMARY).read_text())["success"] is True
    assert sorted(p.name for p in good_dir.iterdir()) == sorted([*(file_name(d) for d in DATASETS), "manifest.json"])


def test_each_defect_is_reported_with_file_rule_and_line(broken) -> None:
    defect, data_dir, report = broken
    assert not report.success
    expected_file = str(data_dir / file_name(defect.dataset))
    assert {f.file for f in report.failures} == {expected_file}, report.summary()
    matching = [f for f in report.failures if f.expectation == defect.expectation and defect.rule in f.rule]
    assert matching, report.summary()
    if defect.line is not None:
        assert defect.line in matching[0].lines, report.summary()
    if defect.expectation == "parse":
        assert len(report.failures) == 1
        assert file_name(defect.dataset) not in {Path(f).name for f in report.rows}, (
            "an unparsable file is not sent to GX"
        )
        assert len(report.rows) == len(DATASETS) - 1, "the other files are still validated"


def test_summary_names_file_rule_and_line(good_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    edit_row(PREFERENCES, 3, rejected="the keyboard is good.")(data_dir)
    edit_row(DEMONSTRATIONS, 2, response="")(data_dir)
    report_dir = tmp_path / "reports"
    report = validate_data_dir(data_dir, CFG, VOCABULARY, report_dir)
    summary = report.summary()
    assert "FAILED" in summary
    assert str(data_dir / file_name(PREFERENCES)) in summary and "'chosen' differs from 'rejected'" in summary
    assert "line 3: 'the keyboard is good.'" in summary
    assert str(data_dir / file_name(DEMONSTRATIONS)) in summary and "line 2: ''" in summary
    saved = json.loads((report_dir / SUMMARY).read_text())
    assert saved["success"] is False and len(saved["failures"]) == len(report.failures)


def test_user_text_passes_when_vocabulary_is_not_checked(good_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    edit_row(DEMONSTRATIONS, 1, response="Ça marche très bien: 10/10.")(data_dir)
    cfg = CFG.model_copy(update={"check_vocabulary": False})
    report = validate_data_dir(data_dir, cfg, None, tmp_path / "reports")
    assert report.success, report.summary()


def test_missing_data_dir_names_every_file(tmp_path: Path) -> None:
    report = validate_data_dir(tmp_path / "absent", CFG, VOCABULARY, tmp_path / "reports")
    assert not report.success and report.rows == {} and report.data_docs_index is None
    assert [(Path(f.file).name, f.rule) for f in report.failures] == [(file_name(d), "file exists") for d in DATASETS]
    assert not (tmp_path / "absent").exists()


def test_report_dir_inside_data_dir_is_refused(good_dir: Path) -> None:
    before = fingerprint(good_dir)
    with pytest.raises(ValueError, match="inside the data directory"):
        validate_data_dir(good_dir, CFG, VOCABULARY, good_dir / "reports")
    assert fingerprint(good_dir) == before


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("check_vocabulary", [True, False])
def test_suite_rules_are_unique_and_name_existing_columns(dataset: str, check_vocabulary: bool) -> None:
    cfg = CFG.model_copy(update={"check_vocabulary": check_vocabulary})
    rows = {
        DEMONSTRATIONS: DEMONSTRATIONS_ROWS,
        PREFERENCES: PREFERENCES_ROWS,
        EVAL_PROMPTS: [{"prompt": p} for p in EVAL],
    }[dataset]
    df = expectations.frame(dataset, [Record(i, r) for i, r in enumerate(rows, 1)], cfg, VOCABULARY, frozenset(EVAL))
    rules = expectations.suite(dataset, df.columns, cfg, VOCABULARY, frozenset(EVAL))
    assert len({r.description for r in rules}) == len(rules)
    for rule in rules:
        assert set(rule.kwargs.get("column_list", [rule.column] if rule.column else [])) <= set(df.columns)
        assert rule.quote is None or rule.quote in df.columns
    assert df[expectations.LINE].tolist() == list(range(1, len(rows) + 1))
    assert any("vocabulary" in r.description for r in rules) == check_vocabulary
