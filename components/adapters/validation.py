"""Runs the data suites of ``components/data/expectations.py`` with Great Expectations.

The only module that imports great_expectations, and only when a suite runs (the import takes seconds). One
file-mode Data Context lives under ``<report_dir>/gx``; every data file is a dataframe asset validated by its own
checkpoint; the Data Docs of all of them are built once, after the last (a build per checkpoint compiles the page
templates and renders the index again each time). Nothing is ever written into the data directory.

A validation that passed is recorded under ``<report_dir>/passed/``, keyed by everything its outcome depends on:
the files' bytes and names, the validation settings, the vocabulary, the held-out prompts, the Great Expectations
version and the source of the suites. The same key again (a rerun on unchanged data) returns that report and its
Data Docs without running the suites again. A failure is never reused: it is checked afresh every time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from components.config import ValidationConfig
from components.data import expectations
from components.data.expectations import LINE, Expectation
from components.data.files import DATASETS, EVAL_PROMPTS, LABELS, REQUIRED_FIELDS, DataFileError, file_name, read_jsonl
from components.data.validation_report import PARSE, Failure, ValidationReport
from components.io import sha256_file, write_json

DATA_SOURCE = "data_files"
SUMMARY = "summary.json"
PASSED = "passed"  # under report_dir: the validations that passed, one JSON record each, named by their key
RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": [LINE]}
QUOTE_CHARS = 80
DOCS_RUNS_LISTED = 10


def validate_data_dir(
    data_dir: Path,
    cfg: ValidationConfig,
    vocabulary: frozenset[str] | None,
    report_dir: Path | None = None,
    file_labels: dict[str, str] | None = None,
    datasets: Sequence[str] = DATASETS,
    eval_prompts: frozenset[str] | None = None,
) -> ValidationReport:
    """Check the data files of ``data_dir``; write Data Docs and ``summary.json`` under ``report_dir``.

    A file that cannot be parsed is one "parse" failure and is not sent to GX; the other files
    still are, so one run shows everything that is wrong. ``file_labels`` (dataset -> name) says
    what to call a file in the report, e.g. the user's own path when ``data_dir`` is a staging copy.
    ``datasets`` names the files to check (all three by default; e.g. only ``preferences`` for the
    comparisons collected from the SFT policy). ``eval_prompts`` are the held-out prompts that no
    training file may contain, used when ``eval_prompts.jsonl`` is not among ``datasets``.
    """
    data_dir = Path(data_dir)
    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown or not datasets:
        raise ValueError(f"datasets must be a non-empty subset of {DATASETS}, got {list(datasets)}")
    datasets = [d for d in DATASETS if d in datasets]
    labels = {d: (file_labels or {}).get(d, str(data_dir / file_name(d))) for d in datasets}
    report_dir = Path(report_dir if report_dir is not None else cfg.report_dir)
    if report_dir.resolve().is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"report_dir {report_dir} is inside the data directory {data_dir}: validation never writes there"
        )

    key = _passed_key(data_dir, datasets, labels, cfg, vocabulary, eval_prompts)
    passed_before = _passed_before(report_dir, key)
    if passed_before is not None:
        _write_summary(report_dir, passed_before)
        return passed_before

    failures: list[Failure] = []
    records = {}
    for dataset in datasets:
        path = data_dir / file_name(dataset)
        try:
            records[dataset] = read_jsonl(path, dataset)
        except DataFileError as err:
            failures.append(_parse_failure(path, labels[dataset], err))

    if EVAL_PROMPTS in records:
        eval_prompts = frozenset(r.data["prompt"] for r in records[EVAL_PROMPTS])
    elif EVAL_PROMPTS in datasets:
        eval_prompts = None  # the eval file did not parse: its failure is reported, the leak check cannot run
    frames = {d: expectations.frame(d, rs, cfg, vocabulary, eval_prompts) for d, rs in records.items()}
    docs_index = None
    if frames:
        context = _context(report_dir)
        source = context.data_sources.add_or_update_pandas(DATA_SOURCE)  # drops the assets of earlier runs
        results = []
        for dataset, df in frames.items():
            suite = expectations.suite(dataset, df.columns, cfg, vocabulary, eval_prompts)
            results.append(_checkpoint(context, source, dataset, suite).run(batch_parameters={"dataframe": df}))
            failures += _failures(labels[dataset], suite, results[-1], df, cfg.max_examples)
        docs_index = _build_docs(context, results)

    report = ValidationReport(
        success=not failures,
        failures=failures,
        rows={labels[d]: len(df) for d, df in frames.items()},
        data_docs_index=docs_index,
        contradicting_pairs={
            labels[d]: int(df[expectations.CONTRADICTS].sum())
            for d, df in frames.items()
            if expectations.CONTRADICTS in df
        },
    )
    summary = _write_summary(report_dir, report)
    if report.success and key is not None:
        write_json(report_dir / PASSED / f"{key}.json", summary)
    return report


def _write_summary(report_dir: Path, report: ValidationReport) -> dict:
    """summary.json, a DVC metric: free of machine-specific absolute paths, the same whether the suites ran or not."""
    summary = report.to_dict()
    summary.pop("reused")
    if report.data_docs_index:
        summary["data_docs_index"] = str(Path(report.data_docs_index).resolve().relative_to(report_dir.resolve()))
    write_json(report_dir / SUMMARY, summary)
    return summary


def _passed_key(
    data_dir: Path,
    datasets: Sequence[str],
    labels: dict[str, str],
    cfg: ValidationConfig,
    vocabulary: frozenset[str] | None,
    eval_prompts: frozenset[str] | None,
) -> str | None:
    """A digest of everything a validation's outcome depends on; None when a file is missing (that fails anyway)."""
    paths = [data_dir / file_name(dataset) for dataset in datasets]
    if not all(path.is_file() for path in paths):
        return None
    code = (inspect.getfile(expectations), inspect.getfile(read_jsonl), __file__)  # the suites, the parser, this
    inputs = {
        "great_expectations": version("great_expectations"),
        "code": [sha256_file(source) for source in code],
        "settings": cfg.model_dump(mode="json"),
        "vocabulary": sorted(vocabulary) if vocabulary is not None else None,
        "eval_prompts": sorted(eval_prompts) if eval_prompts is not None else None,
        "files": [[dataset, labels[dataset], sha256_file(path)] for dataset, path in zip(datasets, paths)],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode("utf-8")).hexdigest()


def _passed_before(report_dir: Path, key: str | None) -> ValidationReport | None:
    """The report of a validation that passed with this key, if its record and Data Docs are still there."""
    if key is None or not (record := report_dir / PASSED / f"{key}.json").is_file():
        return None
    summary = json.loads(record.read_text(encoding="utf-8"))
    docs_index = report_dir / summary["data_docs_index"] if summary["data_docs_index"] else None
    if docs_index is not None and not docs_index.is_file():
        return None
    return ValidationReport(
        success=True,
        failures=[],
        rows=summary["rows"],
        data_docs_index=str(docs_index) if docs_index is not None else None,
        contradicting_pairs=summary["contradicting_pairs"],
        reused=True,
    )


def validate_labels(path: Path, rules: list[Expectation], report_dir: Path, max_examples: int) -> ValidationReport:
    """Check a human judge's labels file (``LABELS`` schema) against ``rules``; Data Docs under ``report_dir``."""
    path = Path(path)
    try:
        records = read_jsonl(path, LABELS)
    except DataFileError as err:
        return ValidationReport(success=False, failures=[_parse_failure(path, str(path), err)], rows={})
    columns = [*REQUIRED_FIELDS[LABELS], LINE]
    df = pd.DataFrame([[*(r.data[c] for c in REQUIRED_FIELDS[LABELS]), r.line] for r in records], columns=columns)
    context = _context(report_dir)
    source = context.data_sources.add_or_update_pandas(DATA_SOURCE)
    result = _checkpoint(context, source, LABELS, rules).run(batch_parameters={"dataframe": df})
    failures = _failures(str(path), rules, result, df, max_examples)
    return ValidationReport(
        success=not failures,
        failures=failures,
        rows={str(path): len(df)},
        data_docs_index=_build_docs(context, [result]),
    )


def _parse_failure(path: Path, label: str, err: DataFileError) -> Failure:
    if not path.exists():
        return Failure(label, "file exists", PARSE, detail="missing")
    if err.line is None:
        return Failure(label, err.rule, PARSE, detail=err.detail)
    return Failure(label, err.rule, PARSE, [(err.line, err.detail)])


def _context(report_dir: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(report_dir))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # Every Data Docs build reads each stored result it lists: list only the latest runs, or
    # validation gets slower with every run kept under report_dir.
    sites = context.variables.data_docs_sites or {}
    for site in sites.values():
        site.setdefault("site_index_builder", {})["validation_results_limit"] = len(DATASETS) * DOCS_RUNS_LISTED
    context.variables.data_docs_sites = sites
    return context


def _checkpoint(context: Any, source: Any, dataset: str, rules: list[Expectation]) -> Any:
    import great_expectations as gx

    batches = source.add_dataframe_asset(dataset).add_batch_definition_whole_dataframe("all rows")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=dataset, expectations=[_gx(rule) for rule in rules]))
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=dataset, data=batches, suite=suite)
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=dataset,
            validation_definitions=[validation],
            result_format=RESULT_FORMAT,
        )
    )


def _gx(rule: Expectation) -> Any:
    """The GX expectation class of the same name: expect_column_to_exist -> ExpectColumnToExist."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, "".join(part.capitalize() for part in rule.kind.split("_")))
    return cls(**rule.kwargs, description=rule.description)


def _failures(file: str, rules: list[Expectation], result: Any, df: pd.DataFrame, max_examples: int) -> list[Failure]:
    by_description = {rule.description: rule for rule in rules}
    (validation,) = result.run_results.values()
    failures = []
    for outcome in validation.results:
        if outcome.success:
            continue
        rule = by_description[outcome.expectation_config.description]
        failures.append(
            Failure(
                file,
                rule.description,
                rule.kind,
                _examples(rule, outcome.result, df, max_examples),
                _detail(outcome),
            )
        )
    return failures


def _examples(rule: Expectation, result: dict, df: pd.DataFrame, max_examples: int) -> list[tuple[int, str]]:
    if rule.quote is None:
        return []
    quotes = df.set_index(LINE)[rule.quote]
    lines = [int(row[LINE]) for row in result.get("unexpected_index_list") or []][:max_examples]
    return [(line, _quote(quotes[line])) for line in lines]


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def _detail(outcome: Any) -> str:
    if outcome.exception_info.get("raised_exception"):
        return f"error: {outcome.exception_info.get('exception_message')}"
    result = outcome.result
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} of {result['element_count']} rows"
    if "observed_value" in result:
        return f"observed {result['observed_value']}"
    return ""


def _build_docs(context: Any, results: list[Any]) -> str | None:
    """The Data Docs pages of these checkpoint results and their suites, and the index, in one build; the index path."""
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    pages = []
    for result in results:
        for result_id, validation in result.run_results.items():
            pages += [result_id, ExpectationSuiteIdentifier(name=validation.suite_name)]
    context.build_data_docs(resource_identifiers=pages)
    return _docs_index(context)


def _docs_index(context: Any) -> str | None:
    for site in context.get_docs_sites_urls():
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return unquote(urlparse(url).path)
    return None
