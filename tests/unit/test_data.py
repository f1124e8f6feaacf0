"""Loaders, validation and the bundled data (idrm_ray.data). Local files only, no hub."""
from __future__ import annotations

import gzip
import json
import pickle
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data import DataError, NLIExample, format_data_error, load_nli, load_preferences
from idrm_ray.data import generate

HH_CHOSEN = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: What does the cat like?\n\nAssistant: The ball."
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: What does the cat like?\n\nAssistant: An apple."
GENERIC = [
    {"prompt": "Q1?", "chosen": " yes", "rejected": " no", "margin": 2},
    {"prompt": "Q2?", "chosen": " good", "rejected": " bad"},
]
UF = [
    {
        "prompt": "What does the cat like?",
        "chosen": [{"role": "user", "content": "What does the cat like?"}, {"role": "assistant", "content": "The ball."}],
        "rejected": [{"role": "user", "content": "What does the cat like?"}, {"role": "assistant", "content": "A book."}],
        "score_chosen": 8.0,
        "score_rejected": 5.5,
    }
]
NLI = [
    {"premise": "The cat likes the ball.", "hypothesis": "An animal likes the ball.", "label": 0},
    {"premise": "The cat likes the ball.", "hypothesis": "The dog reads.", "label": "neutral"},
    {"premise": "The cat likes the ball.", "hypothesis": "Nobody likes the ball.", "label": -1},
    {"premise": "The cat likes the ball.", "hypothesis": "The cat does not like the ball.", "label": 2},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(params=["jsonl", "parquet"])
def writer(request):
    return (lambda p, rows: write_jsonl(p.with_suffix(".jsonl"), rows)) if request.param == "jsonl" else (
        lambda p, rows: write_parquet(p.with_suffix(".parquet"), rows)
    )


# --- formats -----------------------------------------------------------------------------------


def test_generic_loads_with_margin(tmp_path, writer):
    pairs, report = load_preferences(writer(tmp_path / "pref", GENERIC), format="generic")
    assert pairs == [PreferenceExample("Q1?", " yes", " no", 2.0), PreferenceExample("Q2?", " good", " bad", None)]
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (2, 2, 0)


def test_hh_splits_multi_turn_at_last_assistant(tmp_path, writer):
    (pair,), report = load_preferences(writer(tmp_path / "hh", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}]), format="hh")
    # The prompt keeps the earlier turn and ends with the LAST "\n\nAssistant:"; responses keep their leading space.
    assert pair.prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: What does the cat like?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" The ball.", " An apple.")
    assert pair.prompt + pair.chosen == HH_CHOSEN and pair.prompt + pair.rejected == HH_REJECTED


def test_ultrafeedback_takes_last_assistant_message_and_score_margin(tmp_path, writer):
    more = [{"role": "user", "content": "more?"}, {"role": "assistant", "content": "Yes, the ball."}]
    rows = [dict(UF[0], chosen=UF[0]["chosen"] + more)]
    (pair,), report = load_preferences(writer(tmp_path / "uf", rows), format="ultrafeedback")
    assert pair == PreferenceExample("What does the cat like?", "Yes, the ball.", "A book.", 2.5)


@pytest.mark.parametrize(
    "write, labels",
    [
        (write_jsonl, None),  # mixed ints and names, as JSON allows
        (write_parquet, [0, 1, -1, 2]),
        (write_parquet, ["entailment", "Neutral", "-1", "contradiction"]),
    ],
)
def test_nli_labels_and_unlabeled_dropped_and_counted(tmp_path, write, labels):
    rows = NLI if labels is None else [dict(r, label=x) for r, x in zip(NLI, labels)]
    triples, report = load_nli(write(tmp_path / f"nli.{write.__name__[6:]}", rows))
    assert [t.label for t in triples] == [0, 1, 2]
    assert isinstance(triples[0], NLIExample) and triples[0].hypothesis == "An animal likes the ball."
    assert (report.rows_read, report.rows_kept, report.nli_unlabeled_dropped, report.rows_skipped) == (4, 3, 1, 0)
    assert report.metrics()["data/nli_unlabeled_dropped"] == 1


@pytest.mark.parametrize(
    "rows, expected",
    [(GENERIC, "generic"), ([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}], "hh"), (UF, "ultrafeedback")],
)
def test_auto_detection(tmp_path, writer, rows, expected):
    _, report = load_preferences(writer(tmp_path / "data", rows))
    assert report.format == expected


def test_auto_detection_refuses_nli_for_preferences(tmp_path):
    with pytest.raises(DataError, match=r"nli\.jsonl, line 1: .*use load_nli"):
        load_preferences(write_jsonl(tmp_path / "nli.jsonl", NLI))


def test_directory_gz_and_split(tmp_path):
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    write_parquet(root / "data" / "train-00000-of-00002.parquet", GENERIC)
    with gzip.open(root / "data" / "train-00001-of-00002.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(GENERIC[0]) + "\n")
    write_jsonl(root / "test.jsonl", GENERIC[:1])
    (root / "README.md").write_text("not data")
    pairs, report = load_preferences(root, split="train")
    assert len(pairs) == 3 and [Path(f).name for f in report.files] == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.jsonl.gz"]
    assert len(load_preferences(root)[0]) == 4
    with pytest.raises(DataError, match=r"no data files for split 'valid'"):
        load_preferences(root, split="valid")


def test_max_rows_and_bom_at_start(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n\n" for r in GENERIC).encode())
    pairs, report = load_preferences(path)  # decision: a leading UTF-8 BOM is accepted and noted
    assert len(pairs) == 2 and report.bom_files == [str(path)] and report.blank_lines == 2
    pairs, report = load_preferences(path, max_rows=1)
    assert len(pairs) == 1 and report.stopped_at_max_rows


def test_hub_id_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split, kwargs))
        labels = [0, 1, -1, 2, 7]  # a ClassLabel column gives ints; -1 is SNLI's "no gold label"
        return datasets.Dataset.from_list([dict(r, label=x) for r, x in zip([*NLI, NLI[0]], labels)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"^stanfordnlp/snli\[validation\], row 4: label 7 is out of range"):
        load_nli("stanfordnlp/snli", split="validation")
    triples, report = load_nli("stanfordnlp/snli", skip_bad_rows=True, hub_kwargs={"revision": "main"})
    assert len(triples) == 3 and report.nli_unlabeled_dropped == 1 and report.rows_skipped == 1
    assert calls[-1] == ("stanfordnlp/snli", "train", {"revision": "main"})
    with pytest.raises(DataError, match="no such file or directory"):  # looks local: never sent to the hub
        load_nli(str(tmp_path / "snli.jsonl"))
    assert len(calls) == 2


# --- bad input ---------------------------------------------------------------------------------

G = {"prompt": "Q?", "chosen": " a", "rejected": " b"}
BAD_JSONL = {  # case -> (lines as bytes, format, expected row label, problem fragment)
    "missing field": ([G, {"prompt": "Q?", "chosen": " a"}], "generic", "line 2", "missing field 'rejected'"),
    "null field": ([G, dict(G, chosen=None)], "generic", "line 2", "field 'chosen' is null"),
    "whitespace text": ([G, G, dict(G, chosen=" \n\t")], "generic", "line 3", "field 'chosen' is empty or whitespace-only"),
    "wrong type": ([dict(G, chosen=["a"])], "generic", "line 1", "field 'chosen' must be a string in generic format, got list"),
    "chosen == rejected": ([G, dict(G, rejected=" a ")], "generic", "line 2", "chosen and rejected responses are identical"),
    "not an object": ([G, ["a", "b"]], "generic", "line 2", "expected a JSON object per line, got list"),
    "bad margin": ([dict(G, margin="big")], "generic", "line 1", "field 'margin' must be a finite number"),
    "hh no assistant": ([{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: yo"}], "hh", "line 1",
                        "has no '\\n\\nAssistant:' turn"),
    "hh prefix mismatch": ([{"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("Hi", "Yo")}], "hh", "line 1",
                           "do not share the prompt"),
    "hh empty response": ([{"chosen": HH_CHOSEN, "rejected": HH_CHOSEN.rsplit(" ", 2)[0] + " "}], "hh", "line 1",
                          "rejected response (after the last '\\n\\nAssistant:') is empty"),
    "uf no assistant": ([dict(UF[0], rejected=[{"role": "user", "content": "x"}])], "ultrafeedback", "line 1",
                        "'rejected' has no assistant message"),
    "nli label out of range": ([NLI[0], dict(NLI[0], label=3)], "nli", "line 2", "label 3 is out of range"),
    "nli unknown label name": ([dict(NLI[0], label="maybe")], "nli", "line 1", "label 'maybe' is out of range"),
    "nli label wrong type": ([dict(NLI[0], label=1.0)], "nli", "line 1", "field 'label' must be an integer"),
}
BAD_BYTES = {
    "non-UTF-8": (json.dumps(G).encode() + b"\n" + b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n',
                  "line 2", "not valid UTF-8: byte 0xe9"),
    "truncated JSON line": (json.dumps(G).encode() + b'\n{"prompt": "Q?", "chosen": " a", "rej', "line 2",
                            "invalid JSON: Unterminated string starting at (column 34); truncated line?"),
    "BOM mid-file": (json.dumps(G).encode() + b"\n\xef\xbb\xbf" + json.dumps(G).encode(), "line 2",
                     "byte-order mark (BOM) at the start of this line"),
}


def _load(path: Path, fmt: str, **kw):
    return load_nli(path, **kw) if fmt == "nli" else load_preferences(path, format=fmt, **kw)


def _assert_one_line(err: DataError, path: Path, row: str, problem: str):
    msg = str(err)
    assert "\n" not in msg and path.name in msg and f", {row}: " in msg and problem in msg, msg


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl_rows_name_file_row_and_problem(tmp_path, case):
    rows, fmt, row, problem = BAD_JSONL[case]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        _load(path, fmt)
    _assert_one_line(info.value, path, row, problem)
    records, report = _load(path, fmt, skip_bad_rows=True) if len(rows) > 1 else (None, None)
    if report is not None:  # the same row is skipped, counted and listed
        assert report.rows_skipped == 1 and report.skipped[0].problem == info.value.problem


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bad_bytes_name_file_row_and_problem(tmp_path, case):
    data, row, problem = BAD_BYTES[case]
    path = tmp_path / "raw.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_preferences(path)
    _assert_one_line(info.value, path, row, problem)


def test_truncated_last_line_is_flagged_as_such(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_bytes(json.dumps(G).encode() + b'\n{"prompt": "Q?", "chosen": " a"')
    with pytest.raises(DataError, match=r"cut\.jsonl, line 2: invalid JSON: .*truncated line\?"):
        load_preferences(path)


def test_parquet_rows_are_named_by_index(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [G, G, dict(G, rejected=" a")])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    _assert_one_line(info.value, path, "row 2", "chosen and rejected responses are identical")


@pytest.mark.parametrize(
    "rows, fmt, problem",
    [
        ([{"prompt": "Q?", "chosen": " a"}], "generic", "missing column 'rejected'"),
        ([dict(G, chosen=["a"])], "generic", "column 'chosen' is list<"),
        ([{"prompt": "Q", "chosen": "a", "rejected": "b"}], "ultrafeedback", "column 'chosen' is string, expected messages"),
        ([dict(NLI[0], label=0.5)], "nli", "column 'label' is double, expected label"),
    ],
)
def test_parquet_wrong_schema(tmp_path, rows, fmt, problem):
    path = write_parquet(tmp_path / "s.parquet", rows)
    with pytest.raises(DataError) as info:
        _load(path, fmt, skip_bad_rows=True)  # a schema problem is never skipped
    assert info.value.reason == "wrong_schema" and info.value.row is None
    assert str(info.value).startswith(f"{path}: schema does not match format '{fmt}'") and problem in str(info.value)


def test_file_level_errors(tmp_path):
    cases = {
        tmp_path / "nope.jsonl": "no such file or directory",
        write_jsonl(tmp_path / "empty.jsonl", []): "no rows (the data is empty)",
        tmp_path / "x.jsonl.bz2": "compressed input '.bz2' is not supported",
        tmp_path / "x.json": "JSON Lines files must be named .jsonl",
        tmp_path / "no_data": "directory has no data files",
        tmp_path / "u16.jsonl": "UTF-16/UTF-32 byte-order mark",
        tmp_path / "broken.parquet": "not a readable Parquet file",
        tmp_path / "broken.jsonl.gz": "gzip data is truncated or corrupt",
    }
    (tmp_path / "x.jsonl.bz2").write_bytes(b"BZh9")
    (tmp_path / "x.json").write_text(json.dumps(G))
    (tmp_path / "no_data").mkdir()
    (tmp_path / "no_data" / "notes.txt").write_text("hi")
    (tmp_path / "u16.jsonl").write_bytes(json.dumps(G).encode("utf-16"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    for path, problem in cases.items():
        with pytest.raises(DataError) as info:
            load_preferences(path)
        assert str(info.value) == f"{path}: {info.value.problem}" and problem in info.value.problem, str(info.value)


def test_skip_bad_rows_counts_lists_and_writes(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(G), json.dumps(dict(G, chosen="")), "{oops", json.dumps(G), json.dumps(dict(G, rejected=" a"))]
    path.write_text("\n".join(lines) + "\n")
    pairs, report = load_preferences(path, skip_bad_rows=True)
    assert (len(pairs), report.rows_read, report.rows_kept, report.rows_skipped) == (2, 5, 2, 3)
    assert report.skipped_by_reason == {"empty_text": 1, "identical": 1, "invalid_json": 1}
    assert [(s.row, s.reason) for s in report.skipped] == [(2, "empty_text"), (3, "invalid_json"), (5, "identical")]
    out = report.write_skipped(tmp_path / "run")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0] == {"file": str(path), "row": 2, "row_kind": "line", "reason": "empty_text",
                          "problem": "field 'chosen' is empty or whitespace-only"}
    assert report.metrics()["data/skipped/invalid_json"] == 1 and "skipped 3" in report.summary()


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "allbad.jsonl", [dict(G, chosen=" "), dict(G, chosen=" ")])
    with pytest.raises(DataError, match=r"allbad\.jsonl: no valid rows: read 2; skipped 2 .*line 1: field 'chosen'"):
        load_preferences(path, skip_bad_rows=True)


def test_format_data_error_is_one_line_and_errors_pickle(tmp_path):
    err = DataError("a.jsonl", "bad\nthing", reason="x", row=3)
    assert format_data_error(err) == "a.jsonl, line 3: bad thing"
    back = pickle.loads(pickle.dumps(err))  # errors cross Ray worker boundaries
    assert (str(back), back.reason, back.row, back.file) == (str(err), "x", 3, "a.jsonl")
    assert format_data_error(ValueError("x\ny")) == "ValueError: x y"


# --- generator and bundled data ----------------------------------------------------------------

SMALL = {"pref_train": 60, "pref_eval": 20, "nli_train": 30, "nli_eval": 9}


def test_generator_is_deterministic(tmp_path):
    a = generate.generate_bundled(tmp_path / "a", seed=3, sizes=SMALL)
    b = generate.generate_bundled(tmp_path / "b", seed=3, sizes=SMALL)
    assert all(a[n].read_bytes() == b[n].read_bytes() for n in SMALL)
    c = generate.generate_rows(seed=4, sizes=SMALL)
    assert generate.to_jsonl(c["pref_train"]) != a["pref_train"].read_bytes()


def test_bundled_files_equal_a_fresh_generation(tmp_path):
    assert generate.main(["--out", str(generate.BUNDLED_DIR), "--check"]) == 0
    fresh = generate.generate_rows()
    for name in generate.DEFAULT_SIZES:
        assert generate.bundled_path(name).read_bytes() == generate.to_jsonl(fresh[name]), name


def test_bundled_files_load_cleanly_with_expected_counts():
    train, r_train = load_preferences(generate.bundled_path("pref_train"))
    evals, _ = load_preferences(generate.bundled_path("pref_eval"))
    assert (len(train), len(evals), r_train.format, r_train.rows_skipped) == (6000, 300, "generic", 0)
    assert not {p.prompt for p in train} & {p.prompt for p in evals}
    rows = [json.loads(line) for line in generate.bundled_path("pref_train").read_text("utf-8").splitlines()]
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == {"what", "who", "yesno", "style"} and kinds["style"] >= 100
    multi_turn = sum(p.prompt.count("\n\nHuman:") > 1 for p in train)
    assert 700 < multi_turn < 1200 and all(p.prompt.endswith("\n\nAssistant:") for p in train)
    # No length shortcut: chosen is longer about as often as rejected.
    longer = sum(len(p.chosen) > len(p.rejected) for p in train) - sum(len(p.chosen) < len(p.rejected) for p in train)
    assert abs(longer) < 600
    for name, n in (("nli_train", 3000), ("nli_eval", 300)):
        triples, report = load_nli(generate.bundled_path(name))
        assert len(triples) == n and report.rows_skipped == 0
        assert Counter(t.label for t in triples) == {0: n // 3, 1: n // 3, 2: n // 3}


def test_tokenizer_corpus_is_the_bundled_text():
    corpus = generate.tokenizer_corpus()
    assert len(corpus) == 3 * 6300 + 2 * 3300
    assert any("café" in t for t in corpus) and any("\n\nAssistant:" in t for t in corpus)


def test_max_eval_pairs_caps_every_eval_source(tmp_path):
    """data.max_eval_pairs applies to the bundled eval set, an eval file and the split-off part."""
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig
    from idrm_ray.data import bundled_path
    from idrm_ray.run.inputs import load_data

    lines = bundled_path("pref_train").read_text(encoding="utf-8").splitlines()[:40]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for extra in ([], [f"data.eval={pairs}"], [f"data.train={pairs}", "data.eval_fraction=0.5"]):
        cfg = load_config(TrainJobConfig, None, ["data.max_eval_pairs=7", *extra], preset="tiny")
        _, evals, _ = load_data(cfg, tmp_path)
        assert len(evals) == 7, extra
