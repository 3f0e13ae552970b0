"""The data files of the pipeline: their schemas and strict JSONL reading (writing them: ``components.io``).

Schemas (one JSON object per line, UTF-8 with or without a byte order mark, every line ends with a newline):
- ``demonstrations.jsonl``: ``{prompt, response}`` plus optional metadata.
- ``preferences.jsonl``: ``{prompt, chosen, rejected}`` plus optional metadata
  (``chosen_position``: 0 if the labeler was shown the chosen response first, else 1).
- ``eval_prompts.jsonl``: ``{prompt}`` plus optional metadata.
A human judge's labels file: ``{pair_id, choice}`` (choice A, B or tie), one line per answered pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMONSTRATIONS = "demonstrations"
PREFERENCES = "preferences"
EVAL_PROMPTS = "eval_prompts"
MANIFEST = "manifest.json"
UTF8_BOM = b"\xef\xbb\xbf"

LABELS = "labels"  # people's answers to blinded pairs (components/evaluation/pairwise.py)

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    DEMONSTRATIONS: ("prompt", "response"),
    PREFERENCES: ("prompt", "chosen", "rejected"),
    EVAL_PROMPTS: ("prompt",),
    LABELS: ("pair_id", "choice"),
}
DATASETS = (DEMONSTRATIONS, PREFERENCES, EVAL_PROMPTS)  # the data set's files


def file_name(dataset: str) -> str:
    return f"{dataset}.jsonl"


class DataFileError(ValueError):
    """A data file that breaks a rule, with the file, the 1-based line and the rule."""

    def __init__(self, path: str | Path, line: int | None, rule: str, detail: str):
        self.path, self.line, self.rule, self.detail = str(path), line, rule, detail
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {rule}: {detail}")


@dataclass(frozen=True)
class Record:
    line: int
    data: dict[str, Any]


def read_jsonl(path: str | Path, dataset: str | None = None) -> list[Record]:
    """Read a JSONL file strictly: UTF-8, one object per line, required string fields present.

    Raises DataFileError naming the first offending line and the rule it breaks.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(path, None, "file is readable", str(exc)) from exc
    raw = raw.removeprefix(UTF8_BOM)  # spreadsheet and editor exports often start with one
    if not raw:
        raise DataFileError(path, None, "file is not empty", "0 bytes")
    _refuse_json_array(path, raw)
    if not raw.endswith(b"\n"):
        line_count = raw.count(b"\n") + 1
        raise DataFileError(path, line_count, "file ends with a newline", "last line is cut off (truncated file?)")
    records: list[Record] = []
    for number, line_bytes in enumerate(raw.split(b"\n")[:-1], start=1):
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFileError(path, number, "UTF-8 text", f"byte {exc.start}: invalid UTF-8") from None
        if not text.strip():
            raise DataFileError(path, number, "one JSON object per line", "blank line")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(
                path, number, "one JSON object per line", f"malformed JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataFileError(path, number, "one JSON object per line", f"got {type(obj).__name__}")
        if dataset is not None:
            _check_fields(path, number, dataset, obj)
        records.append(Record(number, obj))
    return records


def _refuse_json_array(path: Path, raw: bytes) -> None:
    """A whole file that is one JSON array is a common mistake: name it, rather than a confusing line error."""
    if not raw.lstrip().startswith(b"["):
        return
    try:
        items = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        items = None
    size = f"a JSON array of {len(items)} items" if isinstance(items, list) else "what looks like a JSON array"
    raise DataFileError(
        path, 1, "JSON Lines (one JSON object per line)", f"the file is {size}; write one object per line instead"
    )


def _check_fields(path: Path, number: int, dataset: str, obj: dict[str, Any]) -> None:
    for field in REQUIRED_FIELDS[dataset]:
        if field not in obj:
            raise DataFileError(path, number, f"required field '{field}'", "missing")
        if not isinstance(obj[field], str):
            raise DataFileError(path, number, f"field '{field}' is a string", f"got {type(obj[field]).__name__}")
