"""What a validation run found, in the words a person fixing the data needs: file, rule, lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARSE = "parse"  # the ``expectation`` of a file that could not be read as JSONL at all


@dataclass(frozen=True)
class Failure:
    file: str
    rule: str  # the rule as a person reads it
    expectation: str  # GX expectation type, or "parse"
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line, offending value)
    detail: str = ""  # e.g. "3 of 1200 rows", "observed 0.81", the parser's message

    @property
    def lines(self) -> list[int]:
        return [line for line, _ in self.examples]


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    failures: list[Failure]
    rows: dict[str, int]  # rows read per file (files that failed to parse are absent)
    data_docs_index: str | None = None
    # rows whose (prompt, pair) appears again with chosen and rejected swapped, per preference file read
    contradicting_pairs: dict[str, int] = field(default_factory=dict)
    reused: bool = False  # the same bytes passed the same suites before: that validation's report, not run again

    def summary(self) -> str:
        rows = "rows read: " + (", ".join(f"{Path(file).name} {n}" for file, n in self.rows.items()) or "none")
        contradicting = "".join(
            f"; {Path(file).name}: {n} of {self.rows[file]} rows contradict another (chosen and rejected swapped)"
            for file, n in self.contradicting_pairs.items()
            if n
        )
        if self.success:
            again = " (the same files passed the same suites before; not run again)" if self.reused else ""
            return f"data validation passed{again}; {rows}{contradicting}"
        lines = [f"data validation FAILED: {len(self.failures)} rule(s) broken; {rows}{contradicting}"]
        for failure in self.failures:
            detail = f" ({failure.detail})" if failure.detail else ""
            lines.append(f"- {failure.file}: {failure.rule} [{failure.expectation}]{detail}")
            lines += [f"    line {line}: {value}" for line, value in failure.examples]
        if self.data_docs_index:
            lines.append(f"Data Docs: {self.data_docs_index}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
