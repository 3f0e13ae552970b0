"""A small data set in the schemas of components.data.files, for the data gate's tests and the flows' bad-data
tests: a good directory, and the single defects (each a function of the directory) the gate must name."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.config import RowBounds, ValidationConfig
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES, file_name
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
    "json_array": Defect(
        PREFERENCES,
        set_bytes(PREFERENCES, lambda raw: json.dumps([json.loads(line) for line in raw.splitlines()]).encode()),
        "parse",
        "JSON Lines",
        1,
    ),
    "contradicting_pair": Defect(
        PREFERENCES,
        edit_row(
            PREFERENCES,
            5,
            prompt=PREFERENCES_ROWS[0]["prompt"],
            chosen=PREFERENCES_ROWS[0]["rejected"],
            rejected=PREFERENCES_ROWS[0]["chosen"],
        ),
        "expect_column_values_to_be_in_set",
        "contradict another",
        5,
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
