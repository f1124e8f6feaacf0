"""Teacher-map cache: the key follows every input the maps depend on, and per-block
columns round-trip to the (N, U, U) rows the worker collates."""
from __future__ import annotations

import numpy as np

from idrm_ray.core.types import PreferenceExample
from idrm_ray.pipeline.ingest import teacher_rows
from idrm_ray.pipeline.map_cache import cache_key, split_block_columns

PAIRS = [PreferenceExample("Q: who?", " The cat.", " A dog."), PreferenceExample("Q: what?", " A ball.", " A book.")]
ENCODE = {"student_tokenizer_dir": "/x", "teacher_tokenizer_dir": "/y", "student_max_len": 64, "teacher_max_len": 64}


def _dir(tmp_path, name: str, weights: bytes):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "model.safetensors").write_bytes(weights)
    return str(d)


def _key(teacher, student, pairs=PAIRS, **overrides):
    args = dict(encode_kwargs=ENCODE, num_blocks=2, renormalize=True)
    args.update(overrides)
    return cache_key(teacher_dir=teacher, student_dir=student, examples=pairs, **args)


def test_key_is_stable_and_follows_every_input(tmp_path):
    teacher, student = _dir(tmp_path, "t", b"weights"), _dir(tmp_path, "s", b"student")
    base = _key(teacher, student)
    assert base == _key(teacher, student)  # deterministic
    changed_pairs = [PAIRS[0], PreferenceExample("Q: what?", " A ball.", " A box.")]
    assert _key(teacher, student, pairs=changed_pairs) != base  # data changed
    assert _key(_dir(tmp_path, "t2", b"weightz"), student) != base  # teacher weights changed
    assert _key(teacher, _dir(tmp_path, "s2", b"tokenizer")) != base  # student tokenizer changed
    assert _key(teacher, student, num_blocks=3) != base
    assert _key(teacher, student, renormalize=False) != base
    assert _key(teacher, student, encode_kwargs={**ENCODE, "teacher_max_len": 32}) != base
    # The tokenizer *paths* do not matter, only their contents (hashed through the dirs).
    assert _key(teacher, student, encode_kwargs={**ENCODE, "student_tokenizer_dir": "/elsewhere"}) == base


def test_block_columns_round_trip():
    maps = [np.random.rand(2, u, u).astype(np.float16) for u in (3, 5)]
    batch = {"pair_id": np.arange(2), "teacher_maps": maps}
    split = split_block_columns(batch)
    assert "teacher_maps" not in split and {"teacher_maps_k0", "teacher_maps_k1"} <= set(split)
    for got, want in zip(teacher_rows(split), maps):
        np.testing.assert_array_equal(got, want)
    only_top = {k: v for k, v in split.items() if k != "teacher_maps_k1"}  # a run with N=1 reads k0 only
    for got, want in zip(teacher_rows(only_top), maps):
        np.testing.assert_array_equal(got, want[:1])
