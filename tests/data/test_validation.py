"""The data gate with real Great Expectations: a good data dir passes, each single defect is named.

Every bad input is a copy of the good dir with one defect; the report must name the file, the
rule and the line, and the data on disk must be byte-identical afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.adapters.validation import SUMMARY, validate_data_dir, validate_labels
from components.data import expectations
from components.data.files import (
    DATASETS,
    DEMONSTRATIONS,
    EVAL_PROMPTS,
    PREFERENCES,
    DataFileError,
    Record,
    file_name,
    read_jsonl,
)
from components.labelling.pairwise_labels import label_rules
from tests.data_files import (
    CFG,
    DEFECTS,
    DEMONSTRATIONS_ROWS,
    EVAL,
    PREFERENCES_ROWS,
    VOCABULARY,
    edit_row,
    fingerprint,
    write_good_dir,
)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_good_dir(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def good_run(good_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    report_dir = tmp_path_factory.mktemp("good-report")
    return validate_data_dir(good_dir, CFG, VOCABULARY, report_dir), report_dir


# --- how to break a file -------------------------------------------------------------------


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


def test_a_byte_order_mark_at_the_start_of_a_file_is_read(good_dir: Path, tmp_path: Path) -> None:
    """Exports from spreadsheets and some editors start with a UTF-8 BOM: the file is read, line numbers kept."""
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    for dataset in DATASETS:
        path = data_dir / file_name(dataset)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    report = validate_data_dir(data_dir, CFG, VOCABULARY, tmp_path / "reports")
    assert report.success, report.summary()
    assert [r.data for r in read_jsonl(data_dir / file_name(PREFERENCES), PREFERENCES)] == PREFERENCES_ROWS
    edit_row(DEMONSTRATIONS, 2, response="")(data_dir)  # a defect after the BOM is quoted at its own line
    failed = validate_data_dir(data_dir, CFG, VOCABULARY, tmp_path / "reports-2")
    assert failed.failures and all(f.lines == [2] for f in failed.failures), failed.summary()


def test_a_json_array_is_named_as_such_not_as_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / file_name(PREFERENCES)
    for raw in (json.dumps(PREFERENCES_ROWS), json.dumps(PREFERENCES_ROWS, indent=2) + "\n"):
        path.write_text(raw)
        with pytest.raises(DataFileError, match=r"line 1: JSON Lines .*a JSON array of 6 items"):
            read_jsonl(path, PREFERENCES)


def test_contradicting_pairs_are_counted_and_allowed_up_to_the_configured_share(good_dir: Path, tmp_path: Path):
    """Rows 1 and 5 hold the same pair with chosen and rejected swapped: 2 of 6 rows contradict another."""
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    first = PREFERENCES_ROWS[0]
    edit_row(PREFERENCES, 5, prompt=first["prompt"], chosen=first["rejected"], rejected=first["chosen"])(data_dir)
    preferences = str(data_dir / file_name(PREFERENCES))
    strict = validate_data_dir(data_dir, CFG, VOCABULARY, tmp_path / "strict")
    assert strict.contradicting_pairs == {preferences: 2}
    [failure] = strict.failures
    assert failure.lines == [1, 5] and failure.detail == "2 of 6 rows", strict.summary()
    assert "2 of 6 rows contradict another" in strict.summary()
    loose_cfg = CFG.model_copy(update={"max_contradicting_share": 0.34})  # 2 of 6 rows is 0.333
    loose = validate_data_dir(data_dir, loose_cfg, VOCABULARY, tmp_path / "loose")
    assert loose.success and loose.contradicting_pairs == {preferences: 2}, loose.summary()
    assert "2 of 6 rows contradict another" in loose.summary()
    saved = json.loads((tmp_path / "loose" / SUMMARY).read_text())
    assert saved["contradicting_pairs"] == {preferences: 2}
    docs = Path(loose.data_docs_index).parent
    assert any("contradict another" in page.read_text() for page in docs.rglob("*.html")), "shown in Data Docs"


# --- a human judge's labels file ------------------------------------------------------------


def labels_report(tmp_path: Path, lines: list[dict], min_answers: int = 2):
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rules = label_rules(["p1", "p2", "p3"], min_answers)
    return path, validate_labels(path, rules, tmp_path / "labels-report", max_examples=5)


@pytest.mark.parametrize(
    "lines, rule, line",
    [
        ([{"pair_id": "p1", "choice": "A"}, {"pair_id": "other-run-9", "choice": "B"}], "one of this run's pairs", 2),
        ([{"pair_id": "p1", "choice": "A"}, {"pair_id": "p1", "choice": "B"}], "one answer per pair", 2),
        ([{"pair_id": "p1", "choice": "A"}, {"pair_id": "p2", "choice": "left"}], "choice is A, B or tie", 2),
        ([{"pair_id": "p1", "choice": "A"}], "answers at least 2 of the 3 pairs", None),
        ([{"pair_id": "p1", "choice": "A"}, {"pair_id": "p2"}], "required field 'choice'", 2),
    ],
)
def test_a_labels_file_that_breaks_a_rule_is_refused_naming_file_rule_and_line(tmp_path, lines, rule, line):
    path, report = labels_report(tmp_path, lines)
    assert not report.success
    [failure] = [f for f in report.failures if rule in f.rule]
    assert failure.file == str(path) and (line is None or line in failure.lines), report.summary()


def test_labels_answering_enough_of_this_runs_pairs_pass(tmp_path):
    lines = [{"pair_id": "p3", "choice": "tie"}, {"pair_id": "p1", "choice": "B"}]
    _, report = labels_report(tmp_path, lines)
    assert report.success and report.data_docs_index, report.summary()


def test_a_pair_whose_chosen_equals_rejected_is_not_counted_as_contradicting_itself(good_dir: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    shutil.copytree(good_dir, data_dir)
    edit_row(PREFERENCES, 3, rejected="the keyboard is good.")(data_dir)  # chosen == rejected
    report = validate_data_dir(data_dir, CFG, VOCABULARY, tmp_path / "reports")
    assert report.contradicting_pairs == {str(data_dir / file_name(PREFERENCES)): 0}
    assert [f.rule for f in report.failures] == ["'chosen' differs from 'rejected'"], report.summary()


# --- a rerun on unchanged files -----------------------------------------------------------


def ge_results(report_dir: Path) -> int:
    """How many validation results Great Expectations has stored under ``report_dir``: one per file it checked."""
    return sum(1 for _ in (report_dir / "gx" / "uncommitted" / "validations").rglob("*.json"))


def test_the_same_files_under_the_same_suites_reuse_the_passed_validation(good_dir: Path, tmp_path: Path) -> None:
    """Great Expectations runs once; the rerun returns the same report and Data Docs, and summary.json is unchanged."""
    data_dir, report_dir = tmp_path / "data", tmp_path / "reports"
    shutil.copytree(good_dir, data_dir)
    first = validate_data_dir(data_dir, CFG, VOCABULARY, report_dir)
    summary = (report_dir / SUMMARY).read_bytes()
    assert first.success and not first.reused and ge_results(report_dir) == len(DATASETS)

    again = validate_data_dir(data_dir, CFG, VOCABULARY, report_dir)
    assert again.reused and ge_results(report_dir) == len(DATASETS)  # no suite ran
    assert (again.success, again.rows, again.contradicting_pairs) == (True, first.rows, first.contradicting_pairs)
    assert again.data_docs_index == first.data_docs_index and Path(again.data_docs_index).is_file()
    assert (report_dir / SUMMARY).read_bytes() == summary
    assert "not run again" in again.summary()


@pytest.mark.parametrize("change", ["one byte of one file", "a setting", "the vocabulary", "the Data Docs are gone"])
def test_a_validation_is_run_again_when_anything_it_depends_on_changed(change, good_dir: Path, tmp_path: Path):
    data_dir, report_dir = tmp_path / "data", tmp_path / "reports"
    shutil.copytree(good_dir, data_dir)
    first = validate_data_dir(data_dir, CFG, VOCABULARY, report_dir)
    cfg, vocabulary = CFG, VOCABULARY
    if change == "one byte of one file":
        edit_row(DEMONSTRATIONS, 2, response="")(data_dir)
    elif change == "a setting":
        cfg = CFG.model_copy(update={"max_examples": CFG.max_examples + 1})
    elif change == "the vocabulary":
        vocabulary = VOCABULARY | {"zzz"}
    else:
        shutil.rmtree(Path(first.data_docs_index).parent)
    again = validate_data_dir(data_dir, cfg, vocabulary, report_dir)
    assert not again.reused and ge_results(report_dir) == 2 * len(DATASETS)
    assert again.success == (change != "one byte of one file"), again.summary()  # the broken row is caught


def test_a_failed_validation_is_never_reused(good_dir: Path, tmp_path: Path) -> None:
    data_dir, report_dir = tmp_path / "data", tmp_path / "reports"
    shutil.copytree(good_dir, data_dir)
    edit_row(DEMONSTRATIONS, 2, response="")(data_dir)
    for run in (1, 2):
        report = validate_data_dir(data_dir, CFG, VOCABULARY, report_dir)
        assert not report.success and not report.reused and ge_results(report_dir) == run * len(DATASETS)
        assert all(f.lines == [2] for f in report.failures), report.summary()
