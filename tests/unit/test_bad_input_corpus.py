"""The bad-input corpus (issue 9, item 4), checked in-process: every malformed file either
loads (the inputs we decided are fine: a leading UTF-8 BOM, CRLF, gzip) or ends in one
`DataError` whose terminal line (`cli.bad_input_line`, what `idrm-ray` prints before exit 2)
names the file, the row and the problem. With `skip_bad_rows` the same rows are skipped,
counted and listed instead; nothing disappears uncounted.

Small files live in tests/data/bad_inputs/ with manifest.json (expected row, reason, words);
the big and binary-format ones are generated into tmp by `generated`. The subprocess side
(exit status 2, no traceback) is tests/integration/test_bad_input.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idrm_ray.cli import bad_input_line
from idrm_ray.data import DataError, load_nli, load_preferences

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
MANIFEST = {k: v for k, v in json.loads((CORPUS / "manifest.json").read_text()).items() if not k.startswith("_")}
LOADERS = {"preferences": load_preferences, "nli": load_nli}
PAIR = {"prompt": "Q: p", "chosen": " a", "rejected": " b"}
TEN_MB = 10 * 1024 * 1024

# Generated cases, same fields as the manifest plus `kind` ("line" or Parquet's 0-based "row").
GENERATED = {
    "big_row.jsonl": {"loader": "preferences", "row": 2, "reason": "too_long",
                      "words": ["field 'chosen' is 10,485,760 characters", "1,000,000-character limit"]},
    "wrong_schema.parquet": {"loader": "preferences", "row": None, "reason": "wrong_schema",
                             "words": ["column 'chosen' is int64, expected string"]},
    "missing_column.parquet": {"loader": "preferences", "row": None, "reason": "wrong_schema",
                               "words": ["cannot detect the data format", "columns: prompt, chosen"]},
    "nli_label_float.parquet": {"loader": "nli", "row": None, "reason": "wrong_schema",
                                "words": ["column 'label' is double"]},
    "null_cell.parquet": {"loader": "preferences", "row": 1, "kind": "row", "reason": "missing_field",
                          "words": ["field 'chosen' is null"]},
    "zero_rows.parquet": {"loader": "preferences", "row": None, "reason": "no_rows", "words": ["no rows"]},
    "does_not_exist.jsonl": {"loader": "preferences", "row": None, "reason": "missing_path",
                             "words": ["no such file or directory"]},
    "a_directory.jsonl": {"loader": "preferences", "row": None, "reason": "no_data_files",
                          "words": ["directory has no data files"]},
    "/dev/null": {"loader": "nli", "row": None, "reason": "unsupported_file", "words": ["not a regular file"]},
}
CASES = {**MANIFEST, **GENERATED}


def _parquet(path: Path, columns: dict) -> None:
    pq.write_table(pa.table(columns), path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    big = {**PAIR, "chosen": "x" * TEN_MB}
    (root / "big_row.jsonl").write_text(json.dumps(PAIR) + "\n" + json.dumps(big) + "\n")
    _parquet(root / "wrong_schema.parquet", {"prompt": ["q"], "chosen": [1], "rejected": ["b"]})
    _parquet(root / "missing_column.parquet", {"prompt": ["q"], "chosen": ["a"]})
    _parquet(root / "nli_label_float.parquet", {"premise": ["p"], "hypothesis": ["h"], "label": [1.0]})
    _parquet(root / "null_cell.parquet", {"prompt": ["q", "q"], "chosen": ["a", None], "rejected": ["b", "c"]})
    _parquet(root / "zero_rows.parquet", {k: pa.array([], pa.string()) for k in PAIR})
    (root / "a_directory.jsonl").mkdir()
    return root


def _path(name: str, generated: Path) -> Path:
    if name.startswith("/"):
        return Path(name)
    return CORPUS / name if name in MANIFEST else generated / name


def _load(name: str, generated: Path, **kwargs):
    return LOADERS[CASES[name]["loader"]](_path(name, generated), **kwargs)


def test_corpus_is_big_enough_and_every_file_is_listed():
    rejected = [n for n, c in CASES.items() if "accept" not in c]
    assert len(rejected) >= 20, len(rejected)
    on_disk = {p.name for p in CORPUS.iterdir()} - {"manifest.json"}
    assert on_disk == set(MANIFEST), on_disk ^ set(MANIFEST)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "accept" not in c])
def test_bad_input_is_one_line_naming_file_row_and_problem(name, generated):
    case, path = CASES[name], _path(name, generated)
    with pytest.raises(DataError) as info:
        _load(name, generated)
    err = info.value
    assert (err.reason, err.row) == (case["reason"], case["row"]), str(err)
    line = bad_input_line(err)
    where = f"{path}" if case["row"] is None else f"{path}, {case.get('kind', 'line')} {case['row']}"
    assert line.startswith(f"idrm-ray: data error: {where}: "), line
    assert "\n" not in line and "\r" not in line and len(line) < 600, line
    for word in case["words"]:
        assert word in line, line


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "accept" in c])
def test_inputs_we_accept(name, generated):
    records, report = _load(name, generated)
    assert len(records) == CASES[name]["accept"] and report.rows_skipped == 0
    if "bom" in name:  # decision: a leading UTF-8 BOM is removed, and the file noted
        assert report.bom_files == [str(_path(name, generated))]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.get("row") is not None])
def test_skip_bad_rows_skips_counts_and_lists_the_same_row(name, generated, tmp_path):
    case = CASES[name]
    try:
        records, report = _load(name, generated, skip_bad_rows=True)
    except DataError as err:  # every row was bad: still an error, with the counts in it
        assert err.reason == "no_rows" and f"{{'{case['reason']}': " in err.problem, str(err)
        return
    assert report.skipped_by_reason == {case["reason"]: 1}
    assert report.rows_read == report.rows_kept + report.rows_skipped + report.nli_unlabeled_dropped
    listed = [json.loads(x) for x in report.write_skipped(tmp_path).read_text().splitlines()]
    assert [(s["file"], s["row"], s["reason"]) for s in listed] == [
        (str(_path(name, generated)), case["row"], case["reason"])]
    assert len(records) == report.rows_kept >= 1


def test_file_level_problems_are_raised_even_when_skipping(generated):
    for name in ("truncated.jsonl.gz", "utf16.jsonl", "wrong_schema.parquet"):
        with pytest.raises(DataError) as info:
            _load(name, generated, skip_bad_rows=True)
        assert info.value.row is None and info.value.reason == CASES[name]["reason"]
