"""`load_preferences` and `load_nli`: read a source, validate every row, return records
plus a `LoadReport`. Validation happens here, before any tokenizer or GPU sees the data."""
from __future__ import annotations

import os
from typing import Any

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.errors import DataError, LoadReport, RowProblem
from idrm_ray.data.formats import FORMATS, PREFERENCE_FORMATS, FormatSpec, NLIExample, detect_format, schema_problems
from idrm_ray.data.readers import resolve_source

Source = str | os.PathLike


def load_preferences(
    source: Source,
    *,
    format: str = "auto",
    split: str | None = None,
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    hub_kwargs: dict[str, Any] | None = None,
) -> tuple[list[PreferenceExample], LoadReport]:
    """Preference pairs from a JSONL/Parquet file, a directory of them, or a hub id.

    `format`: "auto" (detected from the first readable row), "generic", "hh" or
    "ultrafeedback". `split` picks files in a directory and the hub split ("train" when
    None; ignored for a single file). `max_rows` stops after that many kept pairs.
    `hub_kwargs` go to `datasets.load_dataset` (e.g. `data_dir="harmless-base"`).
    Raises `DataError` on the first bad row unless `skip_bad_rows`.
    """
    if format not in ("auto", *PREFERENCE_FORMATS):
        raise ValueError(f"unknown preference format {format!r}; use auto, {', '.join(PREFERENCE_FORMATS)}")
    return _load(source, format, split=split, skip_bad_rows=skip_bad_rows, max_rows=max_rows, hub_kwargs=hub_kwargs)


def load_nli(
    source: Source,
    *,
    split: str | None = None,
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    hub_kwargs: dict[str, Any] | None = None,
) -> tuple[list[NLIExample], LoadReport]:
    """NLI triples (premise, hypothesis, label 0/1/2). Rows labelled -1 (SNLI's "no gold
    label") are dropped by rule and counted in `report.nli_unlabeled_dropped`."""
    return _load(source, "nli", split=split, skip_bad_rows=skip_bad_rows, max_rows=max_rows, hub_kwargs=hub_kwargs)


def _spec_for(row: dict[str, Any]) -> FormatSpec:
    found = detect_format(row)
    if found == "nli":
        raise RowProblem("unknown_format", "fields look like NLI data (premise, hypothesis); use load_nli")
    return FORMATS[found]


def _detect(data_file, row: dict[str, Any]) -> FormatSpec:
    """The format from the first readable row. Where the file has a schema (Parquet, hub)
    every row has the same fields, so an undetectable format is a whole-file problem."""
    try:
        return _spec_for(row)
    except RowProblem as problem:
        columns = data_file.columns()
        if columns is None:
            raise
        raise DataError(data_file.name, f"{problem.problem} (columns: {', '.join(columns)})", reason="wrong_schema") from None


def _check_schema(data_file, spec: FormatSpec) -> None:
    columns = data_file.columns()
    problems = schema_problems(columns, spec) if columns is not None else []
    if problems:
        problem = f"schema does not match format '{spec.name}': {'; '.join(problems)} (columns: {', '.join(columns)})"
        raise DataError(data_file.name, problem, reason="wrong_schema")


def _load(source: Source, format: str, *, split, skip_bad_rows, max_rows, hub_kwargs) -> tuple[list, LoadReport]:
    report = LoadReport(source=os.fspath(source), format=format)
    files = resolve_source(source, split=split, hub_kwargs=hub_kwargs)
    spec = None if format == "auto" else FORMATS[format]
    records: list = []
    for data_file in files:
        report.files.append(data_file.name)
        checked = False
        for ref, row in data_file.rows():
            report.rows_read += 1
            try:
                if isinstance(row, RowProblem):
                    raise row
                if spec is None:
                    spec = _detect(data_file, row)
                    report.format = spec.name
                if not checked:  # Parquet/hub: whole-file schema check, once the format is known
                    _check_schema(data_file, spec)
                    checked = True
                record = spec.convert(row)
            except RowProblem as problem:
                err = DataError.at(ref, problem)
                if not skip_bad_rows:
                    raise err from None
                report.skip(err)
                continue
            if record is None:
                report.nli_unlabeled_dropped += 1
                continue
            records.append(record)
            if max_rows is not None and len(records) >= max_rows:
                report.stopped_at_max_rows = True
                break
        report.blank_lines += data_file.blank_lines
        if data_file.bom:
            report.bom_files.append(data_file.name)
        if report.stopped_at_max_rows:
            break
    report.rows_kept = len(records)
    if not records:
        raise DataError(report.source, _no_rows_problem(report), reason="no_rows")
    return records, report


def _no_rows_problem(report: LoadReport) -> str:
    if report.rows_read == 0:
        blank = f": only {report.blank_lines} blank lines" if report.blank_lines else ""
        return f"no rows (the data is empty){blank}"
    parts = [f"no valid rows: read {report.rows_read}"]
    if report.skipped:
        first = report.skipped[0]
        where = f"{first.file}, {first.row_kind} {first.row}"
        parts.append(f"skipped {report.rows_skipped} {report.skipped_by_reason}, first: {where}: {first.problem}")
    if report.nli_unlabeled_dropped:
        parts.append(f"{report.nli_unlabeled_dropped} unlabeled (-1) dropped")
    return "; ".join(parts)
