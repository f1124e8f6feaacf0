"""Input data: validating loaders for preference and NLI data, and the bundled data set.

    from idrm_ray.data import load_preferences, load_nli, DataError, format_data_error
    pairs, report = load_preferences("data/pref.jsonl")            # format="auto"
    pairs, report = load_preferences("Anthropic/hh-rlhf", split="test", format="hh")
    triples, report = load_nli("stanfordnlp/snli", split="validation")

Both return `(records, LoadReport)`; records are `PreferenceExample(prompt, chosen,
rejected, margin)` (idrm_ray.core.types) or `NLIExample(premise, hypothesis, label)`.
This package is pure Python + pyarrow (+ `datasets` for hub ids); Ray Data wraps it elsewhere.

Sources
-------
- a `.jsonl` file (JSON Lines, UTF-8), `.jsonl.gz` (gzip); other compression is an error;
- a `.parquet` file;
- a directory: every `*.jsonl`, `*.jsonl.gz`, `*.parquet` below it, sorted by path, hidden
  files ignored; with `split="train"` only files in a `train/` folder or named
  `train.jsonl`, `train-00000-of-00002.parquet`, ... ;
- anything else that does not exist locally and does not look like a path is a hub id,
  read with `datasets.load_dataset(id, split=split or "train", **hub_kwargs)`.
Extra fields are ignored. Rows are named "line N" (1-based JSONL line) or "row N"
(0-based index in a Parquet file or hub split).

Formats (`format=` of `load_preferences`; "auto" looks at the first readable row)
------------------------------------------------------------------------------
- `generic`: `prompt`, `chosen`, `rejected` strings; optional numeric `margin`, else
  `score_chosen - score_rejected` when both exist, else None. Auto: has `prompt` and
  string `chosen`.
- `hh` (Anthropic HH-RLHF): `chosen`/`rejected` full transcripts. prompt = the chosen
  transcript up to and including its last "\\n\\nAssistant:"; each response = the rest of
  its transcript (leading space kept). The rejected transcript must start with that
  prompt. Auto: `chosen`/`rejected` strings and no `prompt`.
- `ultrafeedback` (binarized): `prompt` plus `chosen`/`rejected` message lists
  `[{"role", "content"}, ...]`; each response = content of the last assistant message;
  margin = `score_chosen - score_rejected` when both exist. Auto: `chosen` is a list.
- NLI (`load_nli`): `premise`, `hypothesis`, `label` in {0, 1, 2} or "entailment",
  "neutral", "contradiction". Label -1 ("-1", "-": SNLI's no-gold-label rows) is dropped
  and counted in `report.nli_unlabeled_dropped`, the one drop that is not an error.

Validation and errors
---------------------
Each problem raises `DataError`, whose message is one line "<file>, line 7: <problem>"
(or "<file>: <problem>" for the whole file) and which carries `.file`, `.row`,
`.reason`. Row-level reasons: missing_field (absent or null), empty_text (empty or
whitespace-only, also an empty response after the HH split), wrong_type, identical
(chosen and rejected equal after stripping), non_utf8, invalid_json (incl. a truncated
last line), not_an_object, bom (a BOM not at the file start), no_assistant_turn,
prompt_mismatch, no_assistant_message, label_out_of_range, bad_margin, unknown_format,
too_long (a text over `MAX_TEXT_CHARS` = 1,000,000 characters: a 10 MB text costs ~35 s
and ~4 GB to tokenize before truncation), bad_unicode (a lone surrogate from a JSON
escape such as "\\ud800"; JSON parsing depth overflow is invalid_json).
File-level (always raised): missing_path, no_data_files, unsupported_file (also a device
or pipe, and binary content such as gzip or Parquet under a .jsonl name), unreadable
(incl. a truncated or corrupt gzip, named with the last line read: the rows before it
are not used either), wrong_schema (Parquet columns absent or of the wrong type), bom
(UTF-16/32 BOM), hub_error, no_rows (nothing read, or nothing valid left).

BOM decision: a UTF-8 BOM at the very start of a JSONL file is accepted and removed
(Windows editors write it); the file is listed in `report.bom_files`.

`skip_bad_rows=True` skips row-level problems instead: each is recorded in
`report.skipped` (file, row, reason, problem), counted by `report.skipped_by_reason`,
and written with `report.write_skipped(run_dir)` as JSONL; `report.metrics()` gives the
counts for the run's metrics. `format_data_error(exc)` renders one terminal line.

Bundled data
------------
`idrm_ray/data/bundled/{pref_train,pref_eval,nli_train,nli_eval}.jsonl` (2000 / 300
generic preference pairs, 3000 / 300 balanced NLI triples) come from the deterministic
generator `idrm_ray.data.generate` (see its docstring for what the pairs test);
`bundled_path(name)` locates them and `tokenizer_corpus()` returns their texts.
"""
from idrm_ray.data.errors import DataError, LoadReport, SkippedRow, format_data_error
from idrm_ray.data.formats import HH_ASSISTANT, NLI_LABELS, NLIExample, detect_format, split_hh
from idrm_ray.data.loaders import load_nli, load_preferences

_GENERATE = ("bundled_path", "generate_bundled", "tokenizer_corpus")


def __getattr__(name: str):
    # Lazy, so `python -m idrm_ray.data.generate` does not import the module twice.
    if name in _GENERATE:
        from idrm_ray.data import generate

        return getattr(generate, name)
    raise AttributeError(f"module 'idrm_ray.data' has no attribute {name!r}")

__all__ = [
    "DataError",
    "HH_ASSISTANT",
    "LoadReport",
    "NLIExample",
    "NLI_LABELS",
    "SkippedRow",
    "bundled_path",
    "detect_format",
    "format_data_error",
    "generate_bundled",
    "load_nli",
    "load_preferences",
    "split_hh",
    "tokenizer_corpus",
]
