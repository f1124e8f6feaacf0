"""Teacher-map cache: the key follows every input the maps depend on (the student's tokenizer
but not its weights; a hub id's cached revision), and per-block columns round-trip to the
(N, U, U) rows the worker collates."""
from __future__ import annotations

import huggingface_hub.constants
import numpy as np

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.records import MAP_BYTES, MAPS, blocks_to_maps, cache_columns, maps_to_blocks, pair_columns
from idrm_ray.stream.map_cache import cache_key, cached_rows
from idrm_ray.train.ingest import teacher_rows

PAIRS = [PreferenceExample("Q: who?", " The cat.", " A dog."), PreferenceExample("Q: what?", " A ball.", " A book.")]
ENCODE = {"student_tokenizer_dir": "/x", "teacher_tokenizer_dir": "/y", "student_max_len": 64, "teacher_max_len": 64}


def _dir(tmp_path, name: str, weights: bytes, tokenizer: str | None = None):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "model.safetensors").write_bytes(weights)
    if tokenizer is not None:
        (d / "tokenizer.json").write_text(tokenizer)
        (d / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    return str(d)


def _key(teacher, student, pairs=PAIRS, **overrides):
    args = dict(encode_kwargs=ENCODE, num_blocks=2, renormalize=True)
    args.update(overrides)
    return cache_key(teacher_dir=teacher, student_dir=student, examples=pairs, **args)


def test_key_is_stable_and_follows_every_input(tmp_path):
    teacher, student = _dir(tmp_path, "t", b"weights"), _dir(tmp_path, "s", b"student", tokenizer="{}")
    base = _key(teacher, student)
    assert base == _key(teacher, student)  # deterministic
    changed_pairs = [PAIRS[0], PreferenceExample("Q: what?", " A ball.", " A box.")]
    assert _key(teacher, student, pairs=changed_pairs) != base  # data changed
    assert _key(_dir(tmp_path, "t2", b"weightz"), student) != base  # teacher weights changed
    assert _key(teacher, _dir(tmp_path, "s2", b"student", tokenizer='{"v": 1}')) != base  # student tokenizer changed
    assert _key(teacher, student, num_blocks=3) != base
    assert _key(teacher, student, renormalize=False) != base
    assert _key(teacher, student, encode_kwargs={**ENCODE, "teacher_max_len": 32}) != base
    # The tokenizer *paths* do not matter, only their contents (hashed through the dirs).
    assert _key(teacher, student, encode_kwargs={**ENCODE, "student_tokenizer_dir": "/elsewhere"}) == base



def test_student_weights_do_not_change_the_key_its_tokenizer_does(tmp_path):
    """The maps depend on the student only through its tokenizer (unit alignment): a new
    checkpoint of the same student reuses the cache, a changed tokenizer or chat template
    does not. A directory without tokenizer files is hashed whole (nothing is missed)."""
    teacher = _dir(tmp_path, "t", b"weights")
    base = _key(teacher, _dir(tmp_path, "s", b"student", tokenizer="{}"))
    assert _key(teacher, _dir(tmp_path, "s_trained", b"fine-tuned", tokenizer="{}")) == base
    assert _key(teacher, _dir(tmp_path, "s_tok", b"student", tokenizer='{"merges": []}')) != base
    templated = _dir(tmp_path, "s_tmpl", b"student", tokenizer="{}")
    (tmp_path / "s_tmpl" / "chat_template.jinja").write_text("{{ messages }}")
    assert _key(teacher, templated) != base
    bare = _key(teacher, _dir(tmp_path, "s_bare", b"student"))
    assert _key(teacher, _dir(tmp_path, "s_bare2", b"other")) != bare
    # The teacher's weights still count.
    assert _key(_dir(tmp_path, "t2", b"weightz"), _dir(tmp_path, "s2", b"student", tokenizer="{}")) != base


def _cached_snapshot(cache, repo_id: str, commit: str) -> None:
    """The layout huggingface_hub keeps: refs/main names the snapshot of the default revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_counts_by_its_cached_revision(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    teacher = _dir(tmp_path, "t", b"weights")
    _cached_snapshot(cache, "org/student", "a" * 40)
    first = _key(teacher, "org/student")
    assert first == _key(teacher, "org/student")
    _cached_snapshot(cache, "org/student", "b" * 40)  # a new revision was pulled
    assert _key(teacher, "org/student") != first
    # A hub teacher too; an id with no cached snapshot falls back to its name, with a note.
    student = _dir(tmp_path, "s", b"x", tokenizer="{}")
    assert _key("org/student", student) != _key(teacher, student)
    capsys.readouterr()
    unresolved = _key(teacher, "org/never-downloaded")
    assert unresolved == _key(teacher, "org/never-downloaded") and unresolved != first
    assert "no local snapshot of 'org/never-downloaded'" in capsys.readouterr().out

def test_block_columns_read_back_into_the_teacher_stage_form():
    maps = [np.random.rand(2, u, u).astype(np.float16) for u in (3, 5)]
    batch = {"pair_id": np.arange(2), MAPS: maps, MAP_BYTES: np.array([m.nbytes for m in maps])}
    split = maps_to_blocks(batch)
    assert MAPS not in split and MAP_BYTES not in split and {"teacher_maps_k0", "teacher_maps_k1"} <= set(split)
    back = blocks_to_maps(split)  # the cache's read-back: the same columns the teacher stage emits
    assert set(back) == set(batch) and list(back[MAP_BYTES]) == list(batch[MAP_BYTES])
    for got, want in zip(teacher_rows(back), maps):
        np.testing.assert_array_equal(got, want)
    only_top = blocks_to_maps({k: v for k, v in split.items() if k != "teacher_maps_k1"})  # N=1 reads k0 only
    for got, want in zip(teacher_rows(only_top), maps):
        np.testing.assert_array_equal(got, want[:1])
    assert cache_columns(1) == [*pair_columns(), "teacher_maps_k0"]


def test_cached_rows_counts_every_parquet_file_from_its_footer(tmp_path):
    """The sweep's row count of a cache: every Parquet file's rows, nothing else in the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, n in (("a.parquet", 3), ("b.parquet", 5)):
        pq.write_table(pa.table({"pair_id": np.arange(n), "teacher_maps_k0": [b"x" * 8] * n}), tmp_path / name)
    (tmp_path / "_SUCCESS").write_text('{"num_blocks": 1}')
    assert cached_rows(tmp_path) == 8
