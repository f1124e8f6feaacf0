"""The stream schema (`data/records.py`, issue 15 §2): a pair's text row, its encoded
columns and its teacher maps, and the conversions, in the forms the stages and workers see."""
from __future__ import annotations

import numpy as np

from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs
from idrm_ray.train.ingest import teacher_rows, to_student_batch
from idrm_ray.data.records import (
    ENCODING_COLUMNS,
    MAP_BYTES,
    MAPS,
    batch_examples,
    batch_margins,
    blocks_to_maps,
    example_rows,
    maps_to_blocks,
    pair_columns,
    row_to_encoding,
)
from idrm_ray.stream.stages import EncodeStage

EXAMPLES = [
    PreferenceExample("What is two plus two?", "It is four.", "It is five."),
    PreferenceExample("Name a colour.", "Blue is a colour.", "Seven.", margin=2.0),
    PreferenceExample("Say hi.", "Hi there!", "No."),
]


def _as_ray_batch(rows: list[dict]) -> dict:
    """Row dicts as Ray Data hands a numpy batch to a stage (one array per column)."""
    return {k: np.asarray([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else None)
            for k in rows[0]}


def test_text_rows_encode_to_the_pair_columns_and_back(tmp_path, student_tokenizer, teacher_tokenizer):
    student_tokenizer.save_pretrained(tmp_path / "s")
    teacher_tokenizer.save_pretrained(tmp_path / "t")
    text = _as_ray_batch(example_rows(EXAMPLES))
    assert batch_examples(text) == EXAMPLES  # margins too: NaN <-> None
    stage = EncodeStage(str(tmp_path / "s"), str(tmp_path / "t"), student_max_len=64, teacher_max_len=64)
    batch = stage(text)
    assert sorted(batch) == sorted(pair_columns())
    want = encode_pairs(EXAMPLES, stage.student_tok, stage.teacher_tok, student_max_len=64, teacher_max_len=64)
    for i, enc in enumerate(want):
        got = row_to_encoding(batch, i)
        for name in ENCODING_COLUMNS:
            np.testing.assert_array_equal(getattr(got, name), getattr(enc, name))
        assert got.stats == enc.stats
    assert batch_margins(batch) == [0.0, 2.0, 0.0] and list(batch["pair_id"]) == [0, 1, 2]
    student = to_student_batch(batch, pad_id=0, device="cpu", use_margin=True)
    assert student.margin.tolist() == [0.0, 2.0, 0.0] and student.input_ids.shape[0] == 2 * len(EXAMPLES)


def test_cache_block_columns_read_back_to_the_teacher_stage_columns():
    maps = [np.random.rand(3, u, u).astype(np.float16) for u in (4, 2)]
    batch = {"pair_id": np.arange(2), MAPS: maps, MAP_BYTES: np.array([m.nbytes for m in maps])}
    back = blocks_to_maps(maps_to_blocks(batch))
    assert sorted(back) == sorted(batch)
    for got, want in zip(teacher_rows(back), maps):
        np.testing.assert_array_equal(got, want)


def test_encode_stage_tokenizes_a_pair_once_and_hands_out_fresh_arrays(tmp_path, student_tokenizer,
                                                                        teacher_tokenizer, monkeypatch):
    """The memo by pair text (a compare's runs share the stage): a pair seen before is not
    tokenized again, its columns are equal, and changing a returned array changes nothing later."""
    from idrm_ray.core import units
    from idrm_ray.stream import stages

    student_tokenizer.save_pretrained(tmp_path / "s")
    teacher_tokenizer.save_pretrained(tmp_path / "t")
    kwargs = dict(student_tokenizer_dir=str(tmp_path / "s"), teacher_tokenizer_dir=str(tmp_path / "t"),
                  student_max_len=64, teacher_max_len=64)
    stage = stages.encode_stage(**kwargs)
    assert stages.encode_stage(**kwargs) is stage  # one per process and settings
    first = stage.encode(EXAMPLES[:2])
    encoded: list[int] = []
    real = units.encode_pairs
    monkeypatch.setattr(units, "encode_pairs", lambda ex, *a, **k: encoded.append(len(ex)) or real(ex, *a, **k))
    first[0].student_ids_w[:] = -7  # a consumer writing into its arrays
    again = stage.encode([EXAMPLES[2], EXAMPLES[0], EXAMPLES[1]])
    assert encoded == [1]  # only the new pair
    want = real(EXAMPLES, stage.student_tok, stage.teacher_tok, student_max_len=64, teacher_max_len=64)
    for got, enc in zip(again, [want[2], want[0], want[1]]):
        for name in ENCODING_COLUMNS:
            np.testing.assert_array_equal(getattr(got, name), getattr(enc, name))
        assert got.stats == enc.stats
    monkeypatch.setattr(stages, "MEMO_PAIRS", 2)
    stage.encode(EXAMPLES)
    assert len(stage.memo) == 2 and list(stage.memo) == [(e.prompt, e.chosen, e.rejected) for e in EXAMPLES[1:]]
