"""Pairs out to, and answers in from, the tools teams label with: Label Studio and Argilla.

Out, beside the offline page: the pairs people see (``{pair_id, prompt, A, B}``) as a Label Studio import (tasks
JSON, and the labelling config that shows them with an A / B / tie choice) and as Argilla records (the shape of
``rg.Record.from_dict``, with a ``choice`` label question A / B / tie).

In: either tool's JSON export, read into this project's labels lines ``{pair_id, choice}``, which then pass the same
rules as a labels file from the page (components/labelling/pairwise_labels.py):
- Label Studio's JSON export: every task's ``data.pair_id``; from each annotation not cancelled, the ``choice``
  control's answer (``choices``), or a ``Pairwise`` control's (left is A, right is B).
- Argilla's ``records.to_json`` / ``to_disk`` records (nested), or ``records.to_list(flatten=True)`` rows: the record
  ``id`` is the pair_id; the ``choice`` question's responses (flattened rows: only those ``submitted``).
A pair several people answered gets their majority's choice, and a split vote is a tie. A pair nobody answered gives
no line.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from components import io
from components.data.files import UTF8_BOM, DataFileError
from components.labelling.pairwise_labels import CHOICES

QUESTION = "choice"  # the name of the answer in both tools (Label Studio's control, Argilla's question)
LABEL_STUDIO_TASKS, LABEL_STUDIO_CONFIG_FILE = "label-studio-tasks.json", "label-studio-config.xml"
ARGILLA_RECORDS = "argilla-records.json"
LABEL_STUDIO, ARGILLA = "Label Studio", "Argilla"
PAIRWISE_SIDES = {"left": "A", "right": "B"}  # Label Studio's Pairwise control: its first object is A

LABEL_STUDIO_CONFIG = f"""<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;"><Header value="A" size="5"/><Text name="A" value="$A"/></View>
    <View style="flex: 1;"><Header value="B" size="5"/><Text name="B" value="$B"/></View>
  </View>
  <Choices name="{QUESTION}" toName="prompt" choice="single" showInline="true" required="true">
{chr(10).join(f'    <Choice value="{choice}"/>' for choice in CHOICES)}
  </Choices>
</View>
"""


def label_studio_tasks(shown: Sequence[Mapping[str, str]]) -> list[dict]:
    """Label Studio's import format: one task per pair, its texts under ``data``."""
    return [{"data": {name: row[name] for name in ("pair_id", "prompt", "A", "B")}} for row in shown]


def argilla_records(shown: Sequence[Mapping[str, str]]) -> list[dict]:
    """Argilla records as ``rg.Record.from_dict`` reads them; the pair_id is the record's own id."""
    return [
        {
            "id": row["pair_id"],
            "fields": {name: row[name] for name in ("prompt", "A", "B")},
            "metadata": {},
            "suggestions": {},
            "responses": {},
            "vectors": {},
        }
        for row in shown
    ]


def write_imports(directory: Path, shown: Sequence[Mapping[str, str]]) -> list[Path]:
    """The pairs as both tools import them, in ``directory``; the files written."""
    files = {
        LABEL_STUDIO_TASKS: json.dumps(label_studio_tasks(shown), ensure_ascii=False, indent=1),
        LABEL_STUDIO_CONFIG_FILE: LABEL_STUDIO_CONFIG,
        ARGILLA_RECORDS: json.dumps(argilla_records(shown), ensure_ascii=False, indent=1),
    }
    for name, text in files.items():
        io.atomic_write_bytes(directory / name, text.encode("utf-8"))
    return [directory / name for name in files]


def tool_of(path: Path) -> str | None:
    """Which tool exported ``path`` (a JSON array), or None for a labels file of JSON lines."""
    items = _json_array(path)
    if items is None:
        return None
    first = next((item for item in items if isinstance(item, dict)), {})
    if "annotations" in first or "data" in first:
        return LABEL_STUDIO
    if "fields" in first or "responses" in first or f"{QUESTION}.responses" in first:
        return ARGILLA
    raise DataFileError(
        path, None, "a labels file, or a Label Studio or Argilla JSON export", "a JSON array of neither tool's items"
    )


def read_export(path: Path) -> tuple[str, list[dict]]:
    """A tool's export as labels lines ``{pair_id, choice}``, in the export's order; and the tool's name."""
    tool = tool_of(path)
    if tool is None:
        raise DataFileError(path, None, "a Label Studio or Argilla JSON export", "JSON lines, not a JSON array")
    items = _json_array(path) or []
    answers_of = _label_studio_answers if tool == LABEL_STUDIO else _argilla_answers
    labels = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataFileError(path, None, f"every {tool} item is an object", f"item {number}: {type(item).__name__}")
        pair_id, answers = answers_of(item)
        if not isinstance(pair_id, str) or not pair_id:
            raise DataFileError(path, None, f"every {tool} item names its pair_id", f"item {number}: none")
        unknown = [answer for answer in answers if answer not in CHOICES]
        if unknown:
            raise DataFileError(
                path, None, f"choice is {', '.join(CHOICES)}", f"item {number} (pair {pair_id}): {unknown[0]!r}"
            )
        if answers:
            labels.append({"pair_id": pair_id, "choice": majority(answers)})
    return tool, labels


def as_labels_file(path: Path, directory: Path) -> Path:
    """``path`` itself when it is a labels file of JSON lines; a tool's export read into one in ``directory``."""
    if tool_of(path) is None:
        return path
    tool, labels = read_export(path)
    converted = directory / f"labels-from-{tool.lower().replace(' ', '-')}.jsonl"
    directory.mkdir(parents=True, exist_ok=True)
    io.write_jsonl(converted, labels)
    return converted


def majority(answers: Iterable[str]) -> str:
    """The choice most people made; a tie where the most-made choices are level."""
    counts = Counter(answers).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def _label_studio_answers(task: dict) -> tuple[Any, list[str]]:
    answers = []
    for annotation in task.get("annotations") or []:
        if annotation.get("was_cancelled"):
            continue
        for result in annotation.get("result") or []:
            if result.get("from_name") != QUESTION and result.get("type") != "pairwise":
                continue
            value = result.get("value") or {}
            if result.get("type") == "pairwise":
                answers.append(PAIRWISE_SIDES.get(value.get("selected"), value.get("selected")))
            elif value.get("choices"):
                answers.append(value["choices"][0])
    return (task.get("data") or {}).get("pair_id"), answers


def _argilla_answers(record: dict) -> tuple[Any, list[str]]:
    pair_id = record.get("id") or (record.get("metadata") or {}).get("pair_id")
    if "responses" in record:  # nested (to_json, to_disk): every response given
        return pair_id, [response.get("value") for response in (record["responses"] or {}).get(QUESTION) or []]
    values = record.get(f"{QUESTION}.responses") or []
    statuses = record.get(f"{QUESTION}.responses.status") or [None] * len(values)
    return pair_id, [value for value, status in zip(values, statuses) if status in (None, "submitted")]


def _json_array(path: Path) -> list | None:
    try:
        raw = Path(path).read_bytes().removeprefix(UTF8_BOM)
    except OSError as exc:
        raise DataFileError(path, None, "file is readable", str(exc)) from exc
    if not raw.lstrip().startswith(b"["):
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError(path, None, "a JSON export that parses", str(exc)[:200]) from None
