"""Eval data layouts: read a source, validate every row, return an `EvalSet`.

    evals = load_eval_set("allenai/reward-bench")                 # layout detected: rewardbench
    evals = load_eval_set("RMB_dataset/Pairwise_set", layout="rmb")
    evals = load_eval_set("Anthropic/hh-rlhf", layout="hh")        # split "test"
    evals = load_eval_set("pairs.jsonl")                           # generic (or hh transcripts)

Layouts
-------
- `rewardbench`: `prompt, chosen, rejected` strings and a `subset` name (+ optional `id`);
  hub default `allenai/reward-bench`, split `filtered`. Groups are subsets; section scores
  use `rewardbench.SUBSETS`. Auto: rows with `subset` and a string `prompt`.
- `rmb`: RMB's pairwise rows (`rmb.py`); its `.json` array files are read here too (a file,
  or a folder searched recursively). Groups are category paths. Auto: `conversation_input`.
- `hh`, `generic` (and `ultrafeedback`): `idrm_ray.data.load_preferences`, no groups; hub
  default split `test` for hh.
- `rewardbench2` (best-of-N, `rewardbench2.py`): `prompt`, `chosen` / `rejected` lists,
  `subset`, `id`; hub default `allenai/reward-bench-2`, split `test`. Auto: `num_correct` or
  `total_completions` in the row.
- `rmbench` (`rmbench.py`): `prompt`, `chosen` / `rejected` lists of 3 styles, `domain`; hub
  default `THU-KEG/RM-Bench`. Auto: list `chosen` and `rejected` without those counts.
- `rmb-bon` (`rmb.py`): RMB's `BoN_set` rows. Auto: `bon_best`.
The three best-of-N layouts load as a `bestofn.CompletionSet` (N completions per prompt);
the others as an `EvalSet` of pairs.
`render="hh"` (default) wraps a RewardBench prompt as one HH turn ("\\n\\nHuman: {prompt}
\\n\\nAssistant:", responses with HH's leading space), matching HH-trained reward models;
`render="raw"` keeps the strings as they are (use it with a chat `template`).

Errors are `idrm_ray.data.DataError`: one line naming the file, the row ("item N" in a JSON
array) and the problem; `skip_bad_rows=True` skips and counts row problems instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data import DataError, LoadReport, load_preferences
from idrm_ray.data.errors import RowProblem, RowRef
from idrm_ray.data.formats import convert_generic
from idrm_ray.data.readers import resolve_source
from idrm_ray.eval import rewardbench, rewardbench2, rmbench
from idrm_ray.eval.bestofn import Candidates, CompletionSet
from idrm_ray.eval.rmb import convert_rmb, convert_rmb_bon, hh_response

BEST_OF_N_LAYOUTS = ("rewardbench2", "rmbench", "rmb-bon")
LAYOUTS = ("auto", "rewardbench", "rmb", "hh", "generic", "ultrafeedback", *BEST_OF_N_LAYOUTS)
RENDERS = ("hh", "raw")
_HUB_LAYOUTS = {
    rewardbench.HUB_ID: ("rewardbench", rewardbench.HUB_SPLIT),
    rewardbench2.HUB_ID: ("rewardbench2", rewardbench2.HUB_SPLIT),
    rmbench.HUB_ID: ("rmbench", rmbench.HUB_SPLIT),
    "Anthropic/hh-rlhf": ("hh", "test"),
}


@dataclass
class EvalSet:
    """Validated eval pairs; `groups[i]` is pair i's subset / category (None: no groups)."""

    name: str  # short name for output folders, e.g. "reward-bench", "pref_eval"
    layout: str
    source: str
    examples: list[PreferenceExample]
    groups: list[str | None]
    ids: list[str]
    report: LoadReport = field(repr=False)

    def __len__(self) -> int:
        return len(self.examples)


class JsonArrayFile:
    """A `.json` file holding one JSON array of row objects (RMB's layout)."""

    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        self.blank_lines, self.bom = 0, False

    def columns(self) -> None:
        return None

    def rows(self) -> Iterator[tuple[RowRef, Any]]:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise DataError(self.name, f"cannot read file: {e}", reason="unreadable") from None
        self.bom = raw.startswith(b"\xef\xbb\xbf")
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise DataError(
                self.name, f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}", reason="non_utf8"
            ) from None
        except json.JSONDecodeError as e:
            raise DataError(
                self.name, f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})", reason="invalid_json"
            ) from None
        if not isinstance(data, list):
            raise DataError(
                self.name, f"expected a JSON array of rows, got {type(data).__name__}", reason="not_an_object"
            )
        for i, row in enumerate(data):
            ok = isinstance(row, dict)
            yield RowRef(self.name, i, "item"), (
                row if ok else RowProblem("not_an_object", f"expected an object, got {type(row).__name__}")
            )


def eval_files(source: str | os.PathLike, *, split: str | None, hub_kwargs: dict | None = None) -> list:
    """`idrm_ray.data.readers.resolve_source` plus `.json` arrays (a file or inside a folder)."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_file() and path.name.lower().endswith(".json"):
        return [JsonArrayFile(path)]
    if path.is_dir():
        arrays = [
            p for p in sorted(path.rglob("*.json")) if not any(s.startswith(".") for s in p.relative_to(path).parts)
        ]
        if arrays:
            try:
                others = resolve_source(path, split=split)
            except DataError as e:
                if e.reason != "no_data_files":
                    raise
                others = []
            return sorted([JsonArrayFile(p) for p in arrays] + others, key=lambda f: f.name)
    return resolve_source(source, split=split, hub_kwargs=hub_kwargs)


def detect_layout(row: dict[str, Any]) -> str:
    if "bon_best" in row or "loser_list" in row:
        return "rmb-bon"
    if "conversation_input" in row:
        return "rmb"
    if isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        return "rewardbench2" if ("num_correct" in row or "total_completions" in row) else "rmbench"
    if "subset" in row and isinstance(row.get("prompt"), str):
        return "rewardbench"
    return "preferences"  # generic / hh / ultrafeedback: load_preferences decides


def _first_row(files: list) -> dict:
    for data_file in files:
        for ref, row in data_file.rows():
            if isinstance(row, RowProblem):
                raise DataError.at(ref, row)
            return row
    raise DataError(str(files[0].name if files else "?"), "no rows (the data is empty)", reason="no_rows")


def _convert_rewardbench(render: str) -> Callable:
    def convert(row: dict) -> tuple[PreferenceExample, str, str | None]:
        pair = convert_generic({k: row.get(k) for k in ("prompt", "chosen", "rejected") if k in row})
        subset = row.get("subset")
        if not isinstance(subset, str) or not subset.strip():
            raise RowProblem("missing_field", "field 'subset' must be a non-empty string (a RewardBench subset name)")
        if render == "hh":
            pair = PreferenceExample(
                f"\n\nHuman: {pair.prompt.strip()}\n\nAssistant:", hh_response(pair.chosen), hh_response(pair.rejected)
            )
        uid = row.get("id")
        return pair, subset, None if uid is None else str(uid)

    return convert


def _convert_bestofn(layout: str, render: str) -> Callable:
    """Row -> (Candidates, group, id) for a best-of-N layout; "hh" renders as RewardBench does."""

    def convert(row: dict, file_name: str = "") -> tuple[Candidates, str, str | None]:
        if layout == "rmb-bon":
            return convert_rmb_bon(row)
        if layout == "rmbench":
            cand, group, uid = rmbench.convert_row(row, rmbench.domain_of(Path(file_name).name))
        else:
            cand, group, uid = rewardbench2.convert_row(row)
        if render == "hh":
            cand = Candidates(
                f"\n\nHuman: {cand.prompt.strip()}\n\nAssistant:",
                tuple(hh_response(c) for c in cand.completions),
                cand.num_correct,
            )
        return cand, group, uid

    return convert


def _read(
    files: list, convert: Callable, report: LoadReport, *, skip_bad_rows: bool, max_rows: int | None, per_file=False
) -> list:
    out = []
    for data_file in files:
        report.files.append(data_file.name)
        for ref, row in data_file.rows():
            report.rows_read += 1
            try:
                if isinstance(row, RowProblem):
                    raise row
                out.append(convert(row, data_file.name) if per_file else convert(row))
            except RowProblem as problem:
                err = DataError.at(ref, problem)
                if not skip_bad_rows:
                    raise err from None
                report.skip(err)
                continue
            if max_rows is not None and len(out) >= max_rows:
                report.stopped_at_max_rows = True
                return out
    return out


def _name_of(source: str) -> str:
    stem = Path(source.rstrip("/")).name or source
    for suffix in (".jsonl.gz", ".jsonl", ".parquet", ".json"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "eval"


def load_eval_set(
    source: str | os.PathLike,
    *,
    layout: str = "auto",
    split: str | None = None,
    render: str = "hh",
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    hub_kwargs: dict | None = None,
) -> EvalSet | CompletionSet:
    """Validated pairs (or, for `BEST_OF_N_LAYOUTS`, prompts with N completions) of one eval
    source in one of `LAYOUTS` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown eval layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if render not in RENDERS:
        raise ValueError(f"unknown render {render!r}; use one of {', '.join(RENDERS)}")
    text = os.fspath(source)
    hub_layout, hub_split = _HUB_LAYOUTS.get(text, (None, None))
    split = split or hub_split
    if layout == "auto" and hub_layout:
        layout = hub_layout
    files = None
    if layout == "auto":
        files = eval_files(text, split=split, hub_kwargs=hub_kwargs)
        layout = detect_layout(_first_row(files))
    if layout in ("preferences", "hh", "generic", "ultrafeedback"):
        fmt = "auto" if layout == "preferences" else layout
        pairs, report = load_preferences(
            text, format=fmt, split=split, skip_bad_rows=skip_bad_rows, max_rows=max_rows, hub_kwargs=hub_kwargs
        )
        return EvalSet(
            _name_of(text), report.format, text, pairs, [None] * len(pairs), [str(i) for i in range(len(pairs))], report
        )
    files = files or eval_files(text, split=split, hub_kwargs=hub_kwargs)
    report = LoadReport(source=text, format=layout)
    bon = layout in BEST_OF_N_LAYOUTS
    if bon:
        convert = _convert_bestofn(layout, render)
    else:
        convert = convert_rmb if layout == "rmb" else _convert_rewardbench(render)
    rows = _read(files, convert, report, skip_bad_rows=skip_bad_rows, max_rows=max_rows, per_file=bon)
    report.rows_kept = len(rows)
    if not rows:
        raise DataError(
            text, f"no valid rows (read {report.rows_read}, skipped {report.rows_skipped})", reason="no_rows"
        )
    ids = [uid if uid is not None else str(i) for i, (_, _, uid) in enumerate(rows)]
    if layout == "rewardbench2" and (dup := rewardbench2.duplicate_ties_ids([r[1] for r in rows], ids)):
        raise DataError(text, f"Ties ids used by more than one row: {', '.join(dup[:5])}", reason="duplicate_id")
    if bon:
        return CompletionSet(_name_of(text), layout, text, [r[0] for r in rows], [r[1] for r in rows], ids, report)
    return EvalSet(_name_of(text), layout, text, [r[0] for r in rows], [r[1] for r in rows], ids, report)
