"""Raw row readers: a source (file, directory or hub id) becomes a list of `DataFile`s,
each yielding `(RowRef, dict | RowProblem)` pairs. No format knowledge lives here.

Rules (documented in `idrm_ray.data`):
- JSONL is read as bytes and decoded line by line, so a non-UTF-8 line names its line;
  a UTF-8 BOM at the very start of a file is removed (and noted in the report), a BOM
  anywhere else, or a UTF-16/32 BOM, is an error. Blank lines are counted, not rows.
- `.jsonl.gz` is read through gzip; any other compression is a clear error.
- Parquet rows are numbered by their 0-based index in the file.
"""
from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from idrm_ray.data.errors import DataError, RowProblem, RowRef

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".7z", ".tar", ".tgz")
_LOCAL_HINTS = (".json", ".csv", ".tsv", ".arrow", ".txt") + DATA_SUFFIXES + _COMPRESSED
_UTF8_BOM = codecs.BOM_UTF8
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# Binary content under a .jsonl name: say what it is rather than "not valid UTF-8".
_MAGIC_KIND = {b"\x1f\x8b": "gzip-compressed", b"PAR1": "Parquet", b"PK\x03\x04": "a zip archive",
               b"BZh": "bzip2-compressed", b"\xfd7zXZ": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed"}
_MAGIC = tuple(_MAGIC_KIND)
_MAGIC_FIX = {"gzip-compressed": "name it .jsonl.gz", "Parquet": "name it .parquet"}
Row = tuple[RowRef, "dict[str, Any] | RowProblem"]


class JsonlFile:
    def __init__(self, path: Path, *, gz: bool = False):
        self.path, self.name, self.gz = path, str(path), gz
        self.blank_lines = 0
        self.bom = False

    def columns(self) -> dict[str, pa.DataType] | None:
        return None  # JSON has no schema: every row is checked on its own

    def rows(self) -> Iterator[Row]:
        opener = gzip.open if self.gz else open
        lineno = 0
        try:
            with opener(self.path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    row = self._parse(raw.rstrip(b"\r\n"), lineno)
                    if row is None:
                        self.blank_lines += 1
                    else:
                        yield RowRef(self.name, lineno, "line"), row
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(self.name, self._read_problem(e, lineno), reason="unreadable") from None

    def _read_problem(self, exc: BaseException, lineno: int) -> str:
        # A truncated/corrupt gzip fails part-way: say how far it got, so nobody trains on a
        # silently shortened file (the rows read so far are not used either).
        if not self.gz:
            return f"cannot read file: {exc}"
        if isinstance(exc, gzip.BadGzipFile) and not lineno:
            return f"not gzip data despite the .gz name ({exc}); rename it .jsonl if it is plain text"
        where = f"after line {lineno}" if lineno else "before the first complete line"
        return f"gzip data is truncated or corrupt {where} ({exc}); re-create or re-download the file"

    def _parse(self, raw: bytes, lineno: int) -> dict[str, Any] | RowProblem | None:
        if lineno == 1 and raw.startswith(_MAGIC):
            kind = next(k for m, k in _MAGIC_KIND.items() if raw.startswith(m))
            fix = _MAGIC_FIX.get(kind, "convert it to .jsonl, .jsonl.gz or .parquet")
            raise DataError(self.name, f"file content is {kind}, not JSON Lines text; {fix}", reason="unsupported_file")
        if lineno == 1 and raw.startswith(_UTF8_BOM):
            raw, self.bom = raw[len(_UTF8_BOM):], True
        elif lineno == 1 and raw.startswith(_WIDE_BOMS):
            raise DataError(self.name, "file starts with a UTF-16/UTF-32 byte-order mark; re-encode it as UTF-8", reason="bom")
        elif raw.startswith(_UTF8_BOM):
            return RowProblem(
                "bom", "UTF-8 byte-order mark (BOM) at the start of this line; a BOM is only accepted at the start of the file"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return RowProblem("non_utf8", f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start} of the line")
        if not text.strip():
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
            return RowProblem("invalid_json", f"invalid JSON: {e.msg} (column {e.colno}){'; truncated line?' if cut else ''}")
        except RecursionError:  # e.g. [[[[...]]]] 100k deep; the C parser gives up
            return RowProblem("invalid_json", "invalid JSON: nested too deeply to parse")
        if not isinstance(value, dict):
            return RowProblem("not_an_object", f"expected a JSON object per line, got {type(value).__name__}")
        return value


class ParquetData:
    def __init__(self, path: Path):
        self.path, self.name = path, str(path)
        self.blank_lines, self.bom = 0, False

    def _open(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(self.name, f"not a readable Parquet file: {e}", reason="unreadable") from None

    def columns(self) -> dict[str, pa.DataType]:
        schema = self._open().schema_arrow
        return {name: schema.field(name).type for name in schema.names}

    def rows(self) -> Iterator[Row]:
        index = 0
        batches = self._open().iter_batches(batch_size=1024)
        while True:
            try:  # a corrupt page fails here, mid-file: name where reading stopped
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as e:
                raise DataError(self.name, f"Parquet data is corrupt at or after row {index}: {e}", reason="unreadable") from None
            if batch is None:
                return
            for row in batch.to_pylist():
                yield RowRef(self.name, index, "row"), row
                index += 1


class HubData:
    """A split of a dataset named by its hub id, read with `datasets.load_dataset`
    (honours HF_HUB_OFFLINE and the local HF cache)."""

    def __init__(self, repo_id: str, split: str, hub_kwargs: dict[str, Any] | None = None):
        self.repo_id, self.split, self.hub_kwargs = repo_id, split, dict(hub_kwargs or {})
        self.name = f"{repo_id}[{split}]"
        self.blank_lines, self.bom = 0, False
        self._ds = None

    def _dataset(self):
        if self._ds is None:
            import datasets  # heavy import, only when a hub id is used

            try:
                self._ds = datasets.load_dataset(self.repo_id, split=self.split, **self.hub_kwargs)
            except Exception as e:  # noqa: BLE001 - any hub/cache failure becomes one clear line
                raise DataError(self.name, f"cannot load hub dataset: {type(e).__name__}: {e}", reason="hub_error") from None
        return self._ds

    def columns(self) -> dict[str, pa.DataType] | None:
        return {name: None for name in self._dataset().column_names}

    def rows(self) -> Iterator[Row]:
        for index, row in enumerate(self._dataset()):
            yield RowRef(self.name, index, "row"), dict(row)


DataFile = JsonlFile | ParquetData | HubData


def resolve_source(source: str | os.PathLike, *, split: str | None = None, hub_kwargs: dict | None = None) -> list[DataFile]:
    """A local file, a directory of data files (filtered by `split` when given), or a hub id.
    A string that looks like a path (starts with `/`, `.` or `~`, has a data suffix, or
    has more than one `/`) and does not exist is a missing path, never a hub id."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _directory_files(path, split)
    if path.is_file():
        return [_open_file(path)]
    if path.exists():
        raise DataError(text, "not a regular file or directory (a device, pipe or socket)", reason="unsupported_file")
    if isinstance(source, os.PathLike) or _looks_local(text):
        raise DataError(text, "no such file or directory", reason="missing_path")
    return [HubData(text, split or "train", hub_kwargs)]


def _looks_local(text: str) -> bool:
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or text.lower().endswith(_LOCAL_HINTS)
    )


def _open_file(path: Path) -> DataFile:
    name = path.name.lower()
    if name.endswith(".jsonl.gz"):
        return JsonlFile(path, gz=True)
    if name.endswith(".jsonl"):
        return JsonlFile(path)
    if name.endswith(".parquet"):
        return ParquetData(path)
    if name.endswith(_COMPRESSED):
        problem = f"compressed input '{path.suffix}' is not supported; use .jsonl, .jsonl.gz or .parquet"
        raise DataError(str(path), problem, reason="unsupported_file")
    hint = " (JSON Lines files must be named .jsonl)" if name.endswith(".json") else ""
    raise DataError(str(path), f"unsupported file type; expected .jsonl, .jsonl.gz or .parquet{hint}", reason="unsupported_file")


def _directory_files(root: Path, split: str | None) -> list[DataFile]:
    """Data files under `root` (recursive, sorted, hidden files ignored). With `split`, keep
    files in a folder named `split` or whose name up to the first `-` or `.` is `split`
    (HF layouts: `train.jsonl`, `data/train-00000-of-00002.parquet`, `test/part.jsonl`)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        name = path.name.lower()
        if name.endswith(DATA_SUFFIXES):
            found.append(path)
        elif (".jsonl." in name or ".parquet." in name) and name.endswith(_COMPRESSED):
            _open_file(path)  # raises the "compressed input" error rather than ignoring a data file
    if not found:
        raise DataError(str(root), "directory has no data files (*.jsonl, *.jsonl.gz, *.parquet)", reason="no_data_files")
    if split is not None:
        chosen = [p for p in found if _in_split(p.relative_to(root), split)]
        if not chosen:
            names = ", ".join(str(p.relative_to(root)) for p in found[:8])
            raise DataError(str(root), f"no data files for split '{split}' (found: {names})", reason="no_data_files")
        found = chosen
    return [_open_file(p) for p in found]


def _in_split(rel: Path, split: str) -> bool:
    stem = rel.name.split(".", 1)[0].split("-", 1)[0]
    return stem == split or split in rel.parts[:-1]
