"""Label Studio and Argilla: the pairs go out in each tool's import format, and each tool's export comes back as the
project's labels lines, the known answer worked out by hand per pair (majority, a split vote a tie, cancelled or
discarded answers left out, unanswered pairs absent). The Argilla files are made by Argilla's own SDK; the Label
Studio export follows its documented task format (https://labelstud.io/guide/task_format), as its server writes it."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from components.data.files import DataFileError
from components.labelling import labelling_tools
from components.labelling.pairwise_labels import CHOICES

SHOWN = [{"pair_id": f"p{n}", "prompt": f"prompt {n} </script>", "A": f"a{n}", "B": f"b{n}"} for n in range(1, 6)]


def write(path: Path, items) -> Path:
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def test_the_pairs_go_out_as_both_tools_import_them(tmp_path):
    written = labelling_tools.write_imports(tmp_path, SHOWN)
    assert [p.name for p in written] == ["label-studio-tasks.json", "label-studio-config.xml", "argilla-records.json"]
    tasks = json.loads((tmp_path / "label-studio-tasks.json").read_text(encoding="utf-8"))
    assert tasks == [{"data": row} for row in SHOWN]
    config = ET.fromstring((tmp_path / "label-studio-config.xml").read_text(encoding="utf-8"))
    texts = {t.get("name"): t.get("value") for t in config.iter("Text")}
    assert texts == {"prompt": "$prompt", "A": "$A", "B": "$B"}  # each names a key of the tasks' data
    [choices] = config.iter("Choices")
    assert choices.get("name") == "choice" and [c.get("value") for c in choices.iter("Choice")] == list(CHOICES)

    rg = pytest.importorskip("argilla")  # a dev dependency: this skip only outside the suite's environment
    records = [rg.Record.from_dict(item) for item in json.loads((tmp_path / "argilla-records.json").read_text())]
    assert [(r.id, dict(r.fields)) for r in records] == [
        (row["pair_id"], {"prompt": row["prompt"], "A": row["A"], "B": row["B"]}) for row in SHOWN
    ]


def argilla_export(tmp_path: Path, flatten: bool) -> Path:
    """Records imported from our file and answered, exported by Argilla's SDK as to_json / to_list(flatten) do."""
    import argilla as rg
    from argilla.records._io import GenericIO

    labelling_tools.write_imports(tmp_path, SHOWN)
    records = [rg.Record.from_dict(item) for item in json.loads((tmp_path / "argilla-records.json").read_text())]
    people = [uuid.uuid4() for _ in range(3)]
    given = {  # pair: (person, choice, status)
        "p1": [(0, "A", "submitted"), (1, "A", "submitted"), (2, "B", "submitted")],
        "p2": [(0, "A", "submitted"), (1, "B", "submitted")],
        "p3": [],
        "p4": [(2, "tie", "submitted")],
        "p5": [(0, "B", "submitted"), (1, "A", "discarded")],
    }
    for record in records:
        for person, choice, status in given[record.id]:
            record.responses.add(rg.Response("choice", choice, user_id=people[person], status=status))
    return write(tmp_path / "export.json", GenericIO.to_list(records, flatten=flatten))


def test_an_argilla_export_reads_as_the_majority_of_each_pair(tmp_path):
    pytest.importorskip("argilla")
    # nested (to_json, to_disk): every response, the discarded one too; flattened: only the submitted ones
    tool, nested = labelling_tools.read_export(argilla_export(tmp_path / "nested", flatten=False))
    assert tool == "Argilla"
    assert nested == [
        {"pair_id": "p1", "choice": "A"},  # A, A, B
        {"pair_id": "p2", "choice": "tie"},  # A, B: split
        {"pair_id": "p4", "choice": "tie"},  # p3: nobody answered
        {"pair_id": "p5", "choice": "tie"},  # B, A (discarded, but the nested export does not say so)
    ]
    _, flat = labelling_tools.read_export(argilla_export(tmp_path / "flat", flatten=True))
    assert flat[:3] == nested[:3] and flat[3] == {"pair_id": "p5", "choice": "B"}


def label_studio_task(task_id: int, pair: dict, annotations: list[dict]) -> dict:
    return {"id": task_id, "data": pair, "annotations": annotations, "predictions": [], "project": 7}


def choice(value: str, cancelled: bool = False) -> dict:
    return {
        "id": 1000,
        "result": [
            {
                "from_name": "choice",
                "id": "r1",
                "to_name": "prompt",
                "type": "choices",
                "value": {"choices": [value]},
                "origin": "manual",
            }
        ],
        "was_cancelled": cancelled,
        "ground_truth": False,
        "completed_by": 3,
        "lead_time": 4.2,
    }


def pairwise(side: str) -> dict:  # the Pairwise template: its first object (here A) is left
    result = {"from_name": "pw", "to_name": "A,B", "type": "pairwise", "value": {"selected": side}}
    return {"id": 1001, "result": [result], "was_cancelled": False, "completed_by": 4}


def test_a_label_studio_export_reads_as_the_majority_of_each_pair(tmp_path):
    tasks = [
        label_studio_task(11, SHOWN[0], [choice("B"), choice("B"), choice("A")]),
        label_studio_task(12, SHOWN[1], [choice("A"), choice("B", cancelled=True)]),
        label_studio_task(13, SHOWN[2], []),
        label_studio_task(14, SHOWN[3], [pairwise("right")]),
        label_studio_task(15, SHOWN[4], [pairwise("left"), choice("B")]),
    ]
    tool, labels = labelling_tools.read_export(write(tmp_path / "project-7-at-2026-12-06.json", tasks))
    assert tool == "Label Studio"
    assert labels == [
        {"pair_id": "p1", "choice": "B"},  # B, B, A
        {"pair_id": "p2", "choice": "A"},  # the cancelled B left out
        {"pair_id": "p4", "choice": "B"},  # right is B; p3: nobody answered
        {"pair_id": "p5", "choice": "tie"},  # A (left), B: split
    ]


def test_an_export_that_breaks_a_rule_is_refused_naming_the_file_the_item_and_the_rule(tmp_path):
    bad_choice = write(tmp_path / "ls.json", [label_studio_task(1, SHOWN[0], [choice("A")]), {"data": {}}])
    with pytest.raises(DataFileError, match=r"ls\.json: every Label Studio item names its pair_id: item 2"):
        labelling_tools.read_export(bad_choice)
    unknown = write(tmp_path / "ls2.json", [label_studio_task(1, SHOWN[0], [choice("C")])])
    with pytest.raises(DataFileError, match=r"ls2\.json: choice is A, B, tie: item 1 \(pair p1\): 'C'"):
        labelling_tools.read_export(unknown)
    neither = write(tmp_path / "other.json", [{"pair": "p1"}])
    with pytest.raises(DataFileError, match=r"other\.json: a labels file, or a Label Studio or Argilla JSON export"):
        labelling_tools.read_export(neither)
    broken = tmp_path / "cut.json"
    broken.write_text('[{"data": {"pair_id": "p1"}', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"cut\.json: a JSON export that parses"):
        labelling_tools.read_export(broken)


def test_a_labels_file_is_used_as_it_is_and_an_export_is_read_into_one(tmp_path):
    native = tmp_path / "labels.jsonl"
    native.write_text('{"pair_id": "p1", "choice": "A"}\n', encoding="utf-8")
    assert labelling_tools.as_labels_file(native, tmp_path / "run") == native
    export = write(tmp_path / "export.json", [label_studio_task(1, SHOWN[0], [choice("tie")])])
    converted = labelling_tools.as_labels_file(export, tmp_path / "run")
    assert converted == tmp_path / "run" / "labels-from-label-studio.jsonl"
    assert [json.loads(line) for line in converted.read_text(encoding="utf-8").splitlines()] == [
        {"pair_id": "p1", "choice": "tie"}
    ]


@pytest.mark.parametrize(
    "answers, expected",
    [(["A"], "A"), (["A", "A", "B"], "A"), (["A", "B"], "tie"), (["A", "B", "tie"], "tie"), (["tie", "B", "B"], "B")],
)
def test_majority(answers, expected):
    assert labelling_tools.majority(answers) == expected
