"""The data rules, declared as plain data: one suite of expectations per data file.

No Great Expectations here: ``components/adapters/validation.py`` turns each
``Expectation`` into its GX class by name and runs it. Rules that GX cannot state on the raw
columns (word counts, out-of-vocabulary counts, leaked eval prompts) are checked on derived
columns that ``frame`` computes with pandas, next to the 1-based ``line`` of every row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from components.config import ValidationConfig
from components.data.files import EVAL_PROMPTS, PREFERENCES, REQUIRED_FIELDS, Record
from components.data.text import words

LINE = "line"
CHOSEN_POSITION = "chosen_position"
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
PROMPT_IS_EVAL = "prompt_is_eval"
CONTRADICTS = "contradicts_another_pair"  # the same prompt and pair appear again with chosen and rejected swapped
PAIR = ("prompt", "chosen", "rejected")
KNOWN_CHARACTERS = r"\A[A-Za-z .,!?]*\Z"  # what ``text.words`` keeps; anything else it would drop silently


@dataclass(frozen=True)
class Expectation:
    kind: str  # the GX expectation type, e.g. "expect_column_values_to_be_between"
    description: str  # the rule as a person reads it; unique within a suite
    kwargs: dict[str, Any] = field(default_factory=dict)
    quote: str | None = None  # column whose value is quoted for an offending row

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")


def text_columns(dataset: str) -> tuple[str, ...]:
    return REQUIRED_FIELDS[dataset]


def words_column(column: str) -> str:
    return f"{column}_words"


def oov_column(column: str) -> str:
    return f"{column}_oov"


def _normalised(text: str) -> str:
    """Case and spacing do not make two texts different."""
    return " ".join(text.lower().split())


def word_count(text: str) -> int:
    """Whitespace-separated words, one rule for any text ("great." and "10/10" are one word each)."""
    return len(text.split())


def frame(
    dataset: str,
    records: Iterable[Record],
    cfg: ValidationConfig,
    vocabulary: frozenset[str] | None,
    eval_prompts: frozenset[str] | None,
) -> pd.DataFrame:
    """The checked columns of one file plus the derived ones, one row per line."""
    records = list(records)
    columns = list(text_columns(dataset))
    if dataset == PREFERENCES and any(CHOSEN_POSITION in r.data for r in records):
        columns.append(CHOSEN_POSITION)
    df = pd.DataFrame([[r.data.get(c) for c in columns] for r in records], columns=columns, dtype=object)
    df[LINE] = [r.line for r in records]
    for column in text_columns(dataset):
        texts = df[column].astype(str)
        distinct = set(texts)  # prompts repeat across rows: count each text once
        counts = {t: word_count(t) for t in distinct}
        df[words_column(column)] = [counts[t] for t in texts]
        if cfg.check_vocabulary and vocabulary is not None:
            oov = {t: sum(w not in vocabulary for w in words(t)) for t in distinct}
            df[oov_column(column)] = [oov[t] for t in texts]
    if dataset == PREFERENCES:
        df[CHOSEN_EQUALS_REJECTED] = [_normalised(c) == _normalised(r) for c, r in zip(df["chosen"], df["rejected"])]
        pairs = [tuple(_normalised(str(t)) for t in row) for row in zip(df["prompt"], df["chosen"], df["rejected"])]
        seen = set(pairs)
        # chosen == rejected is its own swap: that is the rule above, not a contradiction
        df[CONTRADICTS] = [c != r and (p, r, c) in seen for p, c, r in pairs]
    if dataset != EVAL_PROMPTS and eval_prompts is not None:
        held_out = {_normalised(p) for p in eval_prompts}
        df[PROMPT_IS_EVAL] = [_normalised(p) in held_out for p in df["prompt"]]
    return df


def _text_rules(column: str, cfg: ValidationConfig, vocabulary: frozenset[str] | None) -> list[Expectation]:
    if column == "prompt":
        low, high = None, cfg.max_prompt_words
        length = f"'{column}' has at most {high} words"
    else:
        low, high = cfg.min_response_words, cfg.max_response_words
        length = f"'{column}' has {low} to {high} words"
    rules = [
        Expectation("expect_column_to_exist", f"has a '{column}' field", {"column": column}),
        Expectation("expect_column_values_to_not_be_null", f"'{column}' is not null", {"column": column}, column),
        Expectation(
            "expect_column_values_to_match_regex",
            f"'{column}' is not empty",
            {"column": column, "regex": r"\S"},
            column,
        ),
        Expectation(
            "expect_column_values_to_be_between",
            length,
            {"column": words_column(column), "min_value": low, "max_value": high},
            column,
        ),
    ]
    if cfg.check_vocabulary:
        rules.append(
            Expectation(
                "expect_column_values_to_match_regex",
                f"'{column}' uses only letters, spaces and . , ! ?",
                {"column": column, "regex": KNOWN_CHARACTERS},
                column,
            )
        )
        if vocabulary is not None:
            rules.append(
                Expectation(
                    "expect_column_values_to_be_in_set",
                    f"every word of '{column}' is in the task's vocabulary",
                    {"column": oov_column(column), "value_set": [0]},
                    column,
                )
            )
    return rules


def suite(
    dataset: str,
    columns: Iterable[str],
    cfg: ValidationConfig,
    vocabulary: frozenset[str] | None,
    eval_prompts: frozenset[str] | None,
) -> list[Expectation]:
    """The rules of one data file; ``columns`` are those of its ``frame`` (optional rules need theirs)."""
    columns = set(columns)
    rules = [rule for column in text_columns(dataset) for rule in _text_rules(column, cfg, vocabulary)]
    if dataset == PREFERENCES:
        rules += [
            Expectation(
                "expect_column_values_to_be_in_set",
                "'chosen' differs from 'rejected'",
                {"column": CHOSEN_EQUALS_REJECTED, "value_set": [False]},
                "chosen",
            ),
            Expectation(
                "expect_column_values_to_be_in_set",
                f"at most {cfg.max_contradicting_share:.1%} of pairs contradict another "
                "(the same prompt and pair with chosen and rejected swapped)",
                {"column": CONTRADICTS, "value_set": [False], "mostly": 1 - cfg.max_contradicting_share},
                "chosen",
            ),
            Expectation(
                "expect_compound_columns_to_be_unique",
                "no duplicate (prompt, chosen, rejected) pair",
                {"column_list": list(PAIR)},
                "chosen",
            ),
        ]
        if CHOSEN_POSITION in columns:
            low, high = cfg.chosen_position_min, cfg.chosen_position_max
            rules += [
                Expectation(
                    "expect_column_values_to_be_in_set",
                    "'chosen_position' is 0 or 1",
                    {"column": CHOSEN_POSITION, "value_set": [0, 1]},
                    CHOSEN_POSITION,
                ),
                Expectation(
                    "expect_column_mean_to_be_between",
                    f"label balance: mean of 'chosen_position' is between {low} and {high}",
                    {"column": CHOSEN_POSITION, "min_value": low, "max_value": high},
                ),
            ]
    if dataset == EVAL_PROMPTS:
        rules.append(
            Expectation("expect_column_values_to_be_unique", "no duplicate eval prompt", {"column": "prompt"}, "prompt")
        )
    elif eval_prompts is not None:
        rules.append(
            Expectation(
                "expect_column_values_to_be_in_set",
                "no eval prompt among the training prompts",
                {"column": PROMPT_IS_EVAL, "value_set": [False]},
                "prompt",
            )
        )
    bounds = getattr(cfg, f"{dataset}_rows")
    rules.append(
        Expectation(
            "expect_table_row_count_to_be_between",
            f"has {bounds.min} to {bounds.max} rows",
            {"min_value": bounds.min, "max_value": bounds.max},
        )
    )
    return rules
