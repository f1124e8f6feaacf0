"""Data errors and the load report: how bad input is named, skipped and counted.

Every problem with input data is a `DataError` whose message is one line naming the
file, the row and the problem (DESIGN.md §5). Row-level problems can instead be skipped
with `skip_bad_rows=True`; each skip is then recorded in the `LoadReport` (file, row,
reason, problem), so nothing is ever dropped silently.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


def one_line(text: str) -> str:
    """Collapse any line breaks so a message always prints as a single line."""
    return " ".join(str(text).split("\n")).replace("\r", " ")


@dataclass(frozen=True)
class RowRef:
    """Where a row lives. `kind` is "line" (1-based JSONL line number) or "row"
    (0-based row index in a Parquet file or a hub split)."""

    file: str
    index: int
    kind: str = "line"

    def __str__(self) -> str:
        return f"{self.file}, {self.kind} {self.index}"


class RowProblem(Exception):
    """A problem found in one row, before the row's location is attached.
    `reason` is a short stable code used for counting (e.g. "missing_field")."""

    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason = reason
        self.problem = one_line(problem)

    def __reduce__(self):  # picklable across Ray workers (Exception pickles only .args)
        return (RowProblem, (self.reason, self.problem))


class DataError(ValueError):
    """Bad input data. `str(err)` is one line: "<file>, line 7: <problem>" for a row,
    "<file>: <problem>" for a whole file or source. `row` is None for file-level errors."""

    def __init__(self, file: str, problem: str, *, reason: str, row: int | None = None, row_kind: str = "line"):
        self.file = str(file)
        self.row = row
        self.row_kind = row_kind
        self.reason = reason
        self.problem = one_line(problem)
        where = self.file if row is None else f"{self.file}, {row_kind} {row}"
        super().__init__(f"{where}: {self.problem}")

    def __reduce__(self):
        return (_rebuild_data_error, (self.file, self.problem, self.reason, self.row, self.row_kind))

    @classmethod
    def at(cls, ref: RowRef, problem: RowProblem) -> "DataError":
        return cls(ref.file, problem.problem, reason=problem.reason, row=ref.index, row_kind=ref.kind)


def _rebuild_data_error(file: str, problem: str, reason: str, row: int | None, row_kind: str) -> DataError:
    return DataError(file, problem, reason=reason, row=row, row_kind=row_kind)


def format_data_error(exc: BaseException) -> str:
    """One terminal line for an error, no traceback: "<file>, line 7: <problem>" for a
    DataError (the caller adds its own prefix, e.g. "idrm-ray: data error: "), and
    "<TypeName>: <message>" for any other exception (still one line)."""
    if isinstance(exc, DataError):
        return one_line(str(exc))
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class SkippedRow:
    file: str
    row: int
    row_kind: str
    reason: str
    problem: str


@dataclass
class LoadReport:
    """What a loader read, kept and skipped. Counts go to the run's metrics
    (`metrics()`); the skipped rows themselves to `write_skipped(run_dir)`."""

    source: str
    format: str = "auto"
    files: list[str] = field(default_factory=list)
    rows_read: int = 0  # non-blank rows seen (parsed or not)
    rows_kept: int = 0
    nli_unlabeled_dropped: int = 0  # NLI rows with label -1 (SNLI: no gold label), dropped by rule
    blank_lines: int = 0  # empty JSONL lines (not rows; counted so nothing is invisible)
    bom_files: list[str] = field(default_factory=list)  # files whose leading UTF-8 BOM was removed
    stopped_at_max_rows: bool = False
    skipped: list[SkippedRow] = field(default_factory=list)

    def skip(self, err: DataError) -> None:
        self.skipped.append(SkippedRow(err.file, int(err.row or 0), err.row_kind, err.reason, err.problem))

    @property
    def rows_skipped(self) -> int:
        return len(self.skipped)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def metrics(self, prefix: str = "data/") -> dict[str, int]:
        out = {
            f"{prefix}rows_read": self.rows_read,
            f"{prefix}rows_kept": self.rows_kept,
            f"{prefix}rows_skipped": self.rows_skipped,
            f"{prefix}nli_unlabeled_dropped": self.nli_unlabeled_dropped,
            f"{prefix}blank_lines": self.blank_lines,
        }
        out.update({f"{prefix}skipped/{reason}": n for reason, n in self.skipped_by_reason.items()})
        return out

    def summary(self) -> str:
        """One line, e.g. "pref.jsonl (generic): read 10, kept 8, skipped 2 (empty_text: 2)"."""
        line = f"{self.source} ({self.format}): read {self.rows_read}, kept {self.rows_kept}, skipped {self.rows_skipped}"
        if self.skipped:
            line += " (" + ", ".join(f"{r}: {n}" for r, n in self.skipped_by_reason.items()) + ")"
        if self.nli_unlabeled_dropped:
            line += f", unlabeled dropped {self.nli_unlabeled_dropped}"
        return line

    def write_skipped(self, run_dir: str | Path, filename: str = "skipped_rows.jsonl") -> Path:
        """Write one JSON object per skipped row (file, row, row_kind, reason, problem) to
        `run_dir/filename`. The file is written even when nothing was skipped."""
        path = Path(run_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for s in self.skipped:
                f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
        return path
